"""The batched replay engine: launch counts independent of B, one arithmetic, fidelity."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms.v2 import functional as TF

from dr.policy import ImageBank, get_policy, list_policies
from dr.policy.augment import RA_OPS, RandAugment, apply_aug_op, magnitude_of
from dr.policy.kernels import crop_resize
from dr.policy.rng import KeyedRNG, view_keys
from dr.sources import ImageFolderSource


class CountOps(TorchDispatchMode):
    """Counts the aten operations that compute (each is at least one kernel launch on a GPU);
    views (``expand``, ``select``, ...) only change metadata and are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if not func.is_view:
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _bank(cifar64: Path, n: int, size: tuple[int, int] | None) -> ImageBank:
    src = ImageFolderSource(cifar64)
    imgs = [torch.from_numpy(src.read(i)[0]).permute(2, 0, 1) for i in range(n)]
    if size is not None:  # larger, varied sizes: a crop that really resizes
        imgs = [TF.resize(im, [size[0] + 3 * (i % 5), size[1] - 2 * (i % 3)], antialias=True) for i, im in enumerate(imgs)]
    return ImageBank(imgs)


def _params(policy, bank: ImageBank, views: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
    unit = policy.sample_unit(seed, 0, bank.sizes, views)
    flat = {k: a.reshape(-1, *a.shape[2:]) for k, a in unit.items()}
    index = np.repeat(np.arange(len(bank)), views)
    partner = flat["mix_partner"].astype(np.int64) if "mix_partner" in flat else None
    return flat, index, partner


@pytest.mark.parametrize("name", list(list_policies()))
def test_launch_count_does_not_grow_with_the_batch(name: str, cifar64: Path) -> None:
    """Same aten operation sequence for B=8 and B=256 views (batched method, every preset)."""
    policy = get_policy(name, 24 if name.startswith("rrc") else 32)
    bank = _bank(cifar64, 32, (48, 40) if name.startswith("rrc") else None)
    flat, index, partner = _params(policy, bank, 8)
    policy.replay(bank, flat, index, partner_index=partner, method="batched")  # warm host-side caches
    counts = []
    for b in (8, 256):
        one = {k: v[:b] for k, v in flat.items()}
        with CountOps() as mode:
            views = policy.replay(bank, one, index[:b], partner_index=None if partner is None else partner[:b], method="batched")
        assert views.shape[0] == b
        counts.append(mode.ops)
    assert counts[0] == counts[1], (name, counts[0] - counts[1], counts[1] - counts[0])
    assert sum(counts[0].values()) < 1200  # a fixed budget per batch (v0.1: ~50-90 per view)


@pytest.mark.parametrize("name", list(list_policies()))
def test_batched_and_native_resize_give_the_same_bytes(name: str, cifar64: Path) -> None:
    """The integer batched crop/resize equals torch's native uint8 kernel, view by view."""
    policy = get_policy(name, 40 if name.startswith("rrc") else 32)
    bank = _bank(cifar64, 16, (90, 70) if name.startswith("rrc") else None)
    flat, index, partner = _params(policy, bank, 6, seed=3)
    a = policy.replay(bank, flat, index, partner_index=partner, method="batched")
    b = policy.replay(bank, flat, index, partner_index=partner, method="native")
    assert torch.equal(a, b), name


def test_crop_resize_equals_torchvision_resized_crop_and_zero_pads(cifar64: Path) -> None:
    bank = _bank(cifar64, 4, (120, 90))
    rng = np.random.default_rng(0)
    boxes, which = [], []
    for i in range(4):
        h, w = bank.sizes[i]
        for _ in range(12):
            bh, bw = int(rng.integers(4, h + 1)), int(rng.integers(4, w + 1))
            boxes.append((int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1)), bh, bw))
            which.append(i)
    out = crop_resize(bank, np.asarray(boxes), np.asarray(which), (37, 29), method="batched")
    for j, ((t, left, h, w), i) in enumerate(zip(boxes, which)):
        expect = TF.resized_crop(bank.image(i), t, left, h, w, [37, 29], antialias=True)
        assert torch.equal(out[j], expect), j
    # boxes reaching outside the image read zeros there (CIFAR padding), also when resizing
    pad = np.asarray([[-4, -4, 40, 40], [-3, 5, 32, 32], [100, 70, 40, 40]])
    got = crop_resize(bank, pad, np.asarray([0, 1, 2]), (32, 32), method="batched")
    native = crop_resize(bank, pad, np.asarray([0, 1, 2]), (32, 32), method="native")
    assert torch.equal(got, native)
    assert (got[0, :, :2, :2] == 0).all()


def test_grouped_randaugment_equals_one_view_at_a_time(cifar64: Path) -> None:
    """Grouping by (slot, op, sign) gives the bytes of torchvision's kernels applied per view."""
    views = torch.stack([_bank(cifar64, 64, None).image(i) for i in range(64)])
    ra = RandAugment(num_ops=2, magnitude=9)
    params = ra.sample(KeyedRNG(view_keys(5, np.arange(64))), 64, 32)
    grouped = ra.apply(views.clone(), params)
    for j in range(64):
        out = views[j]
        for op_id, neg in zip(params["ra_ops"][j].tolist(), params["ra_signs"][j].tolist()):
            if op_id:
                op = RA_OPS[op_id]
                out = apply_aug_op(out, op, magnitude_of(op, 9, bool(neg), wide=False, bins=31, size=32))
        assert torch.equal(grouped[j], out), j
    assert len(set(params["ra_ops"].ravel().tolist())) == len(RA_OPS)  # every op exercised


def test_keyed_sampling_is_independent_of_the_batch() -> None:
    """A view's parameters depend on its key only, not on which views share the call."""
    policy = get_policy("rrc+mix+ra/re")
    sizes = np.stack([np.arange(300, 332), np.arange(400, 432)], axis=1)
    unit = policy.sample_unit(11, 64, sizes, 5)
    for i in (0, 7, 31):
        one = policy.sample(11, 64 + i, int(sizes[i, 0]), int(sizes[i, 1]), 5, pool=np.arange(64, 96), pool_sizes=sizes)
        for k in unit:
            np.testing.assert_array_equal(unit[k][i], one[k])
    other = policy.sample_unit(12, 64, sizes, 5)
    assert not np.array_equal(other["crop_box"], unit["crop_box"])
    # per-view image sizes: every box lies inside its own image
    box = unit["crop_box"].astype(np.int64)
    assert (box[..., 0] + box[..., 2] <= sizes[:, None, 0]).all() and (box[..., 1] + box[..., 3] <= sizes[:, None, 1]).all()


def test_keyed_beta_matches_its_moments() -> None:
    rng = KeyedRNG(view_keys(0, np.arange(40_000)))
    x = rng.beta(0.4, 0.4)
    assert abs(x.mean() - 0.5) < 0.01 and abs(x.var() - 0.25 * 1 / (0.8 + 1)) < 0.01  # Beta(a,a): var = 1/(4(2a+1))
    y = KeyedRNG(view_keys(1, np.arange(40_000))).beta(2.0, 2.0)
    assert abs(y.var() - 1 / 20) < 0.004
