"""Multi-scale, variable-batch replay: one resolution per batch, about the same pixels in every
batch, and an optional curriculum that grows the resolution through training.

A stored view is its parameters in source pixels, so it replays at any output size: the same
view and the same soft target at 48 px or 80 px. :class:`MultiScaleBatchSampler` picks a
resolution for each training step and the batch size that keeps the step's pixel count near
``base_batch * base_size**2`` (after Mehta et al., "On the importance of multi-scale
variable-batch sampling", arXiv 2309.04502). It drives both training paths:

* ``ReinforcedDataset`` through a ``DataLoader(ds, batch_sampler=sampler)``: each batch is a
  list of ``(item, size)`` pairs, and the dataset replays ``item`` at ``size``;
* ``DeviceReplay``: ``for size, items in sampler.batches(epoch): replay.batch(items, epoch,
  output_size=size)``.

Batch rule ``batch="pixels"`` (the default) is that paper's variable batch. ``batch="fixed"``
keeps ``base_batch`` at every size, so a small size is a cheaper step rather than a bigger
batch (progressive resizing): the epoch keeps its number of optimizer steps, which matters in
short trainings.

Learning rate: a step's gradient averages over its batch, so a smaller batch is a noisier
step. The sampler's :meth:`~MultiScaleBatchSampler.lr_scale` is the linear scaling rule
(``batch / base_batch``); multiply the scheduled learning rate by it per step (the examples do)
or keep the per-sample rate constant some other way. BatchNorm statistics adapt per batch and
need nothing; a ViT needs position embeddings that interpolate to the grid of each size (timm:
``dynamic_img_size=True``) and sizes that are multiples of its patch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence, Sized
from typing import Literal

import numpy as np
from torch.utils.data import Sampler

from dr.errors import ConfigError, bounded_int
from dr.limits import MAX_OUTPUT_SIZE, MAX_SEED

__all__ = ["MAX_SIZE", "MultiScaleBatchSampler", "scale_sizes"]

MAX_SIZE = MAX_OUTPUT_SIZE
"""The largest resolution a view replays at: the store's output-size limit (:data:`dr.limits.MAX_OUTPUT_SIZE`)."""


def scale_sizes(base: int, low: float = 0.75, high: float = 1.25, multiple_of: int = 8) -> tuple[int, ...]:
    """The resolutions from ``low * base`` to ``high * base`` in steps of ``multiple_of``
    (what a stride-``multiple_of`` network or a patch-``multiple_of`` ViT accepts).

    Args:
        base: the base resolution (the store's output size).
        low: the smallest size as a fraction of ``base``.
        high: the largest size as a fraction of ``base``.
        multiple_of: every size is a multiple of this.

    Returns:
        The sizes, ascending; ``base`` itself when it is a multiple of ``multiple_of``. At most
        ``8192 // multiple_of`` of them: none is above 8192.

    Raises:
        ConfigError: ``base`` not an int in ``[1, 8192]`` (:data:`MAX_SIZE`, the store's
            output-size limit); ``low``, ``high`` not with ``0 < low <= high``; ``high * base``
            above 8192; ``multiple_of`` not an int ``>= 1``; an empty range.
    """
    base = bounded_int("base", base, 1, MAX_SIZE, bound=f"in [1, {MAX_SIZE}] px (the store's output-size limit)")
    multiple_of = bounded_int("multiple_of", multiple_of, 1)
    real = isinstance(low, numbers.Real) and isinstance(high, numbers.Real) and not isinstance(low, bool) and not isinstance(high, bool)
    if not real or not 0 < low <= high:
        raise ConfigError(f"scale range low={low!r}..high={high!r} is empty: use 0 < low <= high")
    if high * base > MAX_SIZE * (1 + 1e-12):  # (the tolerance: high=MAX_SIZE / base, rounded)
        raise ConfigError(
            f"high={high!r}: sizes up to {high * base:g} px exceed the {MAX_SIZE} px limit of a view: use high <= {MAX_SIZE / base:g} for base={base}"
        )
    first = max(multiple_of, math.ceil(low * base / multiple_of) * multiple_of)
    last = min(math.floor(high * base / multiple_of) * multiple_of, MAX_SIZE)
    sizes = tuple(range(first, last + 1, multiple_of))
    if not sizes:
        raise ConfigError(f"no multiple of {multiple_of} lies in {low * base:g}..{high * base:g} px: widen the range or lower multiple_of")
    return sizes


class MultiScaleBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(item, size)`` pairs: one resolution per batch, batch size scaled so each
    batch holds about ``base_batch * base_size**2`` pixels.

    Every epoch is a permutation of the items (seeded by ``seed`` and the epoch), cut into
    steps; each step draws its size (uniformly from the sizes the epoch allows) and takes
    ``batch_size(size) * num_replicas`` items, which it splits into one batch per rank -- so
    every rank gets whole batches of the same size at the same step, as DDP needs. A function
    of ``(seed, epoch)`` only: the same batches on every machine, whatever the worker count.

    With ``batch="fixed"`` every step takes ``base_batch`` items whatever its size: pixels per
    step follow the size, and the number of steps per epoch stays that of fixed-size training.

    Curriculum ``"linear"``: at epoch ``e`` of ``epochs`` only sizes up to
    ``min + (max - min) * e / (epochs - 1)`` are drawn (the smallest always), so training
    starts small (cheap) and ends using every size.

    Args:
        data: the dataset (or its length).
        base_size: the resolution whose batch is ``base_batch``.
        base_batch: the batch size at ``base_size``.
        sizes: the resolutions to draw from (default :func:`scale_sizes` of ``base_size``, up
            to 8192).
        curriculum: ``None`` (every size every epoch) or ``"linear"``.
        epochs: the training length (required by a curriculum).
        batch: ``"pixels"`` (scale the batch to keep pixels per step) or ``"fixed"`` (keep
            ``base_batch`` at every size).
        shuffle: permute the items every epoch (else in order).
        seed: the seed of the permutation and the size draws.
        drop_last: drop a last step smaller than its batch size.
        num_replicas: DDP world size.
        rank: this process's rank.
        max_batch: the largest batch any size may get (default ``4 * base_batch``).

    Raises:
        ConfigError: an argument outside its bound, named with its value and the bound. Ints
            are ints (not bools, not floats). The bounds: ``data`` has at least 1 item;
            ``base_size`` and every one of ``sizes`` in ``[1, 8192]`` px (:data:`MAX_SIZE`, the
            store's output-size limit), ``sizes`` not empty; ``base_batch >= 1``; ``max_batch
            >= base_batch``; ``epochs >= 1`` (required by a curriculum); ``seed`` in ``[0,
            2**63 - 1]``; ``num_replicas >= 1``; ``rank`` in ``[0, num_replicas)``;
            ``curriculum`` None or ``"linear"``; ``batch`` ``"pixels"`` or ``"fixed"``.
    """

    def __init__(
        self,
        data: Sized | int,
        base_size: int,
        base_batch: int,
        sizes: Sequence[int] | None = None,
        *,
        curriculum: Literal["linear"] | None = None,
        epochs: int | None = None,
        batch: Literal["pixels", "fixed"] = "pixels",
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
        max_batch: int | None = None,
    ) -> None:
        if isinstance(data, Sized):
            self.n = len(data)
            if self.n < 1:
                raise ConfigError(f"data has {self.n} items: a sampler needs at least 1 item")
        else:
            self.n = bounded_int("data", data, 1, bound=">= 1 (the number of items), or a dataset of at least 1 item")
        px = f"in [1, {MAX_SIZE}] px (the store's output-size limit)"
        self.base_size = bounded_int("base_size", base_size, 1, MAX_SIZE, bound=px)
        self.base_batch = bounded_int("base_batch", base_batch, 1)
        if sizes is None:  # scale_sizes' default range, capped at MAX_SIZE
            given = list(scale_sizes(self.base_size, high=min(1.25, MAX_SIZE / self.base_size)))
        else:
            given = [] if isinstance(sizes, str | bytes | numbers.Number) else list(sizes)
        if not given:
            raise ConfigError(f"sizes={sizes!r}: give a list of at least one size {px} (or None for scale_sizes(base_size))")
        self.sizes = tuple(sorted({bounded_int(f"sizes[{i}]", s, 1, MAX_SIZE, bound=px) for i, s in enumerate(given)}))
        if curriculum not in (None, "linear"):
            raise ConfigError(f"curriculum {curriculum!r}: use None or 'linear'")
        if batch not in ("pixels", "fixed"):
            raise ConfigError(f"batch {batch!r}: use 'pixels' (constant pixels per step) or 'fixed' (constant batch size)")
        if curriculum and epochs is None:
            raise ConfigError("a curriculum needs the training length: pass epochs=N")
        self.epochs = None if epochs is None else bounded_int("epochs", epochs, 1)
        self.seed = bounded_int("seed", seed, 0, MAX_SEED, bound="in [0, 2**63 - 1]")
        self.num_replicas = bounded_int("num_replicas", num_replicas, 1)
        self.rank = bounded_int(
            "rank", rank, 0, self.num_replicas - 1, bound=f"in [0, {self.num_replicas}) (num_replicas={self.num_replicas})"
        )
        max_batch = 4 * self.base_batch if max_batch is None else max_batch
        self.max_batch = bounded_int("max_batch", max_batch, self.base_batch, bound=f">= base_batch ({self.base_batch})")
        self.curriculum, self.batch = curriculum, batch
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s permutation and sizes (call it before each epoch, as with
        ``DistributedSampler``; ``ReinforcedDataset.set_epoch`` too).

        Raises:
            ConfigError: ``epoch`` not an int ``>= 0``.
        """
        self.epoch = bounded_int("epoch", epoch, 0)

    def batch_size(self, size: int) -> int:
        """The per-rank batch at ``size``: ``base_batch * (base_size / size)**2``, rounded, in
        ``[1, max_batch]`` (``base_batch`` with ``batch="fixed"``)."""
        if self.batch == "fixed":
            return max(1, self.base_batch)
        # at least 1 whatever the attributes were set to: batches() always moves on
        return max(1, int(min(self.max_batch, round(self.base_batch * (self.base_size / size) ** 2))))

    def lr_scale(self, size: int) -> float:
        """The linear scaling rule's learning-rate factor for a batch at ``size`` (1 with
        ``batch="fixed"``)."""
        return self.batch_size(size) / self.base_batch

    def epoch_sizes(self, epoch: int | None = None) -> tuple[int, ...]:
        """The sizes ``epoch`` draws from (the curriculum's window, or all)."""
        e = self.epoch if epoch is None else int(epoch)
        if self.curriculum is None or self.epochs is None or self.epochs <= 1:
            return self.sizes
        cap = self.sizes[0] + (self.sizes[-1] - self.sizes[0]) * min(1.0, e / (self.epochs - 1))
        return tuple(s for s in self.sizes if s <= cap + 1e-9) or self.sizes[:1]

    def batches(self, epoch: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """This rank's batches of ``epoch``: ``(size, items)`` with items an int64 array."""
        e = self.epoch if epoch is None else bounded_int("epoch", epoch, 0)
        rng = np.random.default_rng([self.seed, e, 0x5CA1E])
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        allowed = self.epoch_sizes(e)
        start = 0
        while start < self.n:
            size = int(allowed[int(rng.integers(len(allowed)))])
            per = self.batch_size(size)
            step = order[start : start + per * self.num_replicas]
            start += per * self.num_replicas
            if len(step) < per * self.num_replicas:
                if self.drop_last:
                    return
                # a short last step: padded from the epoch's start to a multiple of the ranks
                step = np.concatenate([step, order[: (-len(step)) % self.num_replicas]])
            mine = step[self.rank :: self.num_replicas]
            if len(mine):
                yield size, mine.astype(np.int64)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for size, items in self.batches():
            yield [(int(i), size) for i in items]

    def __len__(self) -> int:
        return sum(1 for _ in self.batches())

    def pixels(self, epoch: int | None = None) -> int:
        """Pixels this rank replays in ``epoch`` (the sum of ``size**2`` over its items): a
        conv net's FLOPs scale with it."""
        return int(sum(len(items) * size * size for size, items in self.batches(epoch)))
