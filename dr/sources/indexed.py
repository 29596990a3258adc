"""What the source kinds share: fsspec access, ``classes=``, label resolution, the indexed base."""

from __future__ import annotations

import ctypes
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dr.errors import SourceError
from dr.sources.base import SourceFingerprint, is_url, labels_hash
from dr.sources.decode import content_digest, decode_image
from dr.urls import Location

__all__ = ["IndexedSource", "classes_arg", "classes_option", "fs_for", "int_labels", "read_text", "release_freed_heap", "resolve_labels"]


def release_freed_heap() -> None:
    """Give the pages of freed heap memory back to the OS (glibc's ``malloc_trim``; a no-op
    elsewhere). An index joined from thousands of small per-shard arrays leaves them freed but
    held by the allocator: on the 1.28 M-image rehearsal set the open WebDataset source kept 79
    bytes per image without this and 32 with it (its arrays hold 30)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim): nothing to give back this way
        pass


def fs_for(location: str, options: Mapping[str, Any]) -> tuple[Any, str]:
    """The fsspec filesystem of ``location`` and the path inside it (:meth:`dr.urls.Location.filesystem`),
    failing as a :class:`~dr.errors.SourceError` that names the location."""
    try:
        return Location(location, options).filesystem()
    except (ImportError, ValueError) as e:
        raise SourceError(f"cannot open {location!r}: {type(e).__name__}: {e} (install dr[remote] for s3:// and check the URL)") from e


def read_text(location: str, options: Mapping[str, Any]) -> str:
    try:
        if is_url(location):
            fs, path = fs_for(location, options)
            return bytes(fs.cat_file(path)).decode("utf-8")
        return Path(location).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"cannot read {location!r}: {type(e).__name__}: {e}") from e


def classes_option(value: str | None, options: Mapping[str, Any]) -> list[str] | None:
    """``classes=`` is a file (JSON list, JSON object with "classes", one name per line) or
    comma-separated names."""
    if not value:
        return None
    if "," not in value and (os.path.exists(value) or is_url(value)):
        text = read_text(value, options)
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return [line.strip() for line in text.splitlines() if line.strip()]
        names = data.get("classes") if isinstance(data, dict) else data
        if not isinstance(names, list):
            raise SourceError(f"classes file {value!r} must hold a JSON list of names, an object with 'classes', or one name per line")
        return [str(n) for n in names]
    return [n.strip() for n in value.split(",")]


def classes_arg(classes: Sequence[str] | str | None, options: Mapping[str, Any]) -> tuple[list[str] | None, dict[str, str]]:
    """``classes`` as names, and as the spec option that re-opens the same source (a file
    made absolute, or comma-separated names)."""
    if classes is None:
        return None, {}
    if isinstance(classes, str):
        raw = classes if ("," in classes or "://" in classes or not os.path.exists(classes)) else os.path.abspath(classes)
        return classes_option(classes, options), {"classes": raw}
    names = [str(c) for c in classes]
    return names, {"classes": ",".join(names)}


def int_labels(raw: Sequence[Any] | np.ndarray) -> np.ndarray | None:
    """``raw`` as int64 labels in one vectorised pass when it is all integers or all digit
    strings (an ImageNet-sized index: 1.28 M labels), else None (the per-item rule decides)."""
    try:
        arr = raw if isinstance(raw, np.ndarray) else np.asarray(raw)
        if arr.ndim != 1 or not len(arr):
            return None
        if arr.dtype.kind in "iu":
            return arr.astype(np.int64, copy=False)  # no copy of int64 labels (10 MB at 1.28 M images)
        if arr.dtype.kind == "U":
            stripped = np.strings.strip(arr)
            if bool(np.strings.isdigit(np.strings.lstrip(stripped, "-")).all()):
                return stripped.astype(np.int64)
    except (ValueError, TypeError, OverflowError):  # ragged, non-ASCII digits, too large: per item
        return None
    return None


def resolve_labels(raw: Sequence[Any], classes: Sequence[str] | None, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer labels (classes given, or ``"0".."C-1"``) or class names (classes given, or the
    sorted distinct names, like ImageFolder's sorted folders)."""

    def as_int(v: Any) -> int | None:
        if isinstance(v, bool):
            return None
        if isinstance(v, (int, np.integer)):
            return int(v)
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            return int(v)
        return None

    labels = int_labels(raw)
    if labels is None:
        ints = [as_int(v) for v in raw]
        labels = np.asarray(ints, dtype=np.int64) if len(raw) and all(i is not None for i in ints) else None
    if labels is not None:
        names = tuple(classes) if classes else tuple(str(i) for i in range(int(labels.max()) + 1))
        if int(labels.min()) < 0 or int(labels.max()) >= len(names):  # (no temporaries for the labels that are fine)
            bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
            raise SourceError(f"{where}: label {int(labels[bad[0]])} of item {int(bad[0])} is outside the {len(names)} classes")
        return labels, names
    strs = [str(v) for v in raw]
    names = tuple(classes) if classes else tuple(sorted(set(strs)))
    index = {n: i for i, n in enumerate(names)}
    missing = sorted(set(strs) - index.keys())
    if missing:
        raise SourceError(f"{where}: label(s) {missing[:5]} are not among the classes given ({', '.join(names[:10])}...)")
    return np.asarray([index[s] for s in strs], dtype=np.int64), names


class IndexedSource:
    """What every kind shares: labels, classes, decode + digest, fingerprint."""

    kind = "?"
    location = ""
    _labels: np.ndarray
    _classes: tuple[str, ...]

    @property
    def classes(self) -> tuple[str, ...]:
        return self._classes

    def __len__(self) -> int:
        return len(self._labels)

    def labels(self) -> np.ndarray:
        return self._labels

    def describe(self, index: int) -> str:  # pragma: no cover - every kind overrides
        return f"{self.location}[{index}]"

    def read_bytes(self, index: int) -> bytes:  # pragma: no cover - every kind overrides
        raise NotImplementedError

    def read(self, index: int) -> tuple[np.ndarray, bytes]:
        data = self.read_bytes(index)
        return decode_image(data, self.describe(index)), content_digest(data)

    def fingerprint(self) -> SourceFingerprint:
        return SourceFingerprint(self.kind, len(self), self.classes, labels_hash(self._labels, self.classes))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r}, images={len(self)}, classes={len(self.classes)})"


# ----------------------------------------------------------------------------- WebDataset
