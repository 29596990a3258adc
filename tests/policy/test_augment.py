"""RandAugment, TrivialAugmentWide, RandomErasing and MixUp/CutMix: replay and statistics."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from dr.policy import RA_OPS, Policy, RandAugment, RandomErasing, TrivialAugmentWide, get_policy, list_policies
from dr.policy.augment import apply_aug_op, magnitude_of
from dr.policy.ops import HorizontalFlip, PadCrop
from dr.policy.rng import KeyedRNG, view_keys
from dr.sources import ImageFolderSource


def _images(cifar64: Path, n: int) -> torch.Tensor:
    src = ImageFolderSource(cifar64)
    return torch.stack([torch.from_numpy(src.read(i)[0]).permute(2, 0, 1) for i in range(n)])


def _sample(p: Policy, count: int, views: int, seed: int = 0) -> dict[str, np.ndarray]:
    unit = p.sample_unit(seed, 0, np.full((count, 2), 32), views)
    return {k: a.reshape(-1, *a.shape[2:]) for k, a in unit.items()}


def _rng(n: int, seed: int = 0) -> KeyedRNG:
    return KeyedRNG(view_keys(seed, np.arange(n)))


@pytest.mark.parametrize("name", list(list_policies()))
def test_every_preset_replays_batched_equal_to_single(name: str, cifar64: Path) -> None:
    p = get_policy(name, 32)
    imgs = _images(cifar64, 8)
    params = _sample(p, 8, 4)
    index = np.repeat(np.arange(8), 4)
    partner = params["mix_partner"].astype(np.int64) if p.mix else None
    batched = p.replay(list(imgs), params, index, partner_index=partner)
    assert batched.shape == (32, 3, 32, 32) and batched.dtype == torch.uint8
    for j in range(32):
        one = {k: v[j : j + 1] for k, v in params.items()}
        pi = None if partner is None else partner[j : j + 1]
        single = p.replay(list(imgs), one, index[j : j + 1], partner_index=pi)
        assert torch.equal(single[0], batched[j]), (name, j)
    assert Policy.from_dict(p.to_dict()) == p


def test_randaugment_matches_torchvision_randaugment(cifar64: Path) -> None:
    """Our op table + magnitudes reproduce torchvision's v2.RandAugment given its own draws."""
    imgs = _images(cifar64, 16)
    space = list(RA_OPS)
    matched = 0
    for seed in range(60):
        img = imgs[seed % 16]
        torch.manual_seed(seed)
        expect = v2.RandAugment(num_ops=2, magnitude=9)(img)
        torch.manual_seed(seed)
        out = img
        for _ in range(2):  # replicate torchvision's draw order: op index, then sign if signed
            op = space[int(torch.randint(len(space), ()))]
            mags = magnitude_of(op, 9, False, wide=False, bins=31, size=32)
            neg = (
                float(torch.rand(())) <= 0.5
                if op in {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
                else False
            )
            out = apply_aug_op(out, op, -mags if neg else mags)
        assert torch.equal(out, expect), seed
        matched += 1
    assert matched == 60


def test_op_frequencies_and_signs_are_uniform() -> None:
    ra = RandAugment(num_ops=2).sample(_rng(10_000), 10_000, 32)
    counts = np.bincount(ra["ra_ops"].ravel(), minlength=len(RA_OPS))
    expected = 20_000 / len(RA_OPS)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 34.5  # chi-square, 13 dof, p = 0.001
    signed = ra["ra_signs"][np.isin(ra["ra_ops"], [1, 2, 3, 4, 5, 6, 7, 8, 9])]
    assert abs(signed.mean() - 0.5) < 0.02
    ta = TrivialAugmentWide().sample(_rng(10_000, 1), 10_000, 32)
    assert abs(np.bincount(ta["ta_bin"], minlength=31) - 10_000 / 31).max() < 4 * np.sqrt(10_000 / 31)


def test_erasing_rate_and_box_ranges() -> None:
    er = RandomErasing(p=0.25).sample(_rng(20_000, 2), 20_000, 224)["erase_box"].astype(np.int64)
    erased = er[:, 2] > 0
    assert abs(erased.mean() - 0.25) < 0.015
    top, left, h, w = er[erased].T
    frac = h * w / 224**2
    assert frac.min() >= 0.015 and frac.max() <= 0.34 and (top + h <= 224).all() and (left + w <= 224).all()
    ratio = h / w
    assert ratio.min() > 0.25 and ratio.max() < 3.7


def test_mix_statistics_and_partners() -> None:
    p = get_policy("cifar+mix", 32)
    params = _sample(p, 200, 50)
    kind = params["mix_kind"]
    assert abs((kind == 1).mean() - 0.25) < 0.02 and abs((kind == 2).mean() - 0.25) < 0.02
    lam = params["mix_lambda"].astype(np.float64)[kind == 1]
    assert abs(lam.mean() - 0.5) < 0.02 and abs(lam.var() - 1 / 12) < 0.01  # Beta(1, 1) = U(0, 1)
    cut = params["mix_box"].astype(np.int64)[kind == 2]
    area = cut[:, 2] * cut[:, 3] / 1024
    np.testing.assert_allclose(1 - area, params["mix_lambda"].astype(np.float64)[kind == 2], atol=1e-3)
    partners = params["mix_partner"][kind > 0]
    own = np.repeat(np.arange(200), 50)[kind > 0]
    assert (partners != own).all() and partners.max() < 200
    assert (params["partner_crop_box"][kind == 0] == 0).all()


def test_mixup_and_cutmix_pixels(cifar64: Path) -> None:
    imgs = _images(cifar64, 2)
    p = Policy("t", 32, PadCrop(padding=0), (HorizontalFlip(p=0.0),), get_policy("cifar+mix").mix)
    base = {"crop_box": np.array([[0, 0, 32, 32]] * 2, dtype=np.int16), "flip": np.zeros(2, dtype=np.uint8)}
    params = {**base, **{"partner_" + k: v for k, v in base.items()}}
    params.update(
        mix_kind=np.array([1, 2], dtype=np.uint8),
        mix_partner=np.array([1, 1], dtype=np.uint32),
        mix_lambda=np.array([0.25, 0.75], dtype=np.float16),
        mix_box=np.array([[0, 0, 0, 0], [4, 8, 16, 16]], dtype=np.uint16),
    )
    out = p.replay(list(imgs), params, np.array([0, 0]), partner_index=np.array([1, 1]))
    expect = (0.25 * imgs[0].float() + 0.75 * imgs[1].float()).round().to(torch.uint8)
    assert (out[0].int() - expect.int()).abs().max() <= 1
    assert torch.equal(out[1, :, 4:20, 8:24], imgs[1][:, 4:20, 8:24])
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[4:20, 8:24] = False
    assert torch.equal(out[1][:, outside], imgs[0][:, outside])


def test_output_pixel_boxes_rescale_when_replaying_larger() -> None:
    p = get_policy("cifar+ra/re", 32)
    img = torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)
    params = {
        "crop_box": np.array([[0, 0, 32, 32]], dtype=np.int16),
        "flip": np.zeros(1, dtype=np.uint8),
        "ra_ops": np.zeros((1, 2), dtype=np.uint8),
        "ra_signs": np.zeros((1, 2), dtype=np.uint8),
        "erase_box": np.array([[8, 8, 8, 8]], dtype=np.uint16),
    }
    small = p.replay(img, params)
    big = p.replay(img, params, output_size=64)
    assert int((small[0, 0] == 0).sum()) == 64 and int((big[0, 0] == 0).sum()) == 256
    assert (big[0, 0, 16:32, 16:32] == 0).all()


def test_integer_sharpness_is_torchvisions_bytes() -> None:
    """The batched Sharpness (integer blur, no float convolution) equals torchvision's kernel
    byte for byte: random and flat images, factors of both signs' range, tiny sizes."""
    from torchvision.transforms.v2 import functional as TF

    from dr.policy.kernels import adjust_sharpness

    g = torch.Generator().manual_seed(0)
    images = [
        torch.randint(0, 256, (6, 3, 40, 56), dtype=torch.uint8, generator=g),
        torch.full((2, 3, 9, 9), 255, dtype=torch.uint8),
        torch.randint(0, 256, (3, 3, 3, 4), dtype=torch.uint8, generator=g),
        torch.randint(0, 256, (1, 3, 2, 7), dtype=torch.uint8, generator=g),  # too small to blur: unchanged
    ]
    for x in images:
        for factor in (0.0, 0.1, 0.55, 1.0, 1.27, 1.9, 1.99):
            assert torch.equal(adjust_sharpness(x, factor), TF.adjust_sharpness(x, factor)), (tuple(x.shape), factor)
