"""Create, fill and finalise a store. One writer per store (the build driver)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np
import zarr
import zarr.codecs

from dr.errors import SchemaVersionError, StoreError, StoreMismatchError
from dr.storage.integrity import DIGESTS_PATH, ChunkProblem, digest_paths, load_checked, read_done, rows_digest
from dr.storage.reader import StoreReader, open_group, read_header, store_exists
from dr.storage.schema import DIGEST_BYTES, StoreHeader, fill_value, ids_dtype

__all__ = ["StoreWriter", "now_iso"]

log = logging.getLogger(__name__)


def now_iso() -> str:
    """The current UTC time, to the second, as the header records times.

    Returns:
        An ISO 8601 string such as ``2025-01-31T12:00:00+00:00``.
    """
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _compressors(path: str) -> list[Any]:
    """Per array, the smaller of two codecs measured on real stores (docs/design.md): Blosc-zstd
    with byte-shuffle for the parameter fields and the float16 probabilities (5-35 % smaller
    than zstd-19), plain zstd-19 for the class ids (shuffle cost 1000-class ids ~35 %)."""
    if path == "targets/ids":
        return [zarr.codecs.ZstdCodec(level=19)]
    return [zarr.codecs.BloscCodec(cname="zstd", clevel=9, shuffle="shuffle")]


class StoreWriter:
    """Writes one build's arrays chunk by chunk, with an explicit done map.

    Use :meth:`create` for a new store or :meth:`resume` to continue one whose header matches.
    Each :meth:`write_chunk` writes the rows of one chunk in every array, reads them back to
    verify, then marks the chunk done. :meth:`finalize` flips the status to ``complete`` only
    when every chunk is done.

    Args:
        group: the store's open Zarr group.
        header: its (sealed) header.
        url: its location, for messages.
    """

    def __init__(self, group: zarr.Group, header: StoreHeader, url: str) -> None:
        self.group = group
        self.header = header
        self.url = url
        n = header.dataset.count
        self.n_chunks = -(-n // header.chunk_size)

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def create(
        cls, url: str, header: StoreHeader, labels: np.ndarray, *, overwrite: bool = False, storage_options: Mapping[str, Any] | None = None
    ) -> StoreWriter:
        """Create a new store at ``url`` (a path or an fsspec URL) with empty arrays."""
        if store_exists(url, storage_options):
            if not overwrite:
                raise StoreError(f"store {url!r} already exists: pass --resume to continue that build, or --overwrite to replace it")
            try:
                read_header(dict(open_group(url, storage_options=storage_options).attrs), url)
            except SchemaVersionError:
                pass  # an older/newer dr store: replacing it is what --overwrite means
            except StoreError as e:
                raise StoreError(f"refusing to overwrite {url!r}: it is not a dr store ({e})") from None
        elif "://" not in url and os.path.exists(url) and (not os.path.isdir(url) or os.listdir(url)):
            raise StoreError(f"refusing to write a store at {url!r}: the path exists and is not a Zarr store; choose a new --out path")
        h = header.sealed()
        n, v, k, cs = h.dataset.count, h.views, h.topk, h.chunk_size
        if len(labels) != n:
            raise StoreError(f"{len(labels)} labels for {n} images")
        group = open_group(url, mode="w", storage_options=storage_options)
        group.update_attributes(h.to_attrs())

        def arr(path: str, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...]) -> zarr.Array:
            parent, name = path.rsplit("/", 1)
            return group.require_group(parent).create_array(
                name,
                shape=shape,
                chunks=chunks,
                dtype=dtype,
                compressors=_compressors(path),
                fill_value=fill_value(path, dtype),
            )

        for f in h.param_fields:
            arr(f"params/{f.name}", (n, v, *f.shape), f.dtype, (cs, v, *f.shape))
        arr("targets/ids", (n, v, k), ids_dtype(h.num_classes), (cs, v, k))
        arr("targets/probs", (n, v, k), "float16", (cs, v, k))
        lab = arr("source/labels", (n,), "int32", (cs,))
        arr("source/sizes", (n, 2), "uint32", (cs, 2))
        arr("source/digests", (n, DIGEST_BYTES), "uint8", (cs, DIGEST_BYTES))
        arr("source/skipped", (n,), "uint8", (cs,))
        arr("build/done", (-(-n // cs),), "uint8", (1,))
        paths = digest_paths(h)
        digests = arr(DIGESTS_PATH, (-(-n // cs), len(paths), DIGEST_BYTES), "uint8", (1, len(paths), DIGEST_BYTES))
        digests.update_attributes(
            {
                "arrays": list(paths),
                "algorithm": "blake2b-128 keyed with header.seal.digest, of the chunk's decoded rows, C order, little-endian",
            }
        )
        lab[:] = labels.astype(np.int32)
        return cls(group, h, url)

    @classmethod
    def resume(cls, url: str, header: StoreHeader, *, storage_options: Mapping[str, Any] | None = None) -> StoreWriter:
        """Reopen a ``building`` store whose configuration equals ``header``'s."""
        reader = StoreReader(url, allow_incomplete=True, storage_options=storage_options, writable=True)
        old = reader.header
        if old.config_key() != header.config_key():
            a, b = old.config_key(), header.config_key()
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise StoreMismatchError(
                f"cannot resume {url!r}: the existing store was built with different settings ({', '.join(diff)}); use the original settings or --overwrite"
            )
        if old.status == "complete":
            log.info("store %s is already complete", url)
        return cls(reader.group, old, url)

    # -- writing -------------------------------------------------------------------------
    def _array(self, path: str) -> zarr.Array:
        node = self.group.get(path)
        if not isinstance(node, zarr.Array):
            raise StoreError(f"store {self.url!r} has no array {path!r}; it is damaged or not a dr store")
        return node

    def done(self) -> np.ndarray:
        """Boolean done map, one entry per chunk. An unreadable entry (a write cut short by a
        crash) counts as not done, so its chunk is recomputed."""
        return read_done(self._array("build/done"), self.url)

    def chunk_rows(self, chunk: int) -> tuple[int, int]:
        cs = self.header.chunk_size
        return chunk * cs, min((chunk + 1) * cs, self.header.dataset.count)

    def write_chunk(self, chunk: int, arrays: Mapping[str, np.ndarray], skipped: Mapping[int, str] | None = None) -> None:
        """Write every array's rows of ``chunk``, verify them by reading back, mark it done.

        ``arrays`` maps array paths (``params/<f>``, ``targets/ids``, ``targets/probs``,
        ``source/sizes``, ``source/digests``, ``source/skipped``) to the chunk's rows;
        ``skipped`` maps skipped image indices to reasons (recorded in the header first).
        """
        if not (0 <= chunk < self.n_chunks):
            raise StoreError(f"chunk {chunk} out of range [0, {self.n_chunks})")
        start, stop = self.chunk_rows(chunk)
        # every array but source/labels, which is written when the store is created
        expected = set(digest_paths(self.header)) - {"source/labels"}
        if set(arrays) != expected:
            raise StoreError(f"chunk {chunk}: arrays {sorted(arrays)} do not match the schema {sorted(expected)}")
        if skipped:
            merged = {**self.header.skipped, **{str(int(i)): str(r)[:4096] for i, r in skipped.items()}}
            self.header = self.header.model_copy(update={"skipped": merged})
            self.group.update_attributes({"skipped": merged})
        for path, data in arrays.items():
            target = self._array(path)
            if data.shape != (stop - start, *target.shape[1:]):
                raise StoreError(f"chunk {chunk}: {path} has shape {data.shape}, expected {(stop - start, *target.shape[1:])}")
            target[start:stop] = data.astype(target.dtype, copy=False)
        digests = []
        for path in digest_paths(self.header):
            back = np.asarray(self._array(path)[start:stop])
            if path in arrays and not np.array_equal(back, arrays[path].astype(back.dtype, copy=False), equal_nan=back.dtype.kind == "f"):
                raise StoreError(f"chunk {chunk}: {path} read back differently from what was written; the store's medium is faulty")
            digests.append(np.frombuffer(rows_digest(back, self.header.digest_key()), dtype=np.uint8))
        self._array(DIGESTS_PATH)[chunk] = np.stack(digests)  # before done: a chunk is done only with its digests
        self._array("build/done")[chunk] = 1

    def damaged(self) -> list[ChunkProblem]:
        """Every done chunk whose rows are unreadable or differ from their recorded digests."""
        _, problems = load_checked(self.group, self.header, digest_paths(self.header), self.done())
        return problems

    def reopen(self, chunks: list[int], labels: np.ndarray) -> None:
        """Mark ``chunks`` not done (after :meth:`damaged`) so the build recomputes them: the
        store goes back to ``building`` first, and their ``source/labels`` rows are rewritten
        from ``labels`` (labels are written at creation, not by the workers)."""
        if not chunks:
            return
        self.header = self.header.model_copy(update={"status": "building", "completed_at": None})
        self.group.update_attributes({"status": "building", "completed_at": None})
        lab, done = self._array("source/labels"), self._array("build/done")
        for c in sorted(set(chunks)):
            start, stop = self.chunk_rows(c)
            done[c] = 0
            lab[start:stop] = np.asarray(labels[start:stop], dtype=np.int32)

    def finalize(self) -> StoreHeader:
        """Mark the store complete after checking every chunk is done; returns the header."""
        done = self.done()
        if not done.all():
            missing = np.flatnonzero(~done)
            raise StoreError(
                f"cannot finalize: {len(missing)} of {len(done)} chunks are not written (first: {missing[:5].tolist()}); run the build again with --resume"
            )
        digests = np.asarray(self._array("source/digests")[:])
        ds = self.header.dataset.model_copy(update={"digests_sha256": hashlib.sha256(digests.tobytes()).hexdigest()})
        header = self.header.model_copy(update={"status": "complete", "completed_at": now_iso(), "dataset": ds})
        self.group.update_attributes(header.to_attrs())
        self.header = header
        return header
