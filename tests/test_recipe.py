"""The recipe's parts: the crop range as a store option, the hard-label term without plumbing
(labels from both readers, one epoch API, the schedule), the target temperature."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from helpers import build_in_process

from dr import ReinforcedDataset
from dr.errors import ConfigError, HeaderSealError, PolicyError
from dr.loss import HardLabelSchedule, densify, soft_cross_entropy
from dr.policy import get_policy
from dr.replay import DeviceReplay


# -- the crop range ----------------------------------------------------------------------------
def test_crop_scale_sets_the_rrc_range_and_nothing_else() -> None:
    base, low = get_policy("rrc", 64), get_policy("rrc", 64, crop_scale=0.35)
    assert low.crop.scale == (0.35, 1.0) and get_policy("rrc+ra/re", 64, crop_scale=(0.25, 0.9)).crop.scale == (0.25, 0.9)
    assert base.to_dict() | {"crop": None} == low.to_dict() | {"crop": None}  # only the crop differs
    assert get_policy("rrc", 64, crop_scale=0.08) == base  # the preset's own range is the preset
    sizes = np.full((200, 2), 64)
    for policy, least in ((base, 0.08), (low, 0.35)):
        boxes = policy.sample_unit(0, 0, sizes, 8)["crop_box"].reshape(-1, 4).astype(np.int64)
        area = boxes[:, 2] * boxes[:, 3] / 64**2
        assert area.min() >= least * 0.9  # rounding of the box sides
        assert (area < 0.3).any() == (least < 0.3)
    with pytest.raises(PolicyError, match="no scale"):
        get_policy("cifar", crop_scale=0.5)
    with pytest.raises(PolicyError, match="0 < low <= high <= 1"):
        get_policy("rrc", crop_scale=1.5)


def test_a_store_built_with_a_crop_range_seals_it_and_replays_it(cifar64: Path, tiny_teacher: str, tmp_path: Path) -> None:
    store = build_in_process(cifar64, tiny_teacher, "rrc", tmp_path / "s.zarr", crop_scale=0.5)
    attrs = dict(zarr.open_group(store, mode="r").attrs)
    assert attrs["policy"]["crop"]["scale"] == [0.5, 1.0] and attrs["build"]["config"]["crop_scale"] == 0.5
    ds = ReinforcedDataset(store, cifar64, transform=lambda v: v, verify_source="none", return_labels=True)
    rep = DeviceReplay(store, cifar64, verify_source="none")
    items = np.arange(0, 64, 5)
    views, (ids, probs), labels = rep.batch(items, 3, return_labels=True)
    ds.set_epoch(3)
    for j, i in enumerate(items):
        img, (tid, tp), label = ds[int(i)]
        assert torch.equal(views[j], img) and torch.equal(ids[j], tid) and torch.equal(probs[j], tp) and int(label) == int(labels[j])
    # the range is sealed: a store whose header claims another range is refused by name
    g = zarr.open_group(store, mode="r+")
    edited = json.loads(json.dumps(attrs))
    edited["policy"]["crop"]["scale"] = [0.08, 1.0]
    g.update_attributes({"policy": edited["policy"]})
    with pytest.raises(HeaderSealError, match="policy"):
        ReinforcedDataset(store, cifar64, verify_source="none")


def test_cli_crop_scale_is_refused_for_a_policy_without_a_scale(cifar64: Path, tiny_teacher: str, tmp_path: Path) -> None:
    from dr.cli.main import cli

    out = CliRunner().invoke(
        cli,
        ["reinforce", str(cifar64), "--policy", "cifar", "--crop-scale", "0.5", "--teacher", tiny_teacher, "--out", str(tmp_path / "x")],
    )
    assert out.exit_code != 0 and "no scale" in out.output and not (tmp_path / "x").exists()
    bad = CliRunner().invoke(cli, ["reinforce", str(cifar64), "--crop-scale", "0", "--teacher", tiny_teacher, "--out", str(tmp_path / "y")])
    assert bad.exit_code == 2 and "--crop-scale" in bad.output


# -- labels and epochs from both readers ----------------------------------------------------------
def test_both_readers_give_the_label_indexed_like_the_batch(cifar64_store: str, cifar64: Path) -> None:
    rep = DeviceReplay(cifar64_store, cifar64, verify_source="none")
    ds = ReinforcedDataset(cifar64_store, cifar64, verify_source="none", return_labels=True)
    items = np.array([5, 0, 63, 17])
    want = torch.from_numpy(ds.labels[ds.indices[items]])
    assert torch.equal(rep.labels_of(items), want)
    assert [int(ds[int(i)][2]) for i in items] == want.tolist()
    # one epoch API: set_epoch picks the views of batch() and fresh() that name no epoch
    rep.set_epoch(2)
    (v_set, t_set), (v_named, t_named) = rep.batch(items), rep.batch(items, 2)
    assert torch.equal(v_set, v_named) and torch.equal(t_set[0], t_named[0])
    assert not torch.equal(v_set, rep.batch(items, 1)[0])
    assert torch.equal(rep.fresh(items)[0], rep.fresh(items, 2)[0])
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    images, (ids, probs), labels = next(iter(loader))
    assert labels.dtype == torch.int64 and labels.shape == (8,) and ids.shape == (8, 3)
    loss = soft_cross_entropy(torch.zeros(8, 10, requires_grad=True), (ids, probs), labels=labels, hard_weight=0.5)
    assert math.isfinite(float(loss.detach()))


# -- the loss: schedule, temperature -------------------------------------------------------------
def test_hard_label_schedule_shapes() -> None:
    lin, cos, const = HardLabelSchedule(0.5, 0.0, "linear"), HardLabelSchedule(1.0, 0.0, "cosine"), HardLabelSchedule(0.3, shape="constant")
    assert [lin(t) for t in (0, 0.5, 1, 2)] == [0.5, 0.25, 0.0, 0.0]
    assert cos(0) == 1.0 and cos(1) == 0.0 and abs(cos(0.5) - 0.5) < 1e-12 and cos(0.25) > 0.75
    assert const(0) == const(1) == 0.3 and lin.at(0, 10) == 0.5 and lin.at(9, 10) == 0.0
    assert (lin.describe(), const.describe()) == ("0.5->0 linear", "0.3")
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        HardLabelSchedule(1.5)
    with pytest.raises(ConfigError, match="shape"):
        HardLabelSchedule(0.5, shape="step")  # type: ignore[arg-type]


def test_hard_weight_without_labels_is_refused() -> None:
    logits, target = torch.zeros(2, 5), (torch.tensor([[0, 1], [2, 3]]), torch.tensor([[0.6, 0.3], [0.5, 0.4]]))
    with pytest.raises(ConfigError, match="labels="):
        soft_cross_entropy(logits, target, hard_weight=0.5)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        soft_cross_entropy(logits, target, labels=torch.tensor([0, 2]), hard_weight=1.5)


@pytest.mark.parametrize("rest", ["smooth", "renormalize", "drop"])
@pytest.mark.parametrize("t", [0.5, 2.0])
def test_target_temperature_equals_the_dense_reference(rest: str, t: float) -> None:
    g = torch.Generator().manual_seed(0)
    c, k = 12, 4
    p = torch.softmax(torch.randn(6, c, generator=g) * 2, 1)
    probs, ids = p.topk(k, 1)
    logits = torch.randn(6, c, generator=g)
    dense = densify((ids, probs), c, rest)
    mass = dense.sum(1, keepdim=True)
    sharp = dense.pow(1 / t)
    sharp = sharp / sharp.sum(1, keepdim=True) * mass  # the target keeps its mass
    torch.testing.assert_close(densify((ids, probs), c, rest, target_temperature=t), sharp)
    want = -(sharp * torch.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(soft_cross_entropy(logits, (ids, probs), rest=rest, target_temperature=t), want)
    if t < 1:  # sharper: more weight on the top class
        assert (densify((ids, probs), c, rest, target_temperature=t)[:, 0] >= 0).all()
        assert (sharp.gather(1, ids[:, :1]) >= dense.gather(1, ids[:, :1]) - 1e-6).all()
