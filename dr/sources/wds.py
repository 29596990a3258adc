"""WebDataset tar shards as a source (``wds:PATTERN?label=cls``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dr.errors import BadImageError, SourceError
from dr.sources.base import is_url
from dr.sources.decode import IMG_EXTENSIONS, check_image_bytes
from dr.sources.indexed import IndexedSource, classes_arg, fs_for, int_labels, release_freed_heap, resolve_labels
from dr.sources.spec import SourceSpec

log = logging.getLogger(__name__)

__all__ = ["WebDatasetSource", "index_cache_dir"]

IMAGE_EXTS = tuple(e.lstrip(".") for e in IMG_EXTENSIONS)
_INDEX_VERSION = 2  # bump when the cached index's meaning changes (2: keys as UTF-8 bytes)


def index_cache_dir() -> Path | None:
    """Where shard indexes are cached: ``$DR_CACHE_DIR/wds-index`` (default
    ``$XDG_CACHE_HOME/dr`` or ``~/.cache/dr``); ``DR_CACHE_DIR=""`` turns the cache off."""
    root = os.environ.get("DR_CACHE_DIR")
    if root == "":
        return None
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dr"
    return base / "wds-index"


def _cache_file(identity: str | None, label: str, image: str | None) -> Path | None:
    folder = index_cache_dir()
    if identity is None or folder is None:
        return None
    key = hashlib.sha256(f"{_INDEX_VERSION}|{identity}|{label}|{image}".encode()).hexdigest()
    return folder / f"{key}.npz"


def _write_cache(path: Path, index: dict[str, np.ndarray]) -> bool:
    """Write a shard's index atomically; a cache that cannot be written is only a slower open.
    Returns whether it was written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **index)  # type: ignore[arg-type]
        os.replace(tmp, path)
        return True
    except OSError as e:
        log.debug("cannot cache a shard index at %s: %s", path, e)
        return False


_FIELDS = ("keys", "offsets", "sizes", "labels")  # a shard index's per-sample arrays (and "ignored": member names)


def _cached_shape(path: Path) -> tuple[int, dict[str, np.dtype], np.ndarray]:
    """A cached shard index's sample count and per-field dtypes, read from the ``.npy`` headers
    inside it (not the arrays), and its ignored member names."""
    with zipfile.ZipFile(path) as zf:
        counts, dtypes = set(), {}
        for name in _FIELDS:
            with zf.open(f"{name}.npy") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise SourceError(f"index cache {path}: npy format {version}")
            counts.add(shape)
            dtypes[name] = dtype
        with zf.open("ignored.npy") as f:
            ignored = np.lib.format.read_array(f, allow_pickle=False)
    if len(counts) != 1 or len(next(iter(counts))) != 1:
        raise SourceError(f"index cache {path}: fields of different shapes {sorted(counts)}")
    return next(iter(counts))[0], dtypes, ignored


@dataclass
class _Part:
    """One shard's part of the index: its sample count and dtypes now, its arrays when joined
    (read from its cache file, or held when no cache could be written)."""

    shard: str
    count: int
    dtypes: dict[str, np.dtype]
    cache: Path | None = None
    arrays: dict[str, np.ndarray] | None = None


def _odd_member(name: str) -> str | None:
    """Why a tar member's name cannot name a WebDataset sample (``None``: it can)."""
    if "\\" in name:
        return "a backslash"
    if name.startswith("/"):
        return "an absolute path"
    if ".." in name.split("/"):
        return "a '..' component"
    if not _split_key(name)[0].rpartition("/")[2]:
        return "no sample key before its extension"
    return None


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's sample key and extension: the extension starts at the first dot of the
    file name (``a/b/img001.seg.png`` -> ``a/b/img001``, ``seg.png``)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


