"""Trust before use: what every reader of a store (``ReinforcedDataset``, ``DeviceReplay``, verify) checks.

* :func:`check_source` -- is this source the dataset the store was built from?
* :class:`ChunkGuard` -- refuse rows whose store chunk is damaged (missing, unreadable or
  altered: see :mod:`dr.storage.integrity`), naming the chunk and the repair command.
* :func:`open_checked` -- the training readers' opening sequence: the store (every complete
  segment of an extended one, :mod:`dr.storage.segments`), its source, the digest-checked rows
  they need, the source check.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from dr.errors import ConfigError, StoreDamagedError, StoreMismatchError
from dr.sources import ConcatSource, Source, open_source
from dr.storage import StoreHeader, StoreReader
from dr.storage.integrity import ChunkProblem, damage_message
from dr.storage.segments import SegmentedStore, has_segments

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
        segments: for a store with segments, each segment's first image index and first global
            chunk number (default: one segment, chunk = ``index // chunk_size``). Plain arrays,
            so the guard pickles with the Dataset to spawned DataLoader workers.
    """

    def __init__(
        self, store: str, chunk_size: int, problems: Sequence[ChunkProblem] = (), segments: Sequence[tuple[int, int]] = ((0, 0),)
    ) -> None:
        self.store = store
        self.chunk_size = int(chunk_size)
        self.offsets = np.asarray([o for o, _ in segments], dtype=np.int64)
        self.chunk_bases = np.asarray([c for _, c in segments], dtype=np.int64)
        self.bad: dict[int, list[ChunkProblem]] = {}
        self.add(problems)

    def add(self, problems: Iterable[ChunkProblem]) -> None:
        new = list(problems)
        for p in new:
            self.bad.setdefault(p.chunk, []).append(p)
        if new:
            log.warning("%s", damage_message(self.store, new))

    def chunk_of(self, index: np.ndarray) -> np.ndarray:
        """The global chunk number of each image index."""
        index = np.asarray(index, dtype=np.int64)
        seg = np.searchsorted(self.offsets, index, side="right") - 1
        return self.chunk_bases[seg] + (index - self.offsets[seg]) // self.chunk_size

    def refuse_damaged(self, indices: int | Iterable[int]) -> None:
        """Raise :class:`StoreDamagedError` if any source index lies in a damaged chunk."""
        if not self.bad:
            return
        rows = [int(indices)] if isinstance(indices, (int, np.integer)) else [int(i) for i in indices]
        chunks = self.chunk_of(np.asarray(rows, dtype=np.int64)).tolist()
        hit = sorted(set(chunks) & set(self.bad))
        if hit:
            raise StoreDamagedError(
                f"image {rows[chunks.index(hit[0])]} lies in a damaged chunk. "
                + damage_message(self.store, [p for c in hit for p in self.bad[c]])
            )


@dataclass
class OpenedStore:
    """What :func:`open_checked` returns: the reader (a :class:`~dr.storage.segments.SegmentedStore`
    for an extended store), the opened source, the rows read (each chunk checked against its
    digests), the damaged chunks found, and per source image its segment and whether it is
    served (in a selected segment)."""

    reader: StoreReader | SegmentedStore
    source: Source
    rows: dict[str, np.ndarray]
    damaged: list[ChunkProblem]
    segment: np.ndarray
    served: np.ndarray

    @property
    def header(self) -> StoreHeader:
        """The store's header (for segments: ``dataset`` describes them all)."""
        return self.reader.header

    @property
    def skipped(self) -> np.ndarray:
        """Images the build skipped (bool per source image)."""
        return self.rows["source/skipped"].astype(bool)

    def guard(self, store: str, more: Sequence[ChunkProblem] = ()) -> ChunkGuard:
        """A :class:`ChunkGuard` over the damaged chunks found (and ``more``)."""
        parts = [(s.offset, s.chunk_base) for s in self.reader.segments] if isinstance(self.reader, SegmentedStore) else [(0, 0)]
        return ChunkGuard(store, self.header.chunk_size, [*self.damaged, *more], parts)


def open_checked(
    store: str,
    source: Any = None,
    *,
    paths: Sequence[str] = (),
    storage_options: Mapping[str, Any] | None = None,
    verify_source: Literal["sample", "all", "none"] = "sample",
    segments: Sequence[int] | None = None,
) -> OpenedStore:
    """Open a complete store and its source (default: the location the store records), read
    ``source/labels``, ``source/skipped`` and ``paths`` digest-checked, and check the source.

    An extended store is read whole (every complete segment, as one index space); ``segments``
    selects the segments whose images are served (their sources are opened and checked; the
    others' are not needed), and ``source`` is then one entry per segment (``None``: the
    recorded location).

    Raises:
        ConfigError: ``segments`` names a segment the store does not have; ``source`` is not
            one entry per segment.
        StoreError: no store, a malformed or edited header, an incomplete build.
        StoreMismatchError: no source given or recorded, or not the store's dataset.
    """
    if not has_segments(store, storage_options):
        if segments is not None and list(segments) != [0]:
            raise ConfigError(f"segments={list(segments)}: store {store!r} has one segment, 0 (it was never extended)")
        reader = StoreReader(store, storage_options=storage_options)
        src = open_source(_location(store, source, reader.header), storage_options)
        rows, damaged = reader.load_checked(["source/labels", "source/skipped", *paths])
        n = reader.header.dataset.count
        opened = OpenedStore(reader, src, rows, damaged, np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool))
        check_source(src, reader, verify_source, skipped=opened.skipped)
        return opened
    whole = SegmentedStore(store, storage_options=storage_options)
    numbers = [s.index for s in whole.segments]
    chosen = numbers if segments is None else sorted({int(i) for i in segments})
    if not chosen or not set(chosen) <= set(numbers):
        raise ConfigError(f"segments={list(segments or [])}: store {store!r} has complete segments {numbers}")
    if source is None or isinstance(source, (list, tuple)):
        given = list(source) if source is not None else [None] * len(numbers)
    else:
        given = []
    if len(given) != len(numbers):
        raise ConfigError(
            f"store {store!r} has {len(numbers)} segments: pass source= as a list of one source per segment "
            "(None for the location a segment records), or leave it out"
        )
    rows, damaged = whole.load_checked(["source/labels", "source/skipped", *paths])
    parts: list[Source | None] = []
    for seg, arg in zip(whole.segments, given):
        if seg.index not in chosen:
            parts.append(None)
            continue
        src = open_source(_location(seg.url, arg, seg.reader.header), storage_options)
        check_source(src, seg.reader, verify_source, skipped=rows["source/skipped"][seg.offset : seg.offset + seg.count].astype(bool))
        parts.append(src)
    labels = [rows["source/labels"][s.offset : s.offset + s.count] for s in whole.segments]
    concat = ConcatSource(parts, labels, [s.reader.header.dataset.classes for s in whole.segments])
    segment = whole.segment_of(np.arange(whole.count))
    return OpenedStore(whole, concat, rows, damaged, segment, np.isin(segment, chosen))


def _location(store: str, source: Any, header: StoreHeader) -> Any:
    if source is not None:
        return source
    if header.dataset.location is None:
        raise StoreMismatchError(f"store {store!r} records no source location: pass source=")
    return header.dataset.location
