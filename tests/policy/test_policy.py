from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dr.errors import PolicyError
from dr.policy import Policy, get_policy
from dr.sources import ImageFolderSource


def _images(cifar64: Path, n: int) -> torch.Tensor:
    src = ImageFolderSource(cifar64)
    return torch.stack([torch.from_numpy(src.read(i)[0]).permute(2, 0, 1) for i in range(n)])


@pytest.mark.parametrize("name", ["rrc", "cifar"])
def test_sampling_is_a_pure_function_of_seed_and_index(name: str) -> None:
    p = get_policy(name, 32)
    a = p.sample(7, 123, 32, 32, 16)
    b = p.sample(7, 123, 32, 32, 16)
    c = p.sample(7, 124, 32, 32, 16)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    assert {f.name for f in p.fields()} == set(a)
    for f in p.fields():
        assert a[f.name].dtype == np.dtype(f.dtype) and a[f.name].shape == (16, *f.shape)


def test_rrc_boxes_inside_image_and_cover_scale_range() -> None:
    p = get_policy("rrc")
    boxes = np.concatenate([p.sample(0, i, 375, 500, 50)["crop_box"] for i in range(40)]).astype(np.int64)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 375).all() and (left + w <= 500).all()
    frac = h * w / (375 * 500)
    assert frac.min() < 0.12 and frac.max() > 0.9  # scale (0.08, 1)
    ratio = w / h
    assert (ratio > 0.7).all() and (ratio < 1.4).all()


def test_pad_crop_is_an_exact_copy_of_the_padded_window(cifar64: Path) -> None:
    p = get_policy("cifar")
    imgs = _images(cifar64, 4)
    params = {"crop_box": np.concatenate([p.sample(0, i, 32, 32, 8)["crop_box"] for i in range(4)])}
    params["flip"] = np.zeros(32, dtype=np.uint8)
    index = np.repeat(np.arange(4), 8)
    views = p.replay(imgs, params, index)
    padded = F.pad(imgs, (4, 4, 4, 4))
    for j, (top, left, h, w) in enumerate(params["crop_box"].astype(int)):
        expect = padded[index[j], :, top + 4 : top + 4 + h, left + 4 : left + 4 + w]
        assert torch.equal(views[j], expect)


@pytest.mark.parametrize("name", ["rrc", "cifar"])
def test_batched_replay_equals_replaying_each_view_alone(name: str, cifar64: Path) -> None:
    p = get_policy(name, 32)
    imgs = _images(cifar64, 6)
    per = [p.sample(3, i, 32, 32, 5) for i in range(6)]
    params = {k: np.concatenate([q[k] for q in per]) for k in per[0]}
    index = np.repeat(np.arange(6), 5)
    batched = p.replay(imgs, params, index)
    assert batched.shape == (30, 3, 32, 32) and batched.dtype == torch.uint8
    for j in range(30):
        single = p.replay(imgs[index[j]][None], {k: v[j : j + 1] for k, v in params.items()}, np.zeros(1, dtype=np.int64))
        assert torch.equal(batched[j], single[0])
    # a list of images (the any-size path) gives the same views as a stacked tensor
    assert torch.equal(p.replay(list(imgs), params, index), batched)


def test_rrc_on_images_of_different_sizes(cifar64: Path) -> None:
    p = get_policy("rrc", 24)
    base = _images(cifar64, 2)
    imgs = [F.interpolate(base[0:1].float(), size=(40, 56)).round().to(torch.uint8)[0], base[1]]
    per = [p.sample(0, i, int(im.shape[1]), int(im.shape[2]), 4) for i, im in enumerate(imgs)]
    params = {k: np.concatenate([q[k] for q in per]) for k in per[0]}
    index = np.repeat(np.arange(2), 4)
    views = p.replay(imgs, params, index)
    assert views.shape == (8, 3, 24, 24)
    for j in range(8):
        one = p.replay([imgs[index[j]]], {k: v[j : j + 1] for k, v in params.items()}, np.zeros(1, dtype=np.int64))
        assert torch.equal(views[j], one[0])
    # replay at another output size uses the same source-pixel boxes
    assert p.replay(imgs, params, index, output_size=48).shape == (8, 3, 48, 48)


def test_flip_mirrors(cifar64: Path) -> None:
    p = get_policy("cifar")
    img = _images(cifar64, 1)
    box = np.array([[0, 0, 32, 32]], dtype=np.int16)
    a = p.replay(img, {"crop_box": box, "flip": np.array([0], dtype=np.uint8)})
    b = p.replay(img, {"crop_box": box, "flip": np.array([1], dtype=np.uint8)})
    assert torch.equal(a[0], img[0]) and torch.equal(b[0], img[0].flip(-1))


def test_policy_round_trips_and_bad_names_fail() -> None:
    for name in ("rrc", "cifar"):
        p = get_policy(name)
        assert Policy.from_dict(p.to_dict()) == p
    with pytest.raises(PolicyError, match="'nope'"):
        get_policy("nope")
    with pytest.raises(PolicyError, match="unknown augmentation op"):
        Policy.from_dict({"name": "x", "output_size": 32, "crop": {"kind": "warp"}, "ops": []})
    with pytest.raises(PolicyError, match="pad_crop cannot cut"):
        get_policy("cifar", 64).sample(0, 0, 32, 32, 2)
