"""Trust before use: what every reader of a store (``ReinforcedDataset``, ``DeviceReplay``, verify) checks.

* :func:`check_source` -- is this source the dataset the store was built from?
* :class:`ChunkGuard` -- refuse rows whose store chunk is damaged (missing, unreadable or
  altered: see :mod:`dr.storage.integrity`), naming the chunk and the repair command.
* :func:`open_checked` -- the training readers' opening sequence: the store, its source,
  the digest-checked rows they need, the source check.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from dr.errors import StoreDamagedError, StoreMismatchError
from dr.sources import Source, open_source
from dr.storage import StoreReader
from dr.storage.integrity import ChunkProblem, damage_message

__all__ = ["check_source", "ChunkGuard", "OpenedStore", "open_checked"]

log = logging.getLogger(__name__)


def check_source(
    source: Source, reader: StoreReader, mode: Literal["sample", "all", "none"] = "sample", *, skipped: np.ndarray | None = None
) -> None:
    """Refuse a source that is not the store's dataset.

    Compares count, class names and a labels hash, then re-hashes 32 seeded images (``mode``
    ``"sample"``), every image (``"all"``) or none against ``source/digests``. Images the build
    skipped, and images whose digest chunk is damaged, are not re-hashed.

    Raises:
        StoreMismatchError: what differs, e.g. the count or one differing file.
    """
    header, store = reader.header, reader.url
    fp, ds = source.fingerprint(), header.dataset
    problems = []
    if fp.count != ds.count:
        problems.append(f"{fp.count} images vs {ds.count} in the store")
    if tuple(fp.classes) != tuple(ds.classes):
        problems.append(f"classes {list(fp.classes)[:5]}... vs {list(ds.classes)[:5]}...")
    elif fp.labels_sha256 != ds.labels_sha256:
        problems.append("labels differ (same classes, different per-image labels or order)")
    if not problems and mode != "none":
        loaded, damaged = reader.load_checked(["source/digests"])
        digests = loaded["source/digests"]
        usable = np.ones(ds.count, dtype=bool) if skipped is None else ~np.asarray(skipped, dtype=bool)
        for p in damaged:
            usable[p.start : p.stop] = False
        candidates = np.flatnonzero(usable)
        if mode == "all":
            idx = candidates
        else:
            idx = np.random.default_rng(0).choice(candidates, size=min(32, len(candidates)), replace=False)
        bad = [int(i) for i in idx if source.read(int(i))[1] != digests[i].tobytes()]
        if bad:
            problems.append(f"content of {len(bad)} of {len(idx)} checked images differs, e.g. {source.describe(bad[0])}")
    if problems:
        raise StoreMismatchError(f"source {source!r} is not the dataset store {store!r} was built from: " + "; ".join(problems))


class ChunkGuard:
    """Knows the store's damaged chunks and refuses to serve their rows.

    Args:
        store: the store's URL (for messages).
        chunk_size: images per store chunk.
        problems: what :meth:`storage.StoreReader.load_checked` found.
    """

    def __init__(self, store: str, chunk_size: int, problems: Sequence[ChunkProblem] = ()) -> None:
        self.store = store
        self.chunk_size = int(chunk_size)
        self.bad: dict[int, list[ChunkProblem]] = {}
        self.add(problems)

    def add(self, problems: Iterable[ChunkProblem]) -> None:
        new = list(problems)
        for p in new:
            self.bad.setdefault(p.chunk, []).append(p)
        if new:
            log.warning("%s", damage_message(self.store, new))

    def refuse_damaged(self, indices: int | Iterable[int]) -> None:
        """Raise :class:`StoreDamagedError` if any source index lies in a damaged chunk."""
        if not self.bad:
            return
        rows = [int(indices)] if isinstance(indices, (int, np.integer)) else [int(i) for i in indices]
        hit = sorted({i // self.chunk_size for i in rows} & set(self.bad))
        if hit:
            raise StoreDamagedError(
                f"image {next(i for i in rows if i // self.chunk_size == hit[0])} lies in a damaged chunk. "
                + damage_message(self.store, [p for c in hit for p in self.bad[c]])
            )


@dataclass
class OpenedStore:
    """What :func:`open_checked` returns: the reader, the opened source, the rows read (each
    chunk checked against its digests) and the damaged chunks found."""

    reader: StoreReader
    source: Source
    rows: dict[str, np.ndarray]
    damaged: list[ChunkProblem]

    @property
    def skipped(self) -> np.ndarray:
        """Images the build skipped (bool per source image)."""
        return self.rows["source/skipped"].astype(bool)


def open_checked(
    store: str,
    source: Any = None,
    *,
    paths: Sequence[str] = (),
    storage_options: Mapping[str, Any] | None = None,
    verify_source: Literal["sample", "all", "none"] = "sample",
) -> OpenedStore:
    """Open a complete store and its source (default: the location the store records), read
    ``source/labels``, ``source/skipped`` and ``paths`` digest-checked, and check the source.

    Raises:
        StoreError: no store, a malformed or edited header, an incomplete build.
        StoreMismatchError: no source given or recorded, or not the store's dataset.
    """
    reader = StoreReader(store, storage_options=storage_options)
    if source is None:
        source = reader.header.dataset.location
        if source is None:
            raise StoreMismatchError(f"store {store!r} records no source location: pass source=")
    src = open_source(source, storage_options)
    rows, damaged = reader.load_checked(["source/labels", "source/skipped", *paths])
    opened = OpenedStore(reader, src, rows, damaged)
    check_source(src, reader, verify_source, skipped=opened.skipped)
    return opened
