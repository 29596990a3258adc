"""A store opened for training: the one core under :class:`dr.ReinforcedDataset` and
:class:`dr.replay.DeviceReplay`.

:class:`StoredViews` opens a complete store (every complete segment of an extended one) and the
source it was built from, checks both (the sealed header, the source's identity and a sample of
its content, every chunk read against its digests), and answers the two questions both readers
ask: which stored view does image ``i`` serve at epoch ``e`` (:meth:`StoredViews.view_ids`), and
what are that view's parameters and soft label (:meth:`StoredViews.records`).

Metadata (parameters and top-k targets) is held in memory when it fits ``memory_budget`` -- in
shared memory, so DataLoader workers, forked or spawned, read one copy -- and otherwise read
chunk by chunk through a small per-process cache (pair that with :meth:`StoredViews.sampler`,
whose chunk-aware order keeps the cache hot). Rows of damaged chunks are never served.

Also here: what every reader trusts before use -- :func:`reader_source` (which source a reader
may open: a store never steers reads), :func:`refuse_other_source`, :class:`ChunkGuard`,
:func:`open_trusted` and :func:`parameter_deriver`.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from dr.errors import ConfigError, SamplerVersionError, StoreDamagedError, StoreMismatchError
from dr.orders import view_choice
from dr.policy import SAMPLER_VERSION, Policy
from dr.sources import ConcatSource, Source, looks_like_spec, open_source
from dr.storage import StoreHeader, StoreReader
from dr.storage.integrity import ChunkProblem, damage_message
from dr.storage.layout import (
    DIGESTS,
    IDS,
    LABELS,
    PROBS,
    SKIPPED,
    TARGET_ARRAYS,
    Deriver,
    decode_probs,
    param_name,
    param_path,
    param_paths,
)
from dr.storage.segments import SegmentedStore, has_segments
from dr.urls import Location, is_url, strip_file_scheme

__all__ = [
    "ChunkGuard",
    "OpenedStore",
    "StoredViews",
    "refuse_other_source",
    "open_trusted",
    "parameter_deriver",
    "reader_source",
    "served_topk",
]

log = logging.getLogger(__name__)

_VIEW_BLOCK = 1024  # images whose view choice is computed together (StoredViews.view_index)


def served_topk(topk: int | None, stored: int, store: str) -> int:
    """The k' a reader serves: ``topk`` checked against the store's k (default: all of it).

    Raises:
        ConfigError: ``topk`` below 1 or above the stored k.
    """
    if topk is None:
        return stored
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or not 1 <= int(topk) <= stored:
        raise ConfigError(f"topk={topk!r}: store {store!r} holds the top {stored} classes per view; serve 1 to {stored} of them")
    return int(topk)


# -- what every reader trusts before use ------------------------------------------------------------
def parameter_deriver(header: StoreHeader) -> Deriver | None:
    """How a reader re-derives the parameters of a store that keeps only their digests (``None``
    when the store stores them): the build's own :meth:`dr.policy.Policy.chunk_params` for each
    chunk, from its sizes and skipped images; :mod:`dr.storage.integrity` checks the result
    against the digests the build recorded.

    Raises:
        SamplerVersionError: the store was built with another version of the keyed sampler.
    """
    layout = header.layout
    if layout is None or layout.params != "derived":
        return None
    if layout.sampler_version != SAMPLER_VERSION:
        raise SamplerVersionError(
            f"this store's parameters are derived (not stored) with version {layout.sampler_version} of dr's keyed sampler, "
            f"and this dr has version {SAMPLER_VERSION}: it would re-derive other views than the teachers labelled. Read the "
            f"store with a dr release whose sampler is version {layout.sampler_version}, or rebuild it with --params stored"
        )
    policy = Policy.from_dict(header.policy)

    def derive(chunk: int, sizes: np.ndarray, skipped: np.ndarray) -> dict[str, np.ndarray]:
        first = header.dataset.offset + chunk * header.chunk_size
        params = policy.chunk_params(header.seed, first, sizes, np.asarray(skipped, dtype=bool), header.views)
        return {param_path(k): v for k, v in params.items()}

    return derive


def refuse_other_source(
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
        idx, digests = _recorded_digests(reader, mode, skipped)
        bad = [int(i) for i, d in zip(idx, digests) if source.read(int(i))[1] != d.tobytes()]
        if bad:
            problems.append(f"content of {len(bad)} of {len(idx)} checked images differs, e.g. {source.describe(bad[0])}")
    if problems:
        hint = f" (the store records that it was built from {ds.location!r})" if ds.location else ""
        raise StoreMismatchError(f"source {source!r} is not the dataset store {store!r} was built from: " + "; ".join(problems) + hint)


def _recorded_digests(reader: StoreReader, mode: Literal["sample", "all"], skipped: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The images to re-hash and their recorded digests: every usable image (``"all"``), or 32
    seeded ones (``"sample"``), for which only their chunks are read -- at ImageNet scale the
    whole digest array is thousands of inner chunks. Images of damaged digest chunks drop out."""
    n, cs = reader.header.dataset.count, reader.header.chunk_size
    usable = np.ones(n, dtype=bool) if skipped is None else ~np.asarray(skipped, dtype=bool)
    if mode == "all":
        loaded, damaged = reader.load_checked([DIGESTS])
        for p in damaged:
            usable[p.start : p.stop] = False
        idx = np.flatnonzero(usable)
        return idx, loaded[DIGESTS][idx]
    candidates = np.flatnonzero(usable)
    idx = np.sort(np.random.default_rng(0).choice(candidates, size=min(32, len(candidates)), replace=False))
    chunks = sorted({int(i) // cs for i in idx})
    loaded, damaged = reader.load_checked([DIGESTS], chunks=chunks)
    starts = {c: k * cs for k, c in enumerate(chunks)}  # rows come back chunk after chunk; only the last chunk is short
    bad_chunks = {p.chunk for p in damaged}
    keep = np.asarray([int(i) // cs not in bad_chunks for i in idx], dtype=bool)
    idx = idx[keep]
    rows = np.asarray([starts[int(i) // cs] + int(i) % cs for i in idx], dtype=np.int64)
    return idx, loaded[DIGESTS][rows] if len(rows) else loaded[DIGESTS][:0]


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
    """What :func:`open_trusted` returns: the reader (a :class:`~dr.storage.segments.SegmentedStore`
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
        return self.rows[SKIPPED].astype(bool)

    def guard(self, store: str, more: Sequence[ChunkProblem] = ()) -> ChunkGuard:
        """A :class:`ChunkGuard` over the damaged chunks found (and ``more``)."""
        parts = [(s.offset, s.chunk_base) for s in self.reader.segments] if isinstance(self.reader, SegmentedStore) else [(0, 0)]
        return ChunkGuard(store, self.header.chunk_size, [*self.damaged, *more], parts)


def open_trusted(
    store: str | Location,
    source: Any = None,
    *,
    paths: Sequence[str] = (),
    verify_source: Literal["sample", "all", "none"] = "sample",
    segments: Sequence[int] | None = None,
    trust_store_location: bool = False,
) -> OpenedStore:
    """Open a complete store and its source, read ``source/labels``, ``source/skipped`` and
    ``paths`` digest-checked, and check the source. ``store`` is a path, a URL or a
    :class:`~dr.urls.Location`, whose fsspec options reach the store and a remote source.

    The source is ``source`` when given; otherwise the location the store records, but only
    where :func:`reader_source` allows it (a local folder beside the store) or with
    ``trust_store_location=True``: a store never steers a reader to a URL, a source spec or a
    path outside its own directory.

    An extended store is read whole (every complete segment, as one index space); ``segments``
    selects the segments whose images are served (their sources are opened and checked; the
    others' are not needed), and ``source`` is then one entry per segment (``None``: the
    recorded location, by the same rule).

    Raises:
        ConfigError: ``segments`` names a segment the store does not have; ``source`` is not
            one entry per segment.
        StoreError: no store, a malformed or edited header, an incomplete build, a segment
            table that disagrees with the segment stores.
        StoreMismatchError: no source given or recorded, a recorded location the rule refuses
            (named, with the fix), or not the store's dataset.
    """
    loc = Location.of(store)
    store = loc.url
    if not has_segments(loc):
        if segments is not None and list(segments) != [0]:
            raise ConfigError(f"segments={list(segments)}: store {store!r} has one segment, 0 (it was never extended)")
        reader = StoreReader(loc)
        src = open_source(_location(store, source, reader.header, store, trust_store_location), loc.options)
        rows, damaged = reader.load_checked([LABELS, SKIPPED, *paths], derive=parameter_deriver(reader.header))
        n = reader.header.dataset.count
        opened = OpenedStore(reader, src, rows, damaged, np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool))
        refuse_other_source(src, reader, verify_source, skipped=opened.skipped)
        return opened
    whole = SegmentedStore(loc)
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
    rows, damaged = whole.load_checked([LABELS, SKIPPED, *paths], derive_for=parameter_deriver)
    parts: list[Source | None] = []
    for seg, arg in zip(whole.segments, given):
        if seg.index not in chosen:
            parts.append(None)
            continue
        src = open_source(_location(seg.url, arg, seg.reader.header, store, trust_store_location), loc.options)
        refuse_other_source(src, seg.reader, verify_source, skipped=rows[SKIPPED][seg.offset : seg.offset + seg.count].astype(bool))
        parts.append(src)
    labels = [rows[LABELS][s.offset : s.offset + s.count] for s in whole.segments]
    concat = ConcatSource(parts, labels, [s.reader.header.dataset.classes for s in whole.segments])
    segment = whole.segment_of(np.arange(whole.count))
    return OpenedStore(whole, concat, rows, damaged, segment, np.isin(segment, chosen))


def reader_source(
    store: str, header: StoreHeader, source: Any = None, *, root: str | None = None, trust_store_location: bool = False
) -> Any:
    """The source a reader opens for ``store``: ``source`` when the user gives one, else the
    location ``header`` records -- which a reader follows only when it is a plain local path
    that resolves (symbolic links followed) inside the directory holding the store the user
    opened, or when the user trusts the store (``trust_store_location=True``).

    A store's header is not sealed where it names its source, and anyone can edit it: a
    recorded URL would make a reader fetch from a server the store chooses; a ``list:``,
    ``wds:`` or ``hf-disk:`` spec names files (or URLs) anywhere; a path outside the store's
    directory reads what the store points to. Such a location is shown in the message, as a
    hint, and not opened.

    Args:
        store: the store (or segment) whose header this is, for messages.
        header: its header.
        source: the user's source (a path, a spec or a dataset object), or ``None``.
        root: the store the user opened (for a segment: the base store; default ``store``):
            the recorded location must lie inside its parent directory.
        trust_store_location: follow the recorded location whatever it is.

    Returns:
        ``source``, or the recorded location.

    Raises:
        StoreMismatchError: no source given and none recorded, or a recorded location the
            rule refuses (the message names it, why, and the fix).
    """
    if source is not None:
        return source
    location = header.dataset.location
    if location is None:
        raise StoreMismatchError(f"store {store!r} records no source location: pass the source yourself (source=..., or --source ...)")
    if trust_store_location:
        return location
    why = _unfollowed(location, str(root if root is not None else store))
    if why is not None:
        raise StoreMismatchError(
            f"store {store!r} records its source at {location!r}, which a reader does not open unless you ask: {why}. "
            "A store never chooses what a reader reads. Pass the source yourself (source=... in Python, --source ... "
            "on the command line), or, for a store you trust, follow the recorded location with trust_store_location=True "
            "(--trust-store-location)"
        )
    return location


def _unfollowed(location: str, root: str) -> str | None:
    """Why a reader does not follow ``location`` for the store at ``root`` (``None``: it may)."""
    if "://" in location or location.startswith("file:"):
        return "it is a URL"
    if not os.path.isabs(location):
        if looks_like_spec(location):
            kind = location.partition(":")[0]
            return f"it is a {kind}: source spec, whose entries, shards or files may name any file or URL"
        return "it is not an absolute local path"
    if is_url(root):
        return "the store was opened by URL, and only a local store's own folder is followed"
    folder = os.path.realpath(os.path.dirname(os.path.abspath(strip_file_scheme(root))))  # the folder the user named, resolved
    if os.path.dirname(folder) == folder:
        return f"the store lies in the file system's root {folder!r}, so no folder is its own"
    target = os.path.realpath(location)
    if os.path.commonpath([folder, target]) != folder:
        return f"it lies outside {folder!r}, the folder that holds the store"
    return None


def _location(store: str, source: Any, header: StoreHeader, root: str, trust_store_location: bool) -> Any:
    return reader_source(store, header, source, root=root, trust_store_location=trust_store_location)


def _shared(a: np.ndarray) -> torch.Tensor:
    """``a`` in shared memory (a torch tensor: DataLoader workers, spawned or forked, map the
    same pages; numpy views of it cost nothing)."""
    return torch.from_numpy(np.ascontiguousarray(a)).share_memory_()


class StoredViews:
    """A complete store and its source, opened and checked for training (both readers' core).

    Args:
        store: path, fsspec URL or :class:`~dr.urls.Location` of a complete store.
        source: the dataset the store was built from (a path, a source spec or a dataset object;
            for an extended store one entry per segment); default: the location the store records.
        seed: seeds the view choice (not the stored views).
        topk: serve the ``topk`` largest stored probabilities per view (k' <= k; default all).
        segments: an extended store's segments whose images are served (default: every complete one).
        verify_source: ``"sample"`` (re-hash 32 seeded images), ``"all"`` or ``"none"``.
        storage_options: fsspec options for a remote store or source (with a path or URL; a
            :class:`~dr.urls.Location` carries its own).
        memory_budget: bytes of metadata (parameters and targets) to hold in memory; above it,
            read chunk by chunk.
        cache_chunks: store chunks each process keeps when reading by chunk.
        output_size: replay size (default: the build's).
        trust_store_location: open the source from the location the store records even when it
            is a URL, a source spec or a path outside the store's folder (default: only a local
            folder beside the store; otherwise pass ``source=``). See the store-safety guide.

    Raises:
        ConfigError: ``topk`` outside ``[1, k]``, unknown ``segments``.
        StoreError: no store, an edited header, an incomplete build.
        StoreMismatchError: the source is not the store's dataset.
        SamplerVersionError: derived parameters from another version of the keyed sampler.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | Location,
        source: Any = None,
        *,
        seed: int = 0,
        topk: int | None = None,
        segments: Sequence[int] | None = None,
        verify_source: Literal["sample", "all", "none"] = "sample",
        storage_options: Mapping[str, Any] | None = None,
        memory_budget: int = 4 << 30,
        cache_chunks: int = 8,
        output_size: int | None = None,
        trust_store_location: bool = False,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
            raise ConfigError(f"seed={seed!r}: use an integer in [0, 2**63 - 1]")
        if isinstance(cache_chunks, bool) or not isinstance(cache_chunks, (int, np.integer)) or cache_chunks < 1:
            raise ConfigError(f"cache_chunks={cache_chunks!r}: keep at least 1 chunk per process")
        #: where the store is, with the fsspec options that reach it
        self.location = Location.of(store, storage_options)
        self.store = self.location.url
        opened = open_trusted(
            self.location,
            source,
            verify_source=verify_source,
            segments=segments,
            trust_store_location=trust_store_location,
        )
        #: the store's header (``None`` only for ``DeviceReplay.fresh_only``, which reads no store)
        self.header: StoreHeader = opened.header
        self.source: Source = opened.source
        self.policy = Policy.from_dict(self.header.policy)
        self.output_size = int(output_size or self.header.output_size)
        self.seed = int(seed)
        self.views = self.header.views
        self.num_classes = self.header.num_classes
        self.topk = served_topk(topk, self.header.topk, self.store)
        #: the dataset label of each source image
        self.label_of: np.ndarray = opened.rows[LABELS].astype(np.int64)
        self.skipped: np.ndarray = opened.skipped
        #: source index of each item (images skipped by the build, and images of the segments not
        #: selected, are never served)
        self.indices: np.ndarray = np.flatnonzero(~self.skipped & opened.served)
        #: the segment of each item (0 for a store that was never extended)
        self.segment_ids: np.ndarray = opened.segment[self.indices]
        self._fields = param_paths(self.header)
        damaged = self._place_metadata(opened, memory_budget)
        self.cache_chunks = int(cache_chunks)
        self._meta: dict[str, np.ndarray] | None = None
        self._readers: dict[int, tuple[StoreReader, Deriver | None]] = {}
        self._reader_pid = -1
        self._cache: OrderedDict[int, tuple[dict[str, np.ndarray], int]] = OrderedDict()
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._view_blocks: dict[int, dict[int, np.ndarray]] = {}
        #: damaged store chunks (found on open, or when a chunk is read): their rows are refused
        self.guard: ChunkGuard = opened.guard(self.store, damaged)

    def _place_metadata(self, opened: OpenedStore, memory_budget: int) -> list[ChunkProblem]:
        """Where the metadata lives: read whole into shared memory when it fits the budget, else
        left for chunk-by-chunk reads (the segments' urls and chunk numbers kept for that).
        Returns the damaged chunks found (on open and while reading)."""
        reader = opened.reader
        parts = reader.segments if isinstance(reader, SegmentedStore) else None
        #: (url, first image, first global chunk) of each segment, for reading by chunk
        self._parts = [(s.reader.location, s.offset, s.chunk_base) for s in parts] if parts else [(self.location, 0, 0)]
        #: the global store chunk of each source image
        self.chunk_of: np.ndarray = (
            reader.chunk_of(np.arange(len(self.label_of)))
            if isinstance(reader, SegmentedStore)
            else np.arange(len(self.label_of)) // self.header.chunk_size
        )
        need = reader.nbytes([*self._fields, *TARGET_ARRAYS])
        #: bytes of the metadata (parameters and targets) once decoded
        self.metadata_bytes = int(need)
        #: whether the metadata is held in memory (else read by chunk)
        self.in_memory = need <= memory_budget
        damaged = list(opened.damaged)
        self._meta_t: dict[str, torch.Tensor] | None = None
        if self.in_memory:
            if isinstance(reader, SegmentedStore):
                meta, more = reader.load_checked([*self._fields, *TARGET_ARRAYS], derive_for=parameter_deriver)
            else:
                meta, more = reader.load_checked([*self._fields, *TARGET_ARRAYS], derive=parameter_deriver(self.header))
            self._meta_t = {k: _shared(v) for k, v in meta.items()}
            damaged += more
        else:
            log.info("store metadata (%d MB) exceeds memory_budget: reading by chunk (use .sampler() as the loader's sampler)", need >> 20)
        return damaged

    # -- epochs and views ----------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the views of ``epoch`` (shared with DataLoader workers, persistent or not)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ConfigError(f"epoch={epoch!r}: use an integer >= 0")
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        """The epoch :meth:`set_epoch` chose (0 at first)."""
        return int(self._epoch[0])

    def view_ids(self, index: np.ndarray, epoch: int | None = None) -> np.ndarray:
        """The stored view of each source image in ``index`` at ``epoch`` (default: the current
        one): each view once per V epochs (:func:`dr.orders.view_choice`)."""
        return view_choice(self.seed, np.asarray(index, dtype=np.int64), self.epoch if epoch is None else int(epoch), self.views)

    def view_index(self, index: int, epoch: int | None = None) -> int:
        """:meth:`view_ids` of one image, from choices computed a block of 1,024 images at a time
        and kept for two epochs per process (a DataLoader worker's per-item call)."""
        e = self.epoch if epoch is None else epoch
        block, pos = divmod(int(index), _VIEW_BLOCK)
        blocks = self._view_blocks.get(e)
        if blocks is None:  # keep two epochs' choices (4 bytes per image each), per process
            if len(self._view_blocks) >= 2:
                del self._view_blocks[next(iter(self._view_blocks))]
            blocks = self._view_blocks[e] = {}
        hit = blocks.get(block)
        if hit is None:
            start = block * _VIEW_BLOCK
            hit = blocks[block] = view_choice(self.seed, np.arange(start, start + _VIEW_BLOCK), e, self.views).astype(np.int32)
        return int(hit[pos])

    # -- metadata -------------------------------------------------------------------------------------
    def _memory(self) -> dict[str, np.ndarray] | None:
        if self._meta is None and self._meta_t is not None:
            self._meta = {k: t.numpy() for k, t in self._meta_t.items()}
        return self._meta

    def _chunk(self, c: int) -> tuple[dict[str, np.ndarray], int]:
        """Global chunk ``c``'s metadata rows (digest-checked, cached per process) and the source
        index of its first row."""
        if self._reader_pid != os.getpid():
            self._readers, self._reader_pid = {}, os.getpid()
            self._cache.clear()
        hit = self._cache.get(c)
        if hit is not None:
            self._cache.move_to_end(c)
            return hit
        part = max(i for i, (_, _, base) in enumerate(self._parts) if base <= c)
        where, offset, base = self._parts[part]
        first = offset + (c - base) * self.header.chunk_size
        if part not in self._readers:
            reader = StoreReader(where)
            self._readers[part] = (reader, parameter_deriver(reader.header))
        reader, derive = self._readers[part]
        data, damaged = reader.load_checked([*self._fields, *TARGET_ARRAYS], chunks=[c - base], derive=derive)
        if damaged:
            prefix = f"segments/{part}/" if part else ""
            self.guard.add([ChunkProblem(prefix + p.path, c, first, first + p.stop - p.start, p.problem) for p in damaged])
            self.guard.refuse_damaged(first)
        self._cache[c] = (data, first)
        if len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return data, first

    def records(self, index: np.ndarray, view: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """The parameters (field -> ``[B, ...]``), top-k' ids (``[B, k']``, int64) and
        probabilities (``[B, k']``, float32) of stored view ``view[i]`` of source image
        ``index[i]``; rows of damaged chunks are refused (:class:`~dr.errors.StoreDamagedError`)."""
        index, view = np.asarray(index, dtype=np.int64).reshape(-1), np.asarray(view, dtype=np.int64).reshape(-1)
        self.guard.refuse_damaged(index)
        k = self.topk
        meta = self._memory()
        if meta is not None:
            params = {param_name(p): meta[p][index, view] for p in self._fields}
            ids, probs = meta[IDS][index, view, :k], meta[PROBS][index, view, :k]
        else:
            chunks = self.chunk_of[index]
            arrays = (
                self._rows_of_one_chunk(index, view, int(chunks[0])) if (chunks == chunks[0]).all() else self._rows(index, view, chunks)
            )
            params = {param_name(p): arrays[p] for p in self._fields}
            ids, probs = arrays[IDS][:, :k], arrays[PROBS][:, :k]
        return params, ids.astype(np.int64), decode_probs(self.header, probs)

    def _rows_of_one_chunk(self, index: np.ndarray, view: np.ndarray, chunk: int) -> dict[str, np.ndarray]:
        """The stored rows of views of images of one chunk (a Dataset item: one image)."""
        data, first = self._chunk(chunk)
        rel = index - first
        return {p: a[rel, view] for p, a in data.items()}

    def _rows(self, index: np.ndarray, view: np.ndarray, chunks: np.ndarray) -> dict[str, np.ndarray]:
        """The stored rows of views of images in several chunks, in the order asked."""
        got: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for c in np.unique(chunks):
            rows = np.flatnonzero(chunks == c)
            data, first = self._chunk(int(c))
            for p, a in data.items():
                got.setdefault(p, []).append((rows, a[index[rows] - first, view[rows]]))
        arrays = {}
        for p, pieces in got.items():
            out = np.empty((len(index), *pieces[0][1].shape[1:]), dtype=pieces[0][1].dtype)
            for rows, vals in pieces:
                out[rows] = vals
            arrays[p] = out
        return arrays

    def partner_index(self, params: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """The source index of each view's mixing partner (stored as a global image index), or
        ``None`` for a policy that does not mix."""
        if "mix_partner" not in params:
            return None
        return np.asarray(params["mix_partner"], dtype=np.int64) - self.header.dataset.offset

    def sampler(self, *, shuffle: bool = True, seed: int = 0, window: int = 4, num_replicas: int = 1, rank: int = 0) -> Any:
        """The sampler to give a ``DataLoader``: a :class:`~dr.samplers.ChunkAwareSampler` --
        a full shuffle when the metadata is in memory, chunk windows when it is read by chunk
        (so each process's chunk cache serves every read)."""
        from dr.samplers import ChunkAwareSampler

        window = max(1, len(np.unique(self.chunk_of))) if self.in_memory else window
        return ChunkAwareSampler(self, window=window, shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank)

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # the shared tensors travel as shared memory, not copies
        state.update(_meta=None, _readers={}, _reader_pid=-1, _cache=OrderedDict(), _view_blocks={})
        return state
