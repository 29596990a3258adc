"""Augmentation policies: typed parameter records, seeded sampling, batched replay kernels."""

from dr.policy.augment import RA_OPS, RandAugment, RandomErasing, TrivialAugmentWide
from dr.policy.kernels import ImageBank
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
from dr.policy.policy import TAG_FRESH, TAG_ORIGINAL, TAG_STORED, Policy, fresh_rng, stored_rng
from dr.policy.presets import PRESETS, get_policy, list_policies
from dr.policy.rng import SAMPLER_VERSION, KeyedRNG

__all__ = [
    "SAMPLER_VERSION",
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
    "stored_rng",
    "TAG_STORED",
    "TAG_FRESH",
    "TAG_ORIGINAL",
    "fresh_rng",
    "KeyedRNG",
    "ImageBank",
    "list_policies",
    "op_from_dict",
]
