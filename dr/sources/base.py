"""What every source is: the :class:`Source` protocol and its fingerprint (``is_url`` is
:mod:`dr.urls`'s, re-exported)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from dr.urls import is_url

__all__ = ["Source", "SourceFingerprint", "is_url", "labels_hash"]


@dataclass(frozen=True)
class SourceFingerprint:
    """What identifies a dataset: count, class names, a hash of the labels.

    Per-image content hashes are computed by the build workers (they read every file anyway)
    and stored in the store's ``source/digests`` array.
    """

    kind: str
    count: int
    classes: tuple[str, ...]
    labels_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "count": self.count,
            "classes": list(self.classes),
            "labels_sha256": self.labels_sha256,
        }


class Source(Protocol):
    """What the build and the Dataset need from an input dataset."""

    @property
    def classes(self) -> Sequence[str]: ...

    def __len__(self) -> int: ...

    def labels(self) -> np.ndarray:
        """All labels as an ``int64`` array, without decoding images."""
        ...

    def read(self, index: int) -> tuple[np.ndarray, bytes]:
        """Decoded ``HxWx3`` uint8 image and its content digest (see :func:`content_digest`)."""
        ...

    def describe(self, index: int) -> str:
        """Human-readable location of one image (for error messages)."""
        ...

    def fingerprint(self) -> SourceFingerprint: ...


def labels_hash(labels: np.ndarray, classes: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update("\x1f".join(classes).encode())
    h.update(np.ascontiguousarray(labels, dtype="<i8").data)  # the buffer itself, no copy
    return h.hexdigest()