class WebDatasetSource(IndexedSource):
    """WebDataset tar shards, read at random through an index of member offsets.

    The index (shard, byte offset and size of each sample's image, its label) is built by
    walking the tar headers with :mod:`tarfile` (label members are read; image bytes are
    skipped), then an image is one ranged read: ``seek`` + ``read`` locally,
    ``cat_file(start, end)`` through fsspec. Each shard's index is cached on disk
    (:func:`index_cache_dir`, keyed by the shard's location, size and modification time or
    ETag, as numpy arrays: no pickle), so a second open of ImageNet's 1,282 shards reads 1,282
    small files instead of 2.5 M tar headers.

    Args:
        pattern: shard path or URL, with brace ranges/lists (``train-{000000..000127}.tar``).
        label: where the label lives: an extension (``cls``: the member's text is an integer
            or a class name) or ``json:FIELD`` (a field, dotted for nesting, of ``KEY.json``).
        image: the image extension (default: the first member with an image extension).
        classes: class names (default: ``"0".."C-1"`` for integer labels, else the sorted names).
        storage_options: fsspec options for remote shards.

    Tar members whose names cannot name a sample (a backslash, an absolute path, a ``..``
    component, nothing before the extension) belong to no sample: they are left out, listed in
    ``ignored_members`` and logged, so one odd member never aborts a build.
    """

    kind = "wds"

    def __init__(
        self,
        pattern: str,
        *,
        label: str = "cls",
        image: str | None = None,
        classes: Sequence[str] | str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        from braceexpand import braceexpand

        self.pattern = pattern if is_url(pattern) else os.path.abspath(os.path.expanduser(pattern))
        self.storage_options = dict(storage_options or {})
        names, classes_opt = classes_arg(classes, self.storage_options)
        options = {"label": label, **({"image": image} if image else {}), **classes_opt}
        self.location = SourceSpec("wds", self.pattern, options).text()
        self.label_key, self.image_ext = label, image
        self.shards = list(braceexpand(self.pattern))
        self._fs: Any = None
        if is_url(self.pattern):
            self._fs = fs_for(self.shards[0], self.storage_options)[0]
        self.ignored_members: list[str] = []
        # the index is kept compact, the driver holds it for the whole build: keys as UTF-8
        # bytes, the smallest integer types (30 bytes per image with the rehearsal's 8-byte keys).
        # It is made in two passes so that opening peaks near what is kept: every shard's sample
        # count (from its cache file's headers, or by indexing it), then each part read into
        # arrays of the final size and dropped (joining all parts at once had peaked at 3x)
        parts = [self._shard_part(shard) for shard in self.shards]
        counts = np.asarray([p.count for p in parts], dtype=np.int64)
        if not counts.sum():
            raise SourceError(f"source {self.location!r}: the shards hold no samples")
        total, ends = int(counts.sum()), np.cumsum(counts)
        #: each sample's key (its name without extension), UTF-8 bytes (``describe`` decodes it)
        self.keys = np.empty(total, dtype=f"S{max(1, *(p.dtypes['keys'].itemsize for p in parts))}")
        self._shard = np.repeat(np.arange(len(parts), dtype=np.uint16 if len(parts) <= 1 << 16 else np.uint32), counts)
        self._offset = np.empty(total, dtype=np.int64)
        self._size = np.empty(total, dtype=np.uint32)
        # labels: integers (or digit strings, the ``cls`` member's text), turned into int64 one
        # shard at a time; anything else (names, a mix) is gathered whole in a second pass
        ints: np.ndarray | None = np.empty(total, dtype=np.int64)
        for part, stop in zip(parts, ends.tolist()):
            a, start = self._part_arrays(part), stop - part.count
            part.arrays = {"labels": a["labels"]} if part.arrays is not None else None  # held: kept for the second pass
            self.keys[start:stop] = a["keys"]
            self._offset[start:stop] = a["offsets"]
            if part.count and int(a["sizes"].max()) >= 1 << 32 and self._size.dtype == np.uint32:
                self._size = self._size.astype(np.int64)  # a member of 4 GiB or more (check_image_bytes refuses it when read)
            self._size[start:stop] = a["sizes"]
            got = int_labels(a["labels"]) if ints is not None and part.count else None
            if got is not None and ints is not None:
                ints[start:stop] = got
            elif part.count:
                ints = None
        labels: Any = ints
        if labels is None:
            kinds = {p.dtypes["labels"].kind for p in parts if p.count}
            pieces = [self._part_arrays(p)["labels"] for p in parts if p.count]
            labels = np.concatenate(pieces) if len(kinds) == 1 else [x for piece in pieces for x in piece.tolist()]
            del pieces
        self._labels, self._classes = resolve_labels(labels, names, f"source {self.location!r}")
        del parts, labels
        release_freed_heap()

    def _shard_part(self, shard: str) -> _Part:
        """One shard's part of the index: from the on-disk cache when the shard is unchanged
        (its count and dtypes only, for now), else indexed from its tar headers (and cached)."""
        cache = _cache_file(self._shard_identity(shard), self.label_key, self.image_ext)
        if cache is not None and cache.exists():
            try:
                count, dtypes, ignored = _cached_shape(cache)
                self.ignored_members += [f"{shard}:{m}" for m in ignored.tolist()]
                return _Part(shard, count, dtypes, cache=cache)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, SourceError) as e:
                log.info("source %s: shard %s: its index cache %s is unreadable (%s); rebuilding it", self.location, shard, cache, e)
        index = self._indexed(shard, cache)
        dtypes = {k: index[k].dtype for k in _FIELDS}
        written = index.pop("written", None) is not None
        return _Part(shard, len(index["keys"]), dtypes, cache=cache if written else None, arrays=None if written else index)

    def _part_arrays(self, part: _Part) -> dict[str, np.ndarray]:
        """A part's arrays: held, or read from its cache file (indexed again if that went)."""
        if part.arrays is not None:
            return part.arrays
        if part.cache is not None:
            try:
                with np.load(part.cache, allow_pickle=False) as z:
                    got = {k: z[k] for k in _FIELDS}
                if all(len(v) == part.count for v in got.values()):
                    return got
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
                log.info(
                    "source %s: shard %s: its index cache %s went unreadable (%s); indexing it again",
                    self.location,
                    part.shard,
                    part.cache,
                    e,
                )
        got = self._indexed(part.shard, None)
        if len(got["keys"]) != part.count:
            raise SourceError(f"source {self.location!r}: shard {part.shard!r} changed while it was being opened; open the source again")
        return got

    def _indexed(self, shard: str, cache: Path | None) -> dict[str, np.ndarray]:
        """A shard's index from its tar headers, cached at ``cache`` (when given) if its labels
        are integers or names; ``"written"`` is in the result when the cache was written."""
        before = len(self.ignored_members)
        samples = self._index_shard(shard)
        ignored = [m.split(":", 1)[1] if m.startswith(f"{shard}:") else m for m in self.ignored_members[before:]]
        labels = [lab for _, _, _, lab in samples]
        index = {
            "keys": np.asarray([k.encode("utf-8") for k, _, _, _ in samples], dtype=bytes),
            "offsets": np.asarray([o for _, o, _, _ in samples], dtype=np.int64),
            "sizes": np.asarray([z for _, _, z, _ in samples], dtype=np.int64),
            "labels": np.asarray(labels, dtype=np.int64 if all(isinstance(v, int) for v in labels) else str),
            "ignored": np.asarray(ignored, dtype=str),
        }
        if cache is not None and all(isinstance(v, (int, str)) for v in labels) and _write_cache(cache, index):
            index["written"] = np.ones(1, dtype=bool)
        return index

    def _shard_identity(self, shard: str) -> str | None:
        """What identifies a shard's content for the index cache: its location, size and
        modification time (or ETag); ``None`` when it cannot be read."""
        try:
            if self._fs is None:
                st = os.stat(shard)
                return f"{os.path.realpath(shard)}|{st.st_size}|{st.st_mtime_ns}"
            info = self._fs.info(self._fs._strip_protocol(shard))
            return f"{shard}|{info.get('size')}|{info.get('ETag') or info.get('mtime') or info.get('LastModified')}"
        except (OSError, ValueError):
            return None

    def _open(self, shard: str) -> Any:
        try:
            if self._fs is not None:
                return self._fs.open(self._fs._strip_protocol(shard), "rb")
            return open(shard, "rb")
        except (OSError, ValueError) as e:
            raise SourceError(f"source {self.location!r}: cannot open shard {shard!r}: {type(e).__name__}: {e}") from e

    def _index_shard(self, shard: str) -> list[tuple[str, int, int, Any]]:
        samples: list[tuple[str, int, int, Any]] = []
        current: str | None = None
        members: dict[str, tarfile.TarInfo] = {}

        def finish(tf: tarfile.TarFile) -> None:
            if current is None:
                return
            where = f"{shard}:{current}"
            if self.image_ext:
                img = members.get(self.image_ext)
            else:
                img = next((members[e] for e in members if e.lower() in IMAGE_EXTS), None)
            if img is None:
                raise SourceError(
                    f"sample {where} has no image member (found {', '.join(sorted(members)) or 'nothing'}; "
                    f"expected {self.image_ext or '/'.join(IMAGE_EXTS)}): pass ?image=EXT"
                )
            samples.append((current, img.offset_data, img.size, self._label_of(tf, members, where)))

        with self._open(shard) as f:
            try:
                with tarfile.open(fileobj=f, mode="r:") as tf:
                    for m in tf:
                        if not m.isfile():
                            continue
                        odd = _odd_member(m.name)
                        if odd is not None:
                            log.warning("source %s: shard %s: ignoring tar member %r (%s)", self.location, shard, m.name, odd)
                            self.ignored_members.append(f"{shard}:{m.name}")
                            continue
                        key, ext = _split_key(m.name)
                        if key != current:
                            finish(tf)
                            current, members = key, {}
                        members[ext] = m
                    finish(tf)
            except tarfile.TarError as e:
                raise SourceError(f"source {self.location!r}: shard {shard!r} is not a readable tar file: {e}") from e
        return samples

    def _label_of(self, tf: tarfile.TarFile, members: dict[str, tarfile.TarInfo], where: str) -> Any:
        ext, _, fieldpath = self.label_key.partition(":")
        member = members.get(ext)
        if member is None:
            raise SourceError(f"sample {where} has no '{ext}' member for label={self.label_key} (found {', '.join(sorted(members))})")
        handle = tf.extractfile(member)
        text = handle.read().decode("utf-8").strip() if handle is not None else ""
        if not fieldpath:
            return text
        try:
            value: Any = json.loads(text)
            for part in fieldpath.split("."):
                value = value[part]
        except (json.JSONDecodeError, KeyError, TypeError, IndexError) as e:
            raise SourceError(f"sample {where}: no field {fieldpath!r} in its .{ext} member ({type(e).__name__}: {e})") from e
        return value

    def describe(self, index: int) -> str:
        return f"{self.shards[int(self._shard[index])]}:{self.keys[index].decode('utf-8', 'replace')}"

    def read_bytes(self, index: int) -> bytes:
        shard = self.shards[int(self._shard[index])]
        start, size = int(self._offset[index]), int(self._size[index])
        check_image_bytes(size, self.describe(index))  # the tar header's size, before reading
        try:
            if self._fs is not None:
                data = bytes(self._fs.cat_file(self._fs._strip_protocol(shard), start=start, end=start + size))
            else:
                with open(shard, "rb") as f:
                    f.seek(start)
                    data = f.read(size)
        except OSError as e:
            raise BadImageError(self.describe(index), f"cannot read shard member: {e}") from e
        if len(data) != size:
            raise BadImageError(self.describe(index), f"short read ({len(data)} of {size} bytes): the shard changed since it was indexed")
        return data


# ----------------------------------------------------------------------------- file lists
