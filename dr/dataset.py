"""``ReinforcedDataset``: the drop-in torch Dataset that replays stored views with soft labels.

Every epoch each image yields one of its V stored views, chosen by a seeded permutation per
image and *cycle* of V epochs, so each view is used exactly once per V epochs. The view is
re-created from the original image with the same kernels the build used, and comes with the
teachers' top-k soft label.

Metadata (parameters and targets) is loaded into numpy once, before DataLoader workers fork
(copy-on-write shared), when it fits ``memory_budget``; otherwise rows are read per store chunk
through a small per-process cache -- pair that mode with :class:`ChunkAwareSampler`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from dr.errors import ConfigError
from dr.loss import densify
from dr.policy import TAG_ORIGINAL, Policy, fresh_rng
from dr.policy.rng import KeyedRNG, splitmix64, splitmix64_int, view_keys
from dr.sources import Source
from dr.storage import StoreReader
from dr.storage.integrity import ChunkProblem
from dr.storage.segments import SegmentedStore
from dr.trusted import ChunkGuard, open_checked

__all__ = ["ReinforcedDataset", "ChunkAwareSampler", "served_topk", "to_float", "view_choice"]

log = logging.getLogger(__name__)

ARRAYS = ("targets/ids", "targets/probs")
_TAG_COIN = 3  # the stream of the p_original coin
_VIEW_BLOCK = 1024  # images whose view choice is computed together (ReinforcedDataset.view_index)


def view_choice(seed: int, index: np.ndarray, epoch: int, views: int) -> np.ndarray:
    """The stored view each image in ``index`` uses at ``epoch``, vectorised: per image and
    *cycle* of ``views`` epochs a seeded permutation of its views (each view once per cycle),
    a pure function of ``(seed, index, cycle)``."""
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    cycle, pos = divmod(int(epoch), int(views))
    if len(index) == 1 and views <= 64:  # one item (a DataLoader worker's call): plain ints are faster
        key = int(view_keys(seed, index, cycle)[0])
        rank = [splitmix64_int(key ^ salt) for salt in _salts_int(int(views))]
        return np.asarray([sorted(range(views), key=rank.__getitem__)[pos]], dtype=np.int64)
    keys = view_keys(seed, index, cycle)
    order = splitmix64(keys[:, None] ^ _salts(int(views))[None, :])
    return np.argsort(order, axis=1, kind="stable")[:, pos].astype(np.int64)


@functools.lru_cache(maxsize=64)
def _salts(views: int) -> np.ndarray:
    return splitmix64(np.arange(views, dtype=np.uint64))


@functools.lru_cache(maxsize=64)
def _salts_int(views: int) -> tuple[int, ...]:
    return tuple(int(x) for x in _salts(views))


def served_topk(topk: int | None, stored: int, store: str) -> int:
    """The k' a reader serves: ``topk`` checked against the store's k (default: all of it).

    Raises:
        ConfigError: ``topk`` below 1 or above the stored k.
    """
    if topk is None:
        return stored
    if not 1 <= int(topk) <= stored:
        raise ConfigError(f"topk={topk}: store {store!r} holds the top {stored} classes per view; serve 1 to {stored} of them")
    return int(topk)


def to_float(view: torch.Tensor) -> torch.Tensor:
    """uint8 ``[3,H,W]`` -> float32 in ``[0, 1]`` (what ``ToTensor`` gives)."""
    return view.to(torch.float32).div_(255)


class ReinforcedDataset(Dataset):
    """A map-style Dataset over a reinforced store and its source images.

    Args:
        store: path or fsspec URL of a complete store.
        source: the dataset the store was built from (a path or a dataset object); default:
            the location recorded in the store.
        output_size: replay at this size (default: the build's); boxes are in source pixels.
        transform: applied to the replayed uint8 ``[3,S,S]`` view (default :func:`to_float`).
        p_original: probability of returning a freshly sampled view of the original image with
            a one-hot target instead of a stored view (ml-dr trains with ``1 - 0.99``).
        original_transform: used instead of a fresh policy sample when ``p_original`` fires;
            gets the decoded uint8 ``[3,H,W]`` image and must return what ``transform`` does.
        dense: ``False`` -> sparse ``(ids [k] int64, probs [k] float32)`` targets; ``"smooth"``
            or ``True`` -> ``[C]`` with the missing mass spread over other classes; ``"zeros"``
            -> ``[C]`` with zeros outside the top-k.
        seed: seeds the view choice and ``p_original`` draws (not the stored views).
        memory_budget: bytes of metadata to load into RAM; above it, read by chunk.
        verify_source: ``"sample"`` (hash 32 seeded images), ``"all"`` or ``"none"``.
        storage_options: fsspec options for a remote store.
        cache_chunks: store chunks kept in memory when reading by chunk.
        topk: serve only the ``topk`` largest stored probabilities of each view (k' <= the
            store's k; default all). The mass left out is the loss's ``rest`` (spread over the
            other classes by :func:`dr.loss.soft_cross_entropy`'s default, or renormalised
            with ``rest="renormalize"``): a store built with a large k serves any smaller one.
        return_labels: items are ``(view, target, label)``: the image's dataset label (an
            ``int64`` scalar tensor) joins the soft target, for the loss's hard-label term
            (``soft_cross_entropy(logits, target, labels=label, hard_weight=w)``).
        segments: for a store extended with ``dr-build reinforce --extend``, the segments whose
            images this Dataset serves (default: every complete segment; ``source`` is then one
            entry per segment). Items keep the store's order; :attr:`segment_ids` gives each
            item's segment (what :class:`dr.continual.ReplayMixSampler` mixes by). An
            extended store's metadata is read into memory whatever ``memory_budget``.

    Raises:
        ConfigError: ``topk`` outside ``[1, k]``.
        StoreMismatchError: the source is not the dataset the store was built from.
        StoreDamagedError: (when an item is read) its store chunk is missing, unreadable or
            altered; the message names the chunk and the repair (``--resume --repair``).
    """

    def __init__(
        self,
        store: str | os.PathLike[str],
        source: Any = None,
        *,
        output_size: int | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
        p_original: float = 0.0,
        original_transform: Callable[[torch.Tensor], Any] | None = None,
        dense: bool | Literal["smooth", "zeros"] = False,
        seed: int = 0,
        memory_budget: int = 4 << 30,
        verify_source: Literal["sample", "all", "none"] = "sample",
        storage_options: Mapping[str, Any] | None = None,
        cache_chunks: int = 8,
        topk: int | None = None,
        segments: Sequence[int] | None = None,
        return_labels: bool = False,
    ) -> None:
        if not 0.0 <= p_original <= 1.0:
            raise ConfigError(f"p_original must be in [0, 1], got {p_original}")
        self.store = str(store)
        self.storage_options = dict(storage_options or {})
        opened = open_checked(self.store, source, storage_options=self.storage_options, verify_source=verify_source, segments=segments)
        reader, damaged = opened.reader, list[ChunkProblem]()
        self.header = opened.header
        self.source: Source = opened.source
        self.policy = Policy.from_dict(self.header.policy)
        self.output_size = output_size or self.header.output_size
        self.transform = transform or to_float
        self.p_original = float(p_original)
        self.original_transform = original_transform
        self.dense: Literal["smooth", "zeros"] | None = ("smooth" if dense is True else dense) or None
        self.seed = int(seed)
        self.return_labels = bool(return_labels)
        self.views = self.header.views
        self.num_classes = self.header.num_classes
        self.topk = served_topk(topk, self.header.topk, self.store)
        self.labels = opened.rows["source/labels"].astype(np.int64)
        self.skipped = opened.skipped
        #: source index of each dataset item (images skipped by the build, and images of the
        #: segments not selected, are never returned)
        self.indices = np.flatnonzero(~self.skipped & opened.served)
        #: the segment of each item (0 for a store that was never extended)
        self.segment_ids = opened.segment[self.indices]
        self._fields = [f"params/{f.name}" for f in self.header.param_fields]
        need = reader.nbytes([*self._fields, *ARRAYS])
        self.in_memory = need <= memory_budget or isinstance(reader, SegmentedStore)
        self._meta: dict[str, np.ndarray] | None = None
        if self.in_memory:
            self._meta, more = reader.load_checked([*self._fields, *ARRAYS])
            damaged += more
        else:
            log.info("store metadata (%d MB) exceeds memory_budget: reading by chunk", need >> 20)
        self.cache_chunks = cache_chunks
        self._reader: StoreReader | None = None
        self._reader_pid = -1
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._view_blocks: dict[int, dict[int, np.ndarray]] = {}
        #: damaged store chunks (found on load, or when a chunk is read): their rows are refused
        self.guard: ChunkGuard = opened.guard(self.store, damaged)

    # -- epochs and views --------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the views of ``epoch`` (shared with DataLoader workers, persistent or not)."""
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def view_index(self, index: int, epoch: int | None = None) -> int:
        """Stored view used for image ``index`` at ``epoch``: each view once per V epochs."""
        e = self.epoch if epoch is None else epoch
        block, pos = divmod(int(index), _VIEW_BLOCK)
        blocks = self._view_blocks.get(e)
        if blocks is None:  # keep two epochs' choices (4 bytes per image each), per process
            if len(self._view_blocks) >= 2:
                del self._view_blocks[next(iter(self._view_blocks))]
            blocks = self._view_blocks[e] = {}
        hit = blocks.get(block)
        if hit is None:  # one vectorised view_choice per block of images and epoch
            start = block * _VIEW_BLOCK
            hit = blocks[block] = view_choice(self.seed, np.arange(start, start + _VIEW_BLOCK), e, self.views).astype(np.int32)
        return int(hit[pos])

    # -- metadata -----------------------------------------------------------------------------
    def _chunk(self, c: int) -> dict[str, np.ndarray]:
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = StoreReader(self.store, storage_options=self.storage_options)
            self._reader_pid = os.getpid()
            self._cache.clear()
        hit = self._cache.get(c)
        if hit is not None:
            self._cache.move_to_end(c)
            return hit
        cs = self.header.chunk_size
        data, damaged = self._reader.load_checked([*self._fields, *ARRAYS], chunks=[c])
        if damaged:
            self.guard.add(damaged)
            self.guard.refuse_damaged(c * cs)
        self._cache[c] = data
        if len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return data

    def record(self, index: int, view: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Parameters (field -> ``[1, ...]``), top-k ids and probs of one stored view of source
        image ``index``."""
        self.guard.refuse_damaged(index)
        return self._record(index, view)

    def _record(self, index: int, view: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        if self._meta is not None:
            meta, row = self._meta, index
        else:
            meta, row = self._chunk(index // self.header.chunk_size), index % self.header.chunk_size
        params = {p.split("/", 1)[1]: meta[p][row, view][None] for p in self._fields}
        return params, meta["targets/ids"][row, view, : self.topk], meta["targets/probs"][row, view, : self.topk]

    # -- items --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.indices)

    def image(self, index: int) -> torch.Tensor:
        """The decoded source image ``index`` (a *source* index), uint8 ``[3,H,W]``."""
        return torch.from_numpy(self.source.read(index)[0]).permute(2, 0, 1)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Any, ...]:
        """The view of ``item`` at this epoch, replayed at ``output_size`` -- or, for an
        ``(item, size)`` pair (what :class:`dr.multiscale.MultiScaleBatchSampler` yields), at
        ``size``: the same stored view and target at any size. ``(view, target)``, or
        ``(view, target, label)`` with ``return_labels``."""
        item, size = item if isinstance(item, tuple) else (item, self.output_size)
        if not 0 <= item < len(self):
            raise IndexError(f"index {item} out of range for {len(self)} images")
        index = int(self.indices[item])
        out = self._item(index, size)
        if self.return_labels:
            return (*out, torch.tensor(int(self.labels[index]), dtype=torch.int64))
        return out

    def _item(self, index: int, size: int) -> tuple[Any, Any]:
        self.guard.refuse_damaged(index)  # never serve rows of a damaged chunk (StoreDamagedError)
        epoch = self.epoch
        img = self.image(index)
        if self.p_original and KeyedRNG(view_keys(self.seed, epoch, index, _TAG_COIN)).random()[0] < self.p_original:
            return self._original(index, epoch, img, size)
        params, ids, probs = self._record(index, self.view_index(index, epoch))  # the guard ran above
        images, partner_index = [img], None
        if "mix_kind" in params and int(params["mix_kind"][0]):
            images.append(self.image(int(params["mix_partner"][0]) - self.header.dataset.offset))  # partners are global indices
            partner_index = np.ones(1, dtype=np.int64)
        bank = images[0][None] if len(images) == 1 else images  # one image: no padded stack to build
        view = self.policy.replay(bank, params, np.zeros(1, dtype=np.int64), partner_index=partner_index, output_size=size)[0]
        return self.transform(view), self._target(ids, probs)

    def _original(self, index: int, epoch: int, img: torch.Tensor, size: int) -> tuple[Any, Any]:
        label = int(self.labels[index])
        k = self.topk
        ids = np.array([label] + [c for c in range(k) if c != label][: k - 1], dtype=np.int64)
        probs = np.zeros(k, dtype=np.float32)
        probs[0] = 1.0
        if self.original_transform is not None:
            return self.original_transform(img), self._target(ids, probs)
        # a fresh view from the store's policy: its own keyed stream (seed, epoch, index, tag)
        h, w = int(img.shape[1]), int(img.shape[2])
        rng = fresh_rng(self.seed, epoch, np.asarray([index]), TAG_ORIGINAL)
        one = np.asarray([index])
        fresh = self.policy.sample_views(
            rng, np.asarray([h]), np.asarray([w]), own=np.zeros(1, np.int64), pool=one, pool_sizes=np.asarray([[h, w]])
        )
        if "mix_kind" in fresh:
            fresh["mix_kind"][:] = 0  # an original sample is never mixed
        view = self.policy.replay(img[None], fresh, output_size=size)[0]
        return self.transform(view), self._target(ids, probs)

    def _target(self, ids: np.ndarray, probs: np.ndarray) -> Any:
        t_ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        t_probs = torch.from_numpy(np.asarray(probs, dtype=np.float32))
        if self.dense is None:
            return t_ids, t_probs
        rest: Literal["smooth", "drop"] = "smooth" if self.dense == "smooth" else "drop"
        return densify((t_ids[None], t_probs[None]), self.num_classes, rest)[0]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"], state["_reader_pid"], state["_cache"], state["_view_blocks"] = None, -1, OrderedDict(), {}
        return state


class ChunkAwareSampler(Sampler[int]):
    """An epoch permutation that reads the store chunk by chunk.

    Shuffles the chunk order, then the rows inside windows of ``window`` consecutive (shuffled)
    chunks, so a per-process cache of ``window`` chunks serves every read. Still a permutation
    of all indices. With ``num_replicas``/``rank`` it splits each epoch like
    ``DistributedSampler`` (every rank gets ``ceil(N / replicas)`` indices). Call
    :meth:`set_epoch` before each epoch.

    Args:
        dataset: the :class:`ReinforcedDataset` to sample.
        window: store chunks whose rows are shuffled together (and cached per process).
        shuffle: ``False`` gives the indices in order.
        seed: seeds the order, with the epoch.
        num_replicas: the number of DDP ranks sharing each epoch.
        rank: this process's rank, in ``[0, num_replicas)``.

    Raises:
        ConfigError: ``rank`` outside ``[0, num_replicas)``.
    """

    def __init__(
        self, dataset: ReinforcedDataset, *, window: int = 4, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank {rank} must be in [0, {num_replicas}): pass rank < num_replicas")
        self.n = len(dataset)
        self.chunk_size = dataset.header.chunk_size
        self.window, self.shuffle, self.seed = window, shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        n_chunks = -(-self.n // self.chunk_size)
        if not self.shuffle:
            return np.arange(self.n)
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks = rng.permutation(n_chunks)
        out = []
        for w in range(0, n_chunks, self.window):
            rows = np.concatenate(
                [np.arange(c * self.chunk_size, min((c + 1) * self.chunk_size, self.n)) for c in chunks[w : w + self.window]]
            )
            out.append(rng.permutation(rows))
        return np.concatenate(out)

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        per = -(-self.n // self.num_replicas)
        padded = np.concatenate([order, order[: per * self.num_replicas - self.n]])
        return iter(padded[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return -(-self.n // self.num_replicas)
