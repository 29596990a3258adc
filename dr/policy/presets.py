"""Named policies, after the paper's tables (Faghri et al., 2023)."""

from __future__ import annotations

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


def get_policy(name: str, output_size: int | None = None) -> Policy:
    """Build a preset policy by name, optionally at another output size."""
    if name not in PRESETS:
        raise PolicyError(f"unknown policy {name!r}; choose one of: {', '.join(PRESETS)} (see `dr-build policies`)")
    return PRESETS[name][0](output_size)
