"""Named policies, after the paper's tables (Faghri et al., 2023)."""

from __future__ import annotations

from collections.abc import Callable

from dr.errors import PolicyError
from dr.policy.ops import HorizontalFlip, PadCrop, RandomResizedCrop
from dr.policy.policy import Policy

__all__ = ["PRESETS", "get_policy", "list_policies"]


def _rrc(output_size: int | None) -> Policy:
    return Policy("rrc", output_size or 224, RandomResizedCrop(), (HorizontalFlip(),))


def _cifar(output_size: int | None) -> Policy:
    return Policy("cifar", output_size or 32, PadCrop(padding=4), (HorizontalFlip(),))


PRESETS: dict[str, tuple[Callable[[int | None], Policy], str]] = {
    "rrc": (_rrc, "RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3) + horizontal flip; 224 px (ImageNet)"),
    "cifar": (_cifar, "zero-pad 4 + random 32x32 crop + horizontal flip (CIFAR)"),
}


def list_policies() -> dict[str, str]:
    """Preset name -> one-line description."""
    return {k: v[1] for k, v in PRESETS.items()}


def get_policy(name: str, output_size: int | None = None) -> Policy:
    """Build a preset policy by name, optionally at another output size."""
    if name not in PRESETS:
        raise PolicyError(f"unknown policy {name!r}; choose one of: {', '.join(PRESETS)} (see `dr-build policies`)")
    return PRESETS[name][0](output_size)
