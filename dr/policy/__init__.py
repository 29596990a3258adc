"""Augmentation policies: typed parameter records, seeded sampling, batched replay kernels."""

from dr.policy.augment import RA_OPS, RandAugment, RandomErasing, TrivialAugmentWide
from dr.policy.mix import Mix
from dr.policy.ops import (
    CropOp,
    HorizontalFlip,
    Op,
    PadCrop,
    ParamField,
    RandomResizedCrop,
    ViewOp,
    op_from_dict,
)
from dr.policy.policy import Policy, image_rng
from dr.policy.presets import PRESETS, get_policy, list_policies

__all__ = [
    "Mix",
    "RA_OPS",
    "RandAugment",
    "RandomErasing",
    "TrivialAugmentWide",
    "CropOp",
    "HorizontalFlip",
    "Op",
    "PadCrop",
    "ParamField",
    "Policy",
    "PRESETS",
    "RandomResizedCrop",
    "ViewOp",
    "get_policy",
    "image_rng",
    "list_policies",
    "op_from_dict",
]
