"""Photometric and geometric view ops: RandAugment, TrivialAugmentWide, RandomErasing.

Sampling draws op ids, magnitude bins and signs with numpy (fixed draws per view); replay
groups the views by (op, magnitude, sign) on the host and runs torchvision's public
``transforms.v2.functional`` kernel once per group, with exactly the magnitude semantics of
``torchvision.transforms.v2.RandAugment`` / ``TrivialAugmentWide`` (checked against them in
the tests), nearest interpolation and zero fill, as torchvision.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from dr.errors import PolicyError
from dr.policy import kernels
from dr.policy.ops import ParamField, ViewOp
from dr.policy.rng import KeyedRNG

__all__ = ["RA_OPS", "RandAugment", "TrivialAugmentWide", "RandomErasing", "apply_aug_op", "magnitude_of"]

# torchvision's op order (index = stored op id)
RA_OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
"""torchvision's RandAugment ops, in its order: a stored ``ra_ops`` value is an index here."""
_SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
# RandAugment's replay groups: (op id, negated) for every op, both signs for the signed ones
_KEYS = [(i, s) for i, op in enumerate(RA_OPS) for s in ((0, 1) if op in _SIGNED else (0,))]
_KEY_OF = np.zeros((len(RA_OPS), 2), dtype=np.int64)
for _k, (_i, _s) in enumerate(_KEYS):
    _KEY_OF[_i, _s] = _k
for _i, _op in enumerate(RA_OPS):
    if _op not in _SIGNED:
        _KEY_OF[_i, 1] = _KEY_OF[_i, 0]  # an unsigned op ignores its sign bit


def _space(wide: bool, bins: int, size: int) -> dict[str, Callable[[], torch.Tensor | None]]:
    """Magnitude tables of torchvision's RandAugment (``wide=False``) / TrivialAugmentWide."""
    lin = torch.linspace
    if not wide:
        return {
            "ShearX": lambda: lin(0.0, 0.3, bins),
            "ShearY": lambda: lin(0.0, 0.3, bins),
            "TranslateX": lambda: lin(0.0, 150.0 / 331.0 * size, bins),
            "TranslateY": lambda: lin(0.0, 150.0 / 331.0 * size, bins),
            "Rotate": lambda: lin(0.0, 30.0, bins),
            "Brightness": lambda: lin(0.0, 0.9, bins),
            "Color": lambda: lin(0.0, 0.9, bins),
            "Contrast": lambda: lin(0.0, 0.9, bins),
            "Sharpness": lambda: lin(0.0, 0.9, bins),
            "Posterize": lambda: 8 - (torch.arange(bins) / ((bins - 1) / 4)).round().int(),
            "Solarize": lambda: lin(1.0, 0.0, bins),
        }
    return {
        "ShearX": lambda: lin(0.0, 0.99, bins),
        "ShearY": lambda: lin(0.0, 0.99, bins),
        "TranslateX": lambda: lin(0.0, 32.0, bins),
        "TranslateY": lambda: lin(0.0, 32.0, bins),
        "Rotate": lambda: lin(0.0, 135.0, bins),
        "Brightness": lambda: lin(0.0, 0.99, bins),
        "Color": lambda: lin(0.0, 0.99, bins),
        "Contrast": lambda: lin(0.0, 0.99, bins),
        "Sharpness": lambda: lin(0.0, 0.99, bins),
        "Posterize": lambda: 8 - (torch.arange(bins) / ((bins - 1) / 6)).round().int(),
        "Solarize": lambda: lin(1.0, 0.0, bins),
    }


@functools.lru_cache(maxsize=4096)
def magnitude_of(op: str, bin_: int, negative: bool, *, wide: bool, bins: int, size: int) -> float:
    """The magnitude torchvision would use for ``op`` at ``bin_`` (sign applied if signed)."""
    table = _space(wide, bins, size).get(op)
    if table is None:
        return 0.0
    mags = table()
    m = float(mags[bin_]) if mags is not None and mags.ndim > 0 else 0.0
    return -m if (negative and op in _SIGNED) else m


