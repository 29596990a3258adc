"""DeviceReplay gives the same images and targets as ReinforcedDataset, for every preset."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import build_in_process as _build_in_process

from dr import ReinforcedDataset
from dr.errors import StoreError
from dr.policy import list_policies
from dr.replay import DeviceReplay


@pytest.mark.parametrize("policy", list(list_policies()))
def test_device_replay_equals_dataset(policy: str, cifar64: Path, tiny_teacher: str, tmp_path: Path) -> None:
    store = _build_in_process(cifar64, tiny_teacher, policy, tmp_path / "s.zarr")
    ds = ReinforcedDataset(store, cifar64, transform=lambda v: v, verify_source="none")
    rep = DeviceReplay(store, cifar64)
    items = np.random.default_rng(0).permutation(64)[:24]
    for epoch in (0, 4):
        ds.set_epoch(epoch)
        views, (ids, probs) = rep.batch(items, epoch)
        for j, i in enumerate(items):
            img, (tid, tp) = ds[int(i)]
            assert torch.equal(views[j], img), (policy, epoch, i)
            assert torch.equal(ids[j], tid) and torch.equal(probs[j], tp)


def test_fresh_views_have_hard_mixed_targets(cifar64: Path, tiny_teacher: str, tmp_path: Path) -> None:
    store = _build_in_process(cifar64, tiny_teacher, "cifar+mix+ra/re", tmp_path / "m.zarr")
    rep = DeviceReplay(store, cifar64)
    views, target = rep.fresh(np.arange(64), epoch=0)
    assert views.shape == (64, 3, 32, 32) and target.shape == (64, 10)
    torch.testing.assert_close(target.sum(1), torch.ones(64))
    assert ((target > 0).sum(1) <= 2).all() and ((target > 0).sum(1) == 2).any()
    again, _ = rep.fresh(np.arange(64), epoch=0)
    other, _ = rep.fresh(np.arange(64), epoch=1)
    assert torch.equal(views, again) and not torch.equal(views, other)
    # without a store (plain baselines before any teacher exists): the same views and targets
    alone = DeviceReplay.fresh_only(cifar64, rep.policy)
    assert len(alone) == len(rep) and alone.num_classes == rep.num_classes
    for epoch in (0, 3):
        (v1, t1), (v2, t2) = rep.fresh(np.arange(64), epoch), alone.fresh(np.arange(64), epoch)
        assert torch.equal(v1, v2) and torch.equal(t1, t2)
    with pytest.raises(StoreError, match="no store"):
        alone.batch(np.arange(4), 0)


def test_a_smaller_k_is_served_from_a_larger_store(cifar64_store: str, cifar64: Path) -> None:
    """k' <= k at read time: the first k' (largest) entries, the same in both readers."""
    from dr.errors import ConfigError

    full = DeviceReplay(cifar64_store, cifar64, verify_source="none")
    cut = DeviceReplay(cifar64_store, cifar64, verify_source="none", topk=1)
    items = np.arange(16)
    (_, (ids3, p3)), (_, (ids1, p1)) = full.batch(items, 2), cut.batch(items, 2)
    assert ids3.shape == (16, 3) and ids1.shape == (16, 1)
    assert torch.equal(ids1, ids3[:, :1]) and torch.equal(p1, p3[:, :1])
    ds = ReinforcedDataset(cifar64_store, cifar64, verify_source="none", topk=2)
    ds.set_epoch(2)
    ids, probs = ds[5][1]
    assert torch.equal(ids, ids3[5, :2]) and torch.equal(probs, p3[5, :2])
    with pytest.raises(ConfigError, match="topk=4: store .* holds the top 3 classes per view"):
        DeviceReplay(cifar64_store, cifar64, topk=4)
