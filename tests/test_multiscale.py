"""Multi-scale, variable-batch replay: deterministic batches, a constant pixel budget, whole
same-size batches per DDP rank, a curriculum that grows, and the same stored view and soft
target at every size (ReinforcedDataset and DeviceReplay)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dr import MultiScaleBatchSampler, ReinforcedDataset
from dr.errors import ConfigError
from dr.multiscale import scale_sizes
from dr.replay import DeviceReplay


def _batches(s: MultiScaleBatchSampler, epoch: int) -> list[tuple[int, list[int]]]:
    return [(size, items.tolist()) for size, items in s.batches(epoch)]


def test_scale_sizes_are_multiples_in_range() -> None:
    assert scale_sizes(32) == (24, 32, 40)
    assert scale_sizes(64) == (48, 56, 64, 72, 80)
    assert scale_sizes(64, 0.75, 1.25, multiple_of=16) == (48, 64, 80)
    with pytest.raises(ConfigError, match="empty"):
        scale_sizes(32, 1.5, 1.0)


def test_batches_are_a_deterministic_permutation_with_a_constant_pixel_budget() -> None:
    s = MultiScaleBatchSampler(1000, base_size=64, base_batch=32, seed=3)
    first = _batches(s, 0)
    assert first == _batches(MultiScaleBatchSampler(1000, base_size=64, base_batch=32, seed=3), 0)  # same seed, same batches
    assert first != _batches(s, 1) and first != _batches(MultiScaleBatchSampler(1000, base_size=64, base_batch=32, seed=4), 0)
    items = [i for _, b in first for i in b]
    assert sorted(items) == list(range(1000))  # each item once per epoch
    assert {size for size, _ in first} == set(scale_sizes(64))  # every size drawn
    budget = 32 * 64 * 64
    for size, b in first[:-1]:  # the last may be short
        assert len(b) == s.batch_size(size)
        assert abs(len(b) * size * size - budget) <= size * size / 2 + 1  # rounding to whole images only
    assert s.batch_size(48) == 57 and s.batch_size(80) == 20 and s.lr_scale(80) == pytest.approx(20 / 32)
    assert len(s) == len(first) and s.pixels(0) == sum(len(b) * size * size for size, b in first)


def test_ddp_ranks_get_whole_same_size_batches_that_split_the_epoch() -> None:
    ranks = [MultiScaleBatchSampler(997, base_size=32, base_batch=16, seed=0, num_replicas=2, rank=r) for r in (0, 1)]
    a, b = (_batches(r, 5) for r in ranks)
    assert len(a) == len(b) and [s for s, _ in a] == [s for s, _ in b]  # lockstep: one size per step
    assert all(len(x) == len(y) for (_, x), (_, y) in zip(a, b))
    seen = [i for _, x in a for i in x] + [i for _, y in b for i in y]
    assert set(seen) == set(range(997)) and len(seen) == 998  # one item padded, as DistributedSampler does
    with pytest.raises(ConfigError, match="rank"):
        MultiScaleBatchSampler(10, 32, 4, num_replicas=2, rank=2)


def test_the_linear_curriculum_starts_small_and_ends_with_every_size() -> None:
    s = MultiScaleBatchSampler(2000, base_size=64, base_batch=32, curriculum="linear", epochs=5, seed=1)
    assert s.epoch_sizes(0) == (48,) and s.epoch_sizes(4) == scale_sizes(64)
    assert {size for size, _ in s.batches(0)} == {48}
    mean = [np.mean([size for size, b in s.batches(e) for _ in b]) for e in range(5)]
    assert mean == sorted(mean) and mean[0] == 48 and mean[-1] > 56  # per image: small sizes have bigger batches
    assert s.pixels(0) < s.pixels(4)  # the early epochs are the cheap ones
    with pytest.raises(ConfigError, match="epochs"):
        MultiScaleBatchSampler(10, 32, 4, curriculum="linear")


def test_the_fixed_batch_rule_keeps_the_steps_and_lets_pixels_follow_the_size() -> None:
    kw = dict(base_size=64, base_batch=32, curriculum="linear", epochs=4, seed=2)
    fixed, pixels = MultiScaleBatchSampler(1000, batch="fixed", **kw), MultiScaleBatchSampler(1000, **kw)
    for e in range(4):
        steps = list(fixed.batches(e))
        assert len(steps) == 32  # ceil(1000 / 32) whatever the sizes: the steps of fixed-size training
        assert all(len(b) == 32 for _, b in steps[:-1]) and len(steps[-1][1]) == 1000 - 31 * 32
        assert sorted(np.concatenate([b for _, b in steps]).tolist()) == list(range(1000))  # each item once
    assert {fixed.lr_scale(s) for s in scale_sizes(64)} == {1.0}
    assert len(list(pixels.batches(0))) < len(list(fixed.batches(0)))  # small sizes: bigger batches, fewer steps
    assert fixed.pixels(0) == 1000 * 48 * 48 and fixed.pixels(0) < fixed.pixels(3)
    with pytest.raises(ConfigError, match="'fixed'"):
        MultiScaleBatchSampler(10, 32, 4, batch="images")  # type: ignore[arg-type]


def test_the_same_view_and_target_at_every_size(cifar64_store: str, cifar64: Path) -> None:
    ds = ReinforcedDataset(cifar64_store, str(cifar64), transform=lambda v: v)
    ds.set_epoch(2)
    small, (ids_s, p_s) = ds[(5, 24)]
    large, (ids_l, p_l) = ds[(5, 40)]
    base, (ids_b, p_b) = ds[5]
    assert small.shape == (3, 24, 24) and large.shape == (3, 40, 40) and base.shape == (3, 32, 32)
    assert torch.equal(ids_s, ids_b) and torch.equal(ids_l, ids_b) and torch.equal(p_s, p_b) and torch.equal(p_l, p_b)
    # the same crop of the same image: downscaled, the large view matches the small one closely
    down = torch.nn.functional.interpolate(large[None].float(), size=24, mode="area")[0]
    assert (down - small.float()).abs().mean() < 12  # the same crop, resampled

    sampler = MultiScaleBatchSampler(ds, base_size=32, base_batch=8, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=0)
    shapes = {tuple(x.shape[1:]) for x, _ in loader}
    assert shapes <= {(3, 24, 24), (3, 32, 32), (3, 40, 40)} and len(shapes) > 1

    rep = DeviceReplay(cifar64_store, str(cifar64))
    items = np.arange(10)
    v32, (i32, p32) = rep.batch(items, 2)
    v40, (i40, p40) = rep.batch(items, 2, output_size=40)
    assert v32.shape[-1] == 32 and v40.shape[-1] == 40 and torch.equal(i32, i40) and torch.equal(p32, p40)
    f40, t40 = rep.fresh(items, 2, output_size=40)
    assert f40.shape[-1] == 40 and t40.shape == (10, 10)
