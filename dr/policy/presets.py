"""Named policies, after the paper's tables (Faghri et al., 2023)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from dr.errors import PolicyError
from dr.policy.augment import RandAugment, RandomErasing
from dr.policy.mix import Mix
from dr.policy.ops import CropOp, HorizontalFlip, PadCrop, RandomResizedCrop, ViewOp
from dr.policy.policy import Policy

__all__ = ["PRESETS", "get_policy", "list_policies"]


def _make(name: str, crop: CropOp, default_size: int, ra_re: bool, mix: bool) -> Callable[[int | None], Policy]:
    def build(output_size: int | None) -> Policy:
        ops: tuple[ViewOp, ...] = (HorizontalFlip(),)
        if ra_re:
            ops += (RandAugment(num_ops=2, magnitude=9), RandomErasing(p=0.25))
        return Policy(name, output_size or default_size, crop, ops, Mix(p_mixup=0.25, p_cutmix=0.25, alpha=1.0) if mix else None)

    return build


_RRC = "RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3) + flip"
_PAD = "zero-pad 4 + random 32x32 crop + flip"
_RA = " + RandAugment(2 ops, magnitude 9/31) + RandomErasing(p 0.25, zero fill)"
_MIX = " + MixUp(alpha 1, p 0.25) / CutMix(alpha 1, p 0.25) with a partner from the same chunk"

PRESETS: dict[str, tuple[Callable[[int | None], Policy], str]] = {}
"""Preset name to (a factory taking an output size, a one-line description); see :func:`list_policies`."""
for _base, _crop, _size, _desc in (("rrc", RandomResizedCrop(), 224, _RRC), ("cifar", PadCrop(padding=4), 32, _PAD)):
    for _suffix, _ra, _mx in (("", False, False), ("+ra/re", True, False), ("+mix", False, True), ("+mix+ra/re", True, True)):
        _name = _base + _suffix
        PRESETS[_name] = (_make(_name, _crop, _size, _ra, _mx), _desc + (_MIX if _mx else "") + (_RA if _ra else "") + f"; {_size} px")


def list_policies() -> dict[str, str]:
    """Preset name -> one-line description."""
    return {k: v[1] for k, v in PRESETS.items()}


def get_policy(name: str, output_size: int | None = None, crop_scale: float | tuple[float, float] | None = None) -> Policy:
    """Build a preset policy by name, optionally at another output size.

    Args:
        name: the preset (see :func:`list_policies`).
        output_size: the view size (default: the preset's).
        crop_scale: for the ``rrc`` presets, the range of the crop's area as a share of the
            image: a lower bound (``0.35`` means 0.35-1) or a ``(low, high)`` pair; default the
            preset's 0.08-1. Low-resolution images (64 px) keep more of their label with a
            larger lower bound (docs/how-to/choosing.md has the measurement).

    Raises:
        PolicyError: an unknown preset; ``crop_scale`` outside ``(0, 1]`` or given to a preset
            whose crop has no scale (``cifar``'s pad-and-crop).
    """
    if name not in PRESETS:
        raise PolicyError(f"unknown policy {name!r}; choose one of: {', '.join(PRESETS)} (see `dr-build policies`)")
    policy = PRESETS[name][0](output_size)
    if crop_scale is None:
        return policy
    if not isinstance(policy.crop, RandomResizedCrop):
        raise PolicyError(
            f"crop_scale={crop_scale!r}: policy {name!r} crops with {policy.crop.kind}, which has no scale; "
            "crop_scale applies to the rrc presets (random resized crops)"
        )
    low, high = (float(crop_scale), 1.0) if isinstance(crop_scale, (int, float)) else (float(crop_scale[0]), float(crop_scale[1]))
    if not 0 < low <= high <= 1:
        raise PolicyError(f"crop_scale={crop_scale!r}: the crop's area share must satisfy 0 < low <= high <= 1 (e.g. 0.35 for 0.35-1)")
    return dataclasses.replace(policy, crop=dataclasses.replace(policy.crop, scale=(low, high)))