def apply_aug_op(img: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    """One RandAugment-family op on a uint8 ``[3,H,W]`` view (torchvision's semantics)."""
    nearest = InterpolationMode.NEAREST
    if op == "Identity":
        return img
    if op in ("ShearX", "ShearY"):
        angle = math.degrees(math.atan(magnitude))
        shear = [angle, 0.0] if op == "ShearX" else [0.0, angle]
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=nearest, fill=None, center=[0, 0])
    if op == "TranslateX":
        return TF.affine(img, angle=0.0, translate=[int(magnitude), 0], scale=1.0, interpolation=nearest, shear=[0.0, 0.0], fill=None)
    if op == "TranslateY":
        return TF.affine(img, angle=0.0, translate=[0, int(magnitude)], scale=1.0, interpolation=nearest, shear=[0.0, 0.0], fill=None)
    if op == "Rotate":
        return TF.rotate(img, angle=magnitude, interpolation=nearest, fill=None)
    if op == "Brightness":
        return TF.adjust_brightness(img, brightness_factor=1.0 + magnitude)
    if op == "Color":
        return TF.adjust_saturation(img, saturation_factor=1.0 + magnitude)
    if op == "Contrast":
        return TF.adjust_contrast(img, contrast_factor=1.0 + magnitude)
    if op == "Sharpness":
        return TF.adjust_sharpness(img, sharpness_factor=1.0 + magnitude)
    if op == "Posterize":
        return TF.posterize(img, bits=int(magnitude))
    if op == "Solarize":
        return TF.solarize(img, threshold=255.0 * magnitude)
    if op == "AutoContrast":
        return TF.autocontrast(img)
    if op == "Equalize":
        return TF.equalize(img)
    raise PolicyError(f"unknown augmentation op {op!r}")


