"""Open a store, check its format and schema version, and read its arrays."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import zarr
from pydantic import ValidationError

from dr.errors import HeaderSealError, SchemaVersionError, StoreError, StoreIncompleteError
from dr.storage.integrity import ChunkProblem, load_checked, read_done
from dr.storage.layout import CHUNK_DIGESTS, DONE, Deriver, array_specs, param_path, spec_of
from dr.storage.schema import FORMAT, READABLE_VERSIONS, StoreHeader
from dr.urls import Location

__all__ = ["StoreReader", "open_group", "store_exists", "read_header"]


def open_group(
    url: str | Location, *, mode: Literal["r", "r+", "a", "w", "w-"] = "r", storage_options: Mapping[str, Any] | None = None
) -> zarr.Group:
    """Open a Zarr v3 group at a local path or an fsspec URL (``s3://...``).

    Args:
        url: a local path, an fsspec URL, or a :class:`~dr.urls.Location` (a URL with its options).
        mode: Zarr's open mode (``r``, ``r+``, ``a``, ``w``).
        storage_options: fsspec options for a URL given as a string (ignored for local paths).

    Returns:
        The group.

    Raises:
        StoreError: nothing at ``url``, or not a Zarr v3 group.
    """
    loc = Location.of(url, storage_options)
    url = loc.url
    try:
        return zarr.open_group(url, mode=mode, zarr_format=3, **loc.zarr_options())
    except FileNotFoundError as e:
        raise StoreError(f"no store at {url!r}: check the path (build one with `dr-build reinforce`)") from e
    except (zarr.errors.BaseZarrError, ValueError, TypeError) as e:
        raise StoreError(f"{url!r} is not a Zarr v3 group: {e}") from e


def store_exists(url: str | Location, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether a Zarr v3 group can be opened at ``url`` (a dr store or not).

    Args:
        url: a local path, an fsspec URL or a :class:`~dr.urls.Location`.
        storage_options: fsspec options for a URL given as a string.

    Returns:
        ``True`` when :func:`open_group` opens it for reading.
    """
    try:
        open_group(url, mode="r", storage_options=storage_options)
    except StoreError:
        return False
    return True


def read_header(attrs: Mapping[str, Any], url: str = "<store>") -> StoreHeader:
    """Validate raw attributes into a :class:`StoreHeader` and check its seal.

    Args:
        attrs: the store group's attributes (``dict(group.attrs)``).
        url: the store's location, for messages.

    Returns:
        The validated header.

    Raises:
        StoreError: not a dr store, or a malformed header.
        SchemaVersionError: another schema version (both versions are named).
        HeaderSealError: a sealed field (or the seal) was edited -- named.
    """
    if not isinstance(attrs, Mapping) or attrs.get("format") != FORMAT:
        got = attrs.get("format") if isinstance(attrs, Mapping) else type(attrs).__name__
        raise StoreError(f"{url!r} is not a dr store (format attribute is {got!r}, expected {FORMAT!r})")
    version = attrs.get("schema_version")
    if version not in READABLE_VERSIONS:
        why: str = {
            1: " (version 2 changed how view parameters are sampled and replayed: a version-1 store's views"
            " would not be the views its teachers labelled)",
            2: " (version 3 seals the header: a version-2 store's views and targets cannot be checked against its header)",
        }.get(version if isinstance(version, int) else -1, "")
        newer = isinstance(version, int) and version > max(READABLE_VERSIONS)
        raise SchemaVersionError(
            f"store {url!r} has schema version {version!r}; this dr reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}{why}. "
            + (
                "A newer dr wrote it: upgrade dr (pip install -U dr-reinforce) to read it"
                if newer
                else "Rebuild it with the same `dr-build reinforce` command (and --overwrite), or read it with the dr release that wrote it"
            )
        )
    try:
        header = StoreHeader.model_validate(dict(attrs))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StoreError(f"store {url!r} has a malformed header: {where}: {first['msg']} ({e.error_count()} problem(s))") from None
    edited = header.seal_problems()
    if edited == ["seal"]:
        raise HeaderSealError(
            f"store {url!r}: its header seal is missing or altered, so the header cannot be trusted to describe the stored "
            "views and targets. Restore the store's zarr.json from its source, or rebuild it"
        )
    if edited:
        raise HeaderSealError(
            f"store {url!r}: header field(s) {', '.join(edited)} changed after the build (they are sealed: the stored views and "
            "targets belong to the values the store was built with). Restore the store's zarr.json from its source, or rebuild it"
        )
    return header


#: a complete store's ``build/digests`` is kept in memory for reads by chunk up to this size
#: (1.28 M images at chunk 256 with four digested arrays: 0.3 MB; 10^9 images: 250 MB, read by chunk)
MEMO_DIGESTS_BYTES = 64 << 20


class _Handles:
    """A group's arrays by path, each opened once (a complete store read-only does not change)."""

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        self.cache: dict[str, Any] = {}

    def __getitem__(self, path: str) -> Any:
        if path not in self.cache:
            self.cache[path] = self.group[path]  # zarr's KeyError for a path the store lacks
        return self.cache[path]

    def get(self, path: str, default: Any = None) -> Any:
        try:
            return self[path]
        except KeyError:
            return default

    def __contains__(self, path: str) -> bool:
        return self.get(path) is not None


class StoreReader:
    """Read-only access to a store.

    Args:
        url: local path, fsspec URL or :class:`~dr.urls.Location`.
        allow_incomplete: open a store whose build has not finished (status ``building``).
        storage_options: fsspec options for a remote store given as a string.
        writable: open read-write (used by :class:`storage.StoreWriter` to resume).

    Attributes:
        location: where the store is, with its fsspec options.
        url: ``location.url``.

    Raises:
        StoreError: missing store or not a dr store; SchemaVersionError: another schema
        version; StoreIncompleteError: still building and ``allow_incomplete`` is false.
    """

    def __init__(
        self,
        url: str | Location,
        *,
        allow_incomplete: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        writable: bool = False,
    ) -> None:
        self.location = Location.of(url, storage_options)
        self.url = self.location.url
        self.group = open_group(self.location, mode="r+" if writable else "r")
        self.header = read_header(dict(self.group.attrs), self.url)
        if self.header.status != "complete" and not allow_incomplete:
            raise StoreIncompleteError(
                f"store {self.url!r} is still building (status {self.header.status!r}): finish it with `dr-build reinforce ... --resume` (the build's command)"
            )
        # a complete store opened read-only does not change under this reader: its done map and
        # chunk digests are read once (at ImageNet scale each is thousands of small inner chunks)
        self._frozen = not writable and not allow_incomplete
        self._memo: dict[str, np.ndarray] = {}
        # ... and its array handles are opened once (each open reads the array's zarr.json): a
        # chunk read by a bounded reader is then one read per array, not a lookup and a read
        self._arrays: Any = _Handles(self.group) if self._frozen else self.group

    def array(self, path: str) -> zarr.Array:
        """The stored array ``path`` (a derived parameter array is not stored: see :meth:`load_checked`)."""
        try:
            node = self._arrays[path]
        except KeyError as e:
            raise StoreError(f"store {self.url!r} has no array {path!r}") from e
        if not isinstance(node, zarr.Array):
            raise StoreError(f"{path!r} in {self.url!r} is not an array")
        return node

    def load(self, path: str) -> np.ndarray:
        """Read a whole stored array into memory, unchecked (contiguous reads are fast)."""
        return np.asarray(self.array(path)[:])

    def params(self) -> dict[str, np.ndarray]:
        """Every stored parameter array, whole and unchecked, by field name.

        Raises:
            StoreError: the store's parameters are derived, not stored (read them through dr's
                readers, which re-derive and check them).
        """
        if self.header.layout is not None and self.header.layout.params == "derived":
            raise StoreError(f"store {self.url!r} keeps no parameter arrays (its parameters are derived): read them through dr's readers")
        return {f.name: self.load(param_path(f.name)) for f in self.header.param_fields}

    def arrays(self) -> dict[str, zarr.Array]:
        """Every array the layout declares and the store holds, by path (a missing one is left
        out: ``verify``'s schema check names it)."""
        out: dict[str, zarr.Array] = {}
        for spec in array_specs(self.header):
            node = self._arrays.get(spec.path)
            if isinstance(node, zarr.Array):
                out[spec.path] = node
        return out

    def nbytes(self, paths: Sequence[str]) -> int:
        """Bytes of the arrays ``paths`` once decoded (what loading them takes in memory;
        derived parameters included)."""
        total = 0
        for p in paths:
            spec = spec_of(self.header, p)
            total += int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize
        return total

    def nbytes_stored(self) -> int:
        """Bytes the store's arrays take in storage (objects listed, not read)."""
        return int(sum(a.nbytes_stored() for a in self.arrays().values()))

    def done(self) -> np.ndarray:
        """Boolean done map (an unreadable entry counts as not done)."""
        return self._done_map().copy() if self._frozen else self._done_map()

    def _done_map(self) -> np.ndarray:
        """The done map; a complete store opened read-only reads it once (callers must not edit it)."""
        if not self._frozen:
            return read_done(self.array(DONE), self.url)
        if DONE not in self._memo:
            self._memo[DONE] = read_done(self.array(DONE), self.url)
        return self._memo[DONE]

    def _recorded_digests(self, *, whole: bool = True) -> np.ndarray | None:
        """The whole ``build/digests`` array of a complete store opened read-only, read once
        (None otherwise, or when it cannot be read whole: the check then reads chunk by chunk).
        For reads by chunk (``whole=False``) only up to :data:`MEMO_DIGESTS_BYTES` is kept."""
        if not self._frozen or self._arrays.get(CHUNK_DIGESTS) is None:
            return None
        if CHUNK_DIGESTS not in self._memo:
            if not whole and self.array(CHUNK_DIGESTS).nbytes > MEMO_DIGESTS_BYTES:
                return None
            try:
                self._memo[CHUNK_DIGESTS] = np.asarray(self.array(CHUNK_DIGESTS)[:])
            except Exception:  # noqa: BLE001 - unreadable somewhere: let the check find which chunk
                return None
        return self._memo[CHUNK_DIGESTS]

    def load_checked(
        self, paths: Sequence[str], *, chunks: Iterable[int] | None = None, derive: Deriver | None = None
    ) -> tuple[dict[str, np.ndarray], list[ChunkProblem]]:
        """Read ``paths`` (whole, or only ``chunks``) and check every done chunk's rows against
        the digests recorded at write time; see :func:`dr.storage.integrity.load_checked`
        (``derive`` re-derives the parameters of a store that does not store them)."""
        chunks = None if chunks is None else [int(c) for c in chunks]
        if chunks is None or self._frozen:
            done = self._done_map()
        else:  # read only the entries needed
            arr = self.array(DONE)
            done = np.zeros(arr.shape[0], dtype=bool)
            for c in chunks:
                try:
                    done[c] = bool(arr[c])
                except Exception:  # noqa: BLE001 - unreadable: not done
                    done[c] = False
        recorded = self._recorded_digests(whole=chunks is None)
        return load_checked(self._arrays, self.header, paths, done, chunks=chunks, derive=derive, recorded=recorded)
