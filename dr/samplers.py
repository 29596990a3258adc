"""Samplers for the readers: thin objects over the pure orders of :mod:`dr.orders`.

* :class:`ChunkAwareSampler` -- an epoch's permutation that reads the store chunk by chunk;
* :class:`RehearsalSampler` -- continual training: a share of each epoch from the new segments
  of a grown store, the rest rehearsed from the old ones.

(:class:`dr.multiscale.MultiScaleBatchSampler` batches at several resolutions.)
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from dr.errors import ConfigError, bounded_int
from dr.limits import MAX_SEED
from dr.orders import chunk_aware_order, cycled, ddp_share

__all__ = ["MAX_DRAWS_PER_ITEM", "ChunkAwareSampler", "RehearsalSampler"]

MAX_DRAWS_PER_ITEM = 100
"""An epoch of :class:`RehearsalSampler` draws at most this many times the items of the pools it
draws from (100 passes over them): more is a typo, and would take hours to draw."""


class ChunkAwareSampler(Sampler[int]):
    """An epoch permutation that reads the store chunk by chunk.

    Shuffles the chunk order, then the items inside windows of ``window`` consecutive (shuffled)
    chunks, so a per-process cache of ``window`` chunks serves every read
    (:func:`dr.orders.chunk_aware_order`). Still a permutation of all items. With
    ``num_replicas``/``rank`` it splits each epoch like ``DistributedSampler`` (every rank gets
    ``ceil(N / replicas)`` items). Call :meth:`set_epoch` before each epoch.

    Args:
        dataset: the reader to sample (:class:`dr.ReinforcedDataset` or any object with
            ``indices`` and ``chunk_of``), or the store chunk of each item.
        window: store chunks whose items are shuffled together (and cached per process).
        shuffle: ``False`` gives the items in order.
        seed: seeds the order, with the epoch.
        num_replicas: the number of DDP ranks sharing each epoch.
        rank: this process's rank, in ``[0, num_replicas)``.

    Raises:
        ConfigError: an argument outside its bound (named with its value and the bound).
    """

    def __init__(self, dataset: Any, *, window: int = 4, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        if hasattr(dataset, "chunk_of") and hasattr(dataset, "indices"):
            chunks = np.asarray(dataset.chunk_of)[np.asarray(dataset.indices)]
        else:
            chunks = np.asarray(dataset)
        if chunks.ndim != 1 or not len(chunks) or not np.issubdtype(chunks.dtype, np.integer):
            raise ConfigError("dataset: give a reader (ReinforcedDataset, DeviceReplay) or a non-empty 1-D array of chunk ids per item")
        self.chunks = chunks.astype(np.int64)
        self.n = len(self.chunks)
        self.window = bounded_int("window", window, 1)
        self.shuffle = bool(shuffle)
        self.seed = bounded_int("seed", seed, 0, MAX_SEED)
        self.num_replicas = bounded_int("num_replicas", num_replicas, 1)
        self.rank = bounded_int(
            "rank", rank, 0, self.num_replicas - 1, bound=f"in [0, {self.num_replicas}) (num_replicas={self.num_replicas})"
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s order (call it before each epoch)."""
        self.epoch = bounded_int("epoch", epoch, 0)

    def __iter__(self) -> Iterator[int]:
        order = chunk_aware_order(self.chunks, self.window, self.seed, self.epoch, self.shuffle)
        return iter(ddp_share(order, self.num_replicas, self.rank).tolist())

    def __len__(self) -> int:
        return -(-self.n // self.num_replicas)


class RehearsalSampler(Sampler[int]):
    """Each epoch, ``num_samples`` items: ``new_fraction`` of them from the new segments, the
    rest rehearsed from the old ones, shuffled together (continual training on a grown store).

    Within each pool (new, old) items are drawn through a sequence of seeded permutations, so
    every item of the pool is used once before any is used again, across epoch boundaries.
    The order is a pure function of ``(seed, epoch)``; with ``num_replicas``/``rank`` each
    epoch is split like ``DistributedSampler`` (every rank gets ``ceil(num_samples /
    num_replicas)`` items).

    Args:
        segments: the segment of every item -- a :class:`dr.ReinforcedDataset` or
            :class:`dr.replay.DeviceReplay` (their ``segment_ids``), or the array itself.
        new: the segments that are new (default: the last one).
        new_fraction: the share of each epoch drawn from the new segments, in ``(0, 1]``
            (``1``: no rehearsal). The rest comes from the other segments.
        num_samples: items per epoch (default: the new items divided by ``new_fraction``, so
            each new item is seen once per epoch).
        seed: seeds the draws and the order.
        num_replicas: the number of DDP ranks sharing each epoch.
        rank: this process's rank, in ``[0, num_replicas)``.

    Raises:
        ConfigError: an argument outside its bound, named with its value and the bound. Ints
            are ints (not bools, not floats). The bounds: ``segments`` a non-empty 1-D array of
            int segment ids; ``new`` a list of segments that some item has; ``new_fraction``
            in ``(0, 1]``; no new items, or (with rehearsal) no old ones; ``num_samples`` (given or
            the default) in ``[1, 100 x the items of the pools it draws from]``
            (:data:`MAX_DRAWS_PER_ITEM`; the pools: the new items, plus the old ones when
            ``new_fraction < 1``); ``seed`` in ``[0, 2**63 - 1]``; ``num_replicas >= 1``;
            ``rank`` in ``[0, num_replicas)``.
    """

    def __init__(
        self,
        segments: Any,
        *,
        new: Sequence[int] | None = None,
        new_fraction: float = 0.5,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        ids = np.asarray(getattr(segments, "segment_ids", segments))
        if ids.ndim != 1 or not len(ids) or not np.issubdtype(ids.dtype, np.integer):
            raise ConfigError(
                f"segments: an array of shape {ids.shape}, dtype {ids.dtype}; give a non-empty 1-D array of int segment ids, "
                "one per item (or the dataset)"
            )
        ids = ids.astype(np.int64)
        real = isinstance(new_fraction, numbers.Real) and not isinstance(new_fraction, bool)
        if not real or not 0.0 < new_fraction <= 1.0:
            raise ConfigError(f"new_fraction={new_fraction}: use a share in (0, 1] (1 = the new segments only, no rehearsal)")
        self.seed = bounded_int("seed", seed, 0, MAX_SEED, bound="in [0, 2**63 - 1]")
        self.num_replicas = bounded_int("num_replicas", num_replicas, 1)
        self.rank = bounded_int(
            "rank", rank, 0, self.num_replicas - 1, bound=f"in [0, {self.num_replicas}) (num_replicas={self.num_replicas})"
        )
        present = sorted(set(ids.tolist()))
        if new is None:
            chosen = [present[-1]]
        else:
            if isinstance(new, str | bytes | numbers.Number):
                raise ConfigError(f"new={new!r}: give a list of segments, e.g. new=[{new!r}]")
            chosen = sorted({bounded_int("new", s, 0) for s in new})
            missing = [s for s in chosen if s not in present]
            if not chosen:
                raise ConfigError(f"new={list(new)!r}: name at least one segment (the items' segments: {present})")
            if missing:
                which = f"segment {missing[0]} is" if len(missing) == 1 else f"segments {', '.join(map(str, missing))} are"
                raise ConfigError(f"new={list(new)!r}: {which} not among the items' segments {present}: name segments that exist")
        is_new = np.isin(ids, chosen)
        self.new_items, self.old_items = np.flatnonzero(is_new), np.flatnonzero(~is_new)
        if new_fraction < 1.0 and not len(self.old_items):
            raise ConfigError(f"new_fraction={new_fraction} rehearses old segments, but every item is in {chosen}: use new_fraction=1")
        self.new_fraction = float(new_fraction)
        pooled = len(self.new_items) + (len(self.old_items) if self.new_fraction < 1.0 else 0)
        most = MAX_DRAWS_PER_ITEM * pooled
        bound = f"in [1, {most:,}] ({MAX_DRAWS_PER_ITEM} x the {pooled:,} items the pools hold)"
        if num_samples is None:  # each new item once per epoch
            default = len(self.new_items) / self.new_fraction
            if default > most:
                raise ConfigError(
                    f"num_samples (default: the {len(self.new_items):,} new items / new_fraction={new_fraction} = {default:,.0f}) "
                    f"is above {most:,} ({MAX_DRAWS_PER_ITEM} x the {pooled:,} items the pools hold): raise new_fraction or pass num_samples"
                )
            num_samples = int(round(default))
        self.num_samples = bounded_int("num_samples", num_samples, 1, most, bound=bound)
        self.n_new = int(round(self.num_samples * self.new_fraction))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the draws of ``epoch`` (call before each epoch).

        Raises:
            ConfigError: ``epoch`` not an int ``>= 0``.
        """
        self.epoch = bounded_int("epoch", epoch, 0)

    def epoch_items(self) -> np.ndarray:
        """This epoch's items for every rank together, in order (before the DDP split)."""
        e, s = self.epoch, self.seed
        drawn = np.concatenate(
            [cycled(self.new_items, self.n_new, e, s, 1), cycled(self.old_items, self.num_samples - self.n_new, e, s, 2)]
        )
        return drawn[np.random.default_rng([self.seed, 3, self.epoch]).permutation(len(drawn))]

    def __iter__(self) -> Iterator[int]:
        return iter(ddp_share(self.epoch_items(), self.num_replicas, self.rank).tolist())

    def __len__(self) -> int:
        return -(-self.num_samples // self.num_replicas)