def batched_aug_op(views: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    """:func:`apply_aug_op` for a uint8 batch ``[N,3,H,W]`` sharing one magnitude: the same
    bytes, with Sharpness through :func:`~dr.policy.kernels.adjust_sharpness` (integer blur,
    no float convolution; bit-identical to torchvision, tested)."""
    if op == "Sharpness":
        return kernels.adjust_sharpness(views, 1.0 + magnitude)
    return apply_aug_op(views, op, magnitude)


def _sorted_groups(
    work: torch.Tensor, pos: np.ndarray, keys: np.ndarray, skip: Callable[[int], bool]
) -> tuple[torch.Tensor, np.ndarray, list[tuple[int, int, int]]]:
    """Reorder ``work`` (whose row ``r`` holds view ``pos[r]``) so that equal ``keys`` (per
    view) are contiguous: one gather, then every group is a slice (a view, no copy) that its op
    overwrites in place. Returns the reordered batch, its ``pos`` and ``(key, start, stop)``."""
    k = keys[pos]
    order = np.argsort(k, kind="stable")
    if not np.array_equal(order, np.arange(len(order))):
        work = work.index_select(0, torch.from_numpy(order).to(work.device))
        pos = pos[order]
        k = k[order]
    present = [int(v) for v in np.unique(k) if not skip(int(v))]
    starts = np.searchsorted(k, present, side="left")
    stops = np.searchsorted(k, present, side="right")
    return work, pos, list(zip(present, starts.tolist(), stops.tolist()))


def _unsort(work: torch.Tensor, pos: np.ndarray) -> torch.Tensor:
    """Back to view order (row ``pos[r]`` of the result is row ``r`` of ``work``)."""
    if np.array_equal(pos, np.arange(len(pos))):
        return work
    return work.index_select(0, torch.from_numpy(np.argsort(pos, kind="stable")).to(work.device))


@dataclass(frozen=True)
class RandAugment(ViewOp):
    """torchvision's RandAugment: ``num_ops`` ops drawn uniformly from :data:`RA_OPS` at a fixed
    ``magnitude`` bin (of ``num_magnitude_bins``), each signed op negated with probability 1/2.

    Stores ``ra_ops`` (op ids, uint8 ``[num_ops]``) and ``ra_signs`` (1 = negative, uint8).
    """

    kind: ClassVar[str] = "rand_augment"
    num_ops: int = 2
    magnitude: int = 9
    num_magnitude_bins: int = 31
    p: float = 1.0

    def __post_init__(self) -> None:
        if not (1 <= self.num_ops <= 16) or not (0 <= self.magnitude < self.num_magnitude_bins) or not (0 <= self.p <= 1):
            raise PolicyError(f"rand_augment needs 1 <= num_ops <= 16, 0 <= magnitude < num_magnitude_bins, 0 <= p <= 1; got {self}")

    def fields(self) -> tuple[ParamField, ...]:
        return (
            ParamField("ra_ops", "uint8", (self.num_ops,), f"RandAugment op ids into {list(RA_OPS)}; 0 = Identity (also when not applied)"),
            ParamField("ra_signs", "uint8", (self.num_ops,), "1 if the op's magnitude is negated"),
        )

    def sample(self, rng: KeyedRNG, n: int, size: int) -> dict[str, np.ndarray]:
        ops = rng.integers(0, len(RA_OPS), size=(n, self.num_ops))
        signs = rng.random(size=(n, self.num_ops)) < 0.5
        apply = rng.random(size=n) < self.p
        ops = np.where(apply[:, None], ops, 0)
        signs = signs & apply[:, None] & np.isin(ops, [RA_OPS.index(o) for o in _SIGNED])
        return {"ra_ops": ops.astype(np.uint8), "ra_signs": signs.astype(np.uint8)}

    def apply(self, views: torch.Tensor, params: Mapping[str, np.ndarray]) -> torch.Tensor:
        """Grouped replay: for each op slot, the views are grouped by (op, sign) on the host and
        each group goes through torchvision's kernel once, with its one magnitude -- the same
        bytes as one view at a time. Off the CPU every (op, sign) group runs, an empty one on a
        scratch view, so the tensor operations issued are the same for any batch
        (:func:`~dr.policy.kernels.fixed_sequence`); on the CPU empty groups are skipped."""
        ops = np.asarray(params["ra_ops"], dtype=np.int64).reshape(len(views), self.num_ops)
        signs = np.asarray(params["ra_signs"], dtype=np.int64).reshape(len(views), self.num_ops)
        size = views.shape[-1]
        fixed = kernels.fixed_sequence(views.device)
        if not fixed:
            # CPU: views sorted by each slot's (op, sign) -- one gather per slot, every group a
            # contiguous slice its op overwrites in place (index_copy_ per group cost 10x a gather)
            pos = np.arange(len(views))
            work = views
            for slot in range(self.num_ops):
                keys = _KEY_OF[ops[:, slot], signs[:, slot]]
                work, pos, groups_ = _sorted_groups(work, pos, keys, lambda k: _KEYS[k][0] == 0)
                if work is views and groups_:
                    work = views.clone()  # the caller's batch stays as it was (rarely needed: sorting copies)
                for key, s0, s1 in groups_:
                    op_id, neg = _KEYS[key]
                    op = RA_OPS[op_id]
                    mag = magnitude_of(op, self.magnitude, bool(neg), wide=False, bins=self.num_magnitude_bins, size=size)
                    work[s0:s1] = batched_aug_op(work[s0:s1], op, mag)
            return _unsort(work, pos)
        work = torch.cat([views, views.new_zeros((1, *views.shape[1:]))])
        for slot in range(self.num_ops):
            groups = kernels.Groups(_KEY_OF[ops[:, slot], signs[:, slot]], len(_KEYS), views.device)
            for key, (op_id, neg) in enumerate(_KEYS):
                if op_id == 0:
                    continue
                op = RA_OPS[op_id]
                mag = magnitude_of(op, self.magnitude, bool(neg), wide=False, bins=self.num_magnitude_bins, size=size)
                index = groups.index(key)
                work.index_copy_(0, index, batched_aug_op(work.index_select(0, index), op, mag))
        return work[:-1]


@dataclass(frozen=True)
class TrivialAugmentWide(ViewOp):
    """torchvision's TrivialAugmentWide: one op, a uniformly drawn magnitude bin, random sign.

    Stores ``ta_op``, ``ta_bin`` and ``ta_sign`` (uint8 each).
    """

    kind: ClassVar[str] = "trivial_augment_wide"
    num_magnitude_bins: int = 31

    def fields(self) -> tuple[ParamField, ...]:
        return (
            ParamField("ta_op", "uint8", (), f"op id into {list(RA_OPS)}"),
            ParamField("ta_bin", "uint8", (), "magnitude bin"),
            ParamField("ta_sign", "uint8", (), "1 if the magnitude is negated"),
        )

    def sample(self, rng: KeyedRNG, n: int, size: int) -> dict[str, np.ndarray]:
        op = rng.integers(0, len(RA_OPS), size=n)
        bin_ = rng.integers(0, self.num_magnitude_bins, size=n)
        sign = (rng.random(size=n) < 0.5) & np.isin(op, [RA_OPS.index(o) for o in _SIGNED])
        return {"ta_op": op.astype(np.uint8), "ta_bin": bin_.astype(np.uint8), "ta_sign": sign.astype(np.uint8)}

    def apply(self, views: torch.Tensor, params: Mapping[str, np.ndarray]) -> torch.Tensor:
        """Grouped by (op, bin, sign) on the host, torchvision's kernel once per group present
        (at most 13 x bins x 2 groups: bounded, but unlike RandAugment's not a fixed sequence)."""
        op_id = np.asarray(params["ta_op"], dtype=np.int64).reshape(-1)
        bin_ = np.asarray(params["ta_bin"], dtype=np.int64).reshape(-1)
        neg = np.asarray(params["ta_sign"], dtype=np.int64).reshape(-1)
        size = views.shape[-1]
        key = (op_id * self.num_magnitude_bins + bin_) * 2 + neg
        if not (op_id != 0).any():
            return views
        per_op = self.num_magnitude_bins * 2
        work, pos, groups_ = _sorted_groups(views, np.arange(len(views)), key, lambda k: k < per_op)  # op 0: Identity
        if work is views:
            work = views.clone()  # the caller's batch stays as it was
        for k, s0, s1 in groups_:
            o, rest = divmod(k, per_op)
            b, sg = divmod(rest, 2)
            op = RA_OPS[o]
            mag = magnitude_of(op, b, bool(sg), wide=True, bins=self.num_magnitude_bins, size=size)
            work[s0:s1] = batched_aug_op(work[s0:s1], op, mag)
        return _unsort(work, pos)


@dataclass(frozen=True)
class RandomErasing(ViewOp):
    """torchvision's RandomErasing sampling (10 tries) with a constant fill ``value``.

    Stores ``erase_box`` (top, left, height, width in output pixels, uint16); a zero height
    means the view is not erased. No device RNG at replay: the fill is a constant.
    """

    kind: ClassVar[str] = "random_erasing"
    p: float = 0.25
    scale: tuple[float, float] = (0.02, 0.33)
    ratio: tuple[float, float] = (0.3, 3.3)
    value: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.p <= 1) or not (0 < self.scale[0] <= self.scale[1] < 1) or not (0 <= self.value <= 255):
            raise PolicyError(f"random_erasing needs 0 <= p <= 1, 0 < scale lo <= hi < 1, 0 <= value <= 255; got {self}")

    def fields(self) -> tuple[ParamField, ...]:
        return (
            ParamField("erase_box", "uint16", (4,), "top, left, height, width in output pixels; height 0 = not erased", output_pixels=True),
        )

    def sample(self, rng: KeyedRNG, n: int, size: int) -> dict[str, np.ndarray]:
        area = float(size * size)
        apply = rng.random(size=n) < self.p
        target = area * rng.uniform(self.scale[0], self.scale[1], size=(n, 10))
        aspect = np.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), size=(n, 10)))
        u = rng.random(size=(n, 2))
        h = np.rint(np.sqrt(target * aspect)).astype(np.int64)
        w = np.rint(np.sqrt(target / aspect)).astype(np.int64)
        ok = (h < size) & (w < size) & (h > 0) & (w > 0)
        first = ok.argmax(axis=1)
        rows = np.arange(n)
        hh, ww = h[rows, first], w[rows, first]
        found = ok[rows, first] & apply
        top = np.floor(u[:, 0] * (size - hh + 1))
        left = np.floor(u[:, 1] * (size - ww + 1))
        box = np.stack([top, left, hh, ww], axis=1) * found[:, None]
        return {"erase_box": box.astype(np.uint16)}

    def apply(self, views: torch.Tensor, params: Mapping[str, np.ndarray]) -> torch.Tensor:
        return kernels.erase(views, params["erase_box"], self.value)
