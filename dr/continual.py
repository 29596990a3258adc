"""Continual training on a store that grows: replay old segments while learning the new one.

After ``dr-build reinforce NEW --extend STORE`` a model trained on the old segments continues
from its checkpoint instead of starting over (TiC-CLIP's recipe: warm start + replay of old
data). :class:`ReplayMixSampler` gives each epoch a fixed share of items from the new
segments and the rest from the old ones, every item of a pool once per pass over that pool::

    ds = ReinforcedDataset("store.zarr")                      # every segment
    sampler = ReplayMixSampler(ds, new_fraction=0.5)          # the last segment is new
    loader = DataLoader(ds, batch_size=256, sampler=sampler)
    for epoch in range(epochs):
        ds.set_epoch(epoch); sampler.set_epoch(epoch)
        ...

It yields dataset item positions, so it drives :class:`dr.ReinforcedDataset` (as a
``DataLoader`` sampler) and :class:`dr.replay.DeviceReplay` (``replay.batch(items, epoch)``)
alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from dr.errors import ConfigError

__all__ = ["ReplayMixSampler"]


class ReplayMixSampler(Sampler[int]):
    """Each epoch, ``num_samples`` items: ``new_fraction`` of them from the new segments, the
    rest replayed from the old ones, shuffled together.

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
            (``1``: no replay). The rest comes from the other segments.
        num_samples: items per epoch (default: the new items divided by ``new_fraction``, so
            each new item is seen once per epoch).
        seed: seeds the draws and the order.
        num_replicas: the number of DDP ranks sharing each epoch.
        rank: this process's rank, in ``[0, num_replicas)``.

    Raises:
        ConfigError: a fraction outside ``(0, 1]``, no new or (with replay) no old items, a
            rank outside ``[0, num_replicas)``.
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
        ids = np.asarray(getattr(segments, "segment_ids", segments), dtype=np.int64).reshape(-1)
        if not 0.0 < new_fraction <= 1.0:
            raise ConfigError(f"new_fraction={new_fraction}: use a share in (0, 1] (1 = the new segments only, no replay)")
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank {rank} must be in [0, {num_replicas}): pass rank < num_replicas")
        chosen = [int(ids.max())] if new is None and len(ids) else sorted({int(s) for s in (new or [])})
        is_new = np.isin(ids, chosen)
        self.new_items, self.old_items = np.flatnonzero(is_new), np.flatnonzero(~is_new)
        if not len(self.new_items):
            raise ConfigError(f"no items in the new segments {chosen} (the items' segments: {sorted(set(ids.tolist()))})")
        if new_fraction < 1.0 and not len(self.old_items):
            raise ConfigError(f"new_fraction={new_fraction} replays old segments, but every item is in {chosen}: use new_fraction=1")
        self.new_fraction = float(new_fraction)
        self.num_samples = int(num_samples) if num_samples is not None else int(round(len(self.new_items) / self.new_fraction))
        if self.num_samples < 1:
            raise ConfigError(f"num_samples={num_samples}: draw at least one item per epoch")
        self.n_new = int(round(self.num_samples * self.new_fraction))
        self.seed, self.num_replicas, self.rank = int(seed), int(num_replicas), int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the draws of ``epoch`` (call before each epoch)."""
        self.epoch = int(epoch)

    def _draw(self, pool: np.ndarray, per_epoch: int, tag: int) -> np.ndarray:
        """Items ``[epoch * per_epoch, (epoch + 1) * per_epoch)`` of the endless sequence of
        seeded permutations of ``pool`` (one permutation per pass)."""
        if per_epoch == 0:
            return pool[:0]
        start, stop = self.epoch * per_epoch, (self.epoch + 1) * per_epoch
        n = len(pool)
        out = [
            np.random.default_rng([self.seed, tag, p]).permutation(pool)[max(start - p * n, 0) : min(stop - p * n, n)]
            for p in range(start // n, -(-stop // n))
        ]
        return np.concatenate(out)

    def epoch_items(self) -> np.ndarray:
        """This epoch's items for every rank together, in order (before the DDP split)."""
        drawn = np.concatenate([self._draw(self.new_items, self.n_new, 1), self._draw(self.old_items, self.num_samples - self.n_new, 2)])
        return drawn[np.random.default_rng([self.seed, 3, self.epoch]).permutation(len(drawn))]

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_items()
        per = len(self)
        padded = np.concatenate([order, order[: per * self.num_replicas - len(order)]])
        return iter(padded[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return -(-self.num_samples // self.num_replicas)
