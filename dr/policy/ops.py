"""Augmentation ops: seeded parameter *sampling* (numpy) split from batched *replay* (torch).

An op declares the typed, fixed-width parameter fields it stores per view, samples them for
all V views of one image at once from a ``numpy.random.Generator`` (always drawing the same
number of values, so later ops see the same stream whatever earlier values were), and replays
them on a batch of views with per-view parameters.

Two kinds:

* a :class:`CropOp` maps a source image (any size) to a view of the output size -- it is
  always first;
* a :class:`ViewOp` maps views to views (flip; RandAugment, erasing, mixing come here).

Ops are frozen dataclasses that round-trip through ``to_dict``/``op_from_dict`` (JSON in the
store header), registered by their ``kind`` name.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from dr.errors import PolicyError
from dr.policy import kernels
from dr.policy.rng import KeyedRNG

__all__ = [
    "ParamField",
    "Op",
    "CropOp",
    "ViewOp",
    "RandomResizedCrop",
    "PadCrop",
    "HorizontalFlip",
    "op_from_dict",
    "OP_REGISTRY",
]


@dataclass(frozen=True)
class ParamField:
    """One stored parameter field: ``name``, numpy ``dtype``, and per-view trailing ``shape``."""

    name: str
    dtype: str
    shape: tuple[int, ...] = ()
    doc: str = ""
    output_pixels: bool = False  # a box in output pixels: rescaled when replayed at another size

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "doc": self.doc}


OP_REGISTRY: dict[str, type[Op]] = {}


@dataclass(frozen=True)
class Op(ABC):
    """Base of all ops."""

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.kind:
            OP_REGISTRY[cls.kind] = cls

    @abstractmethod
    def fields(self) -> tuple[ParamField, ...]:
        """The parameter fields this op stores per view."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        for k, v in asdict(self).items():
            d[k] = list(v) if isinstance(v, tuple) else v
        return d


def op_from_dict(d: Mapping[str, Any]) -> Op:
    """Rebuild an op from its ``to_dict`` form (as stored in a store header)."""
    kind = d.get("kind")
    if kind not in OP_REGISTRY:
        raise PolicyError(f"unknown augmentation op {kind!r}; known ops: {', '.join(sorted(OP_REGISTRY))}")
    cls = OP_REGISTRY[str(kind)]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "kind"}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise PolicyError(f"bad parameters for op {kind!r}: {e}") from e


@dataclass(frozen=True)
class CropOp(Op):
    """An op that cuts a view of the output size out of a source image; always first."""

    @abstractmethod
    def sample(self, rng: KeyedRNG, n: int, height: np.ndarray, width: np.ndarray, size: int) -> dict[str, np.ndarray]:
        """Sample ``n`` views' parameters; view ``i`` comes from a ``height[i] x width[i]`` image."""

    def size_problem(self, height: int, width: int, size: int) -> str | None:
        """Why views of ``size`` cannot be cut from a ``height x width`` image (``None``: they can)."""
        if max(height, width) > 32767:
            return f"image of {height}x{width} pixels is too large for 16-bit crop boxes (max 32767)"
        return None

    def apply(
        self,
        images: kernels.ImageBank,
        params: Mapping[str, np.ndarray],
        image_index: np.ndarray,
        size: int,
        method: str | None = None,
    ) -> torch.Tensor:
        """Replay on a batch of views; returns uint8 ``[B,3,size,size]``."""
        return kernels.crop_resize(images, params["crop_box"], image_index, (size, size), method=method)


@dataclass(frozen=True)
class ViewOp(Op):
    """An op from views to views."""

    @abstractmethod
    def sample(self, rng: KeyedRNG, n: int, size: int) -> dict[str, np.ndarray]:
        """Sample ``n`` views' parameters at output ``size``."""

    @abstractmethod
    def apply(self, views: torch.Tensor, params: Mapping[str, np.ndarray]) -> torch.Tensor:
        """Replay on ``[B,3,S,S]`` uint8 views with host (numpy) per-view ``params``; a batched
        kernel: the tensor operations it issues do not depend on B."""


@dataclass(frozen=True)
class RandomResizedCrop(CropOp):
    """torchvision's ``RandomResizedCrop`` sampling (10 tries, then a centre fallback).

    Stores ``crop_box`` = (top, left, height, width) in source pixels (uint16).
    """

    kind: ClassVar[str] = "random_resized_crop"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    attempts: int = 10

    def __post_init__(self) -> None:
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise PolicyError(f"random_resized_crop scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise PolicyError(f"random_resized_crop ratio must satisfy 0 < lo <= hi, got {self.ratio}")

    def fields(self) -> tuple[ParamField, ...]:
        return (ParamField("crop_box", "uint16", (4,), "top, left, height, width in source pixels"),)

    def sample(self, rng: KeyedRNG, n: int, height: np.ndarray, width: np.ndarray, size: int) -> dict[str, np.ndarray]:
        height = np.broadcast_to(np.asarray(height, dtype=np.int64), (n,))
        width = np.broadcast_to(np.asarray(width, dtype=np.int64), (n,))
        a = self.attempts
        area = (height * width).astype(np.float64)[:, None]
        target = area * rng.uniform(self.scale[0], self.scale[1], size=(n, a))
        log_r = rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), size=(n, a))
        u = rng.random(size=(n, 2))
        aspect = np.exp(log_r)
        w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
        h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
        ok = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
        first = ok.argmax(axis=1)
        rows = np.arange(n)
        hh, ww = h[rows, first], w[rows, first]
        found = ok[rows, first]
        # Fallback: whole image, clipped to the ratio range, centred (torchvision's rule).
        in_ratio = width / np.maximum(height, 1)
        narrow, wide = in_ratio < self.ratio[0], in_ratio > self.ratio[1]
        fw = np.where(wide, np.rint(height * self.ratio[1]), width).astype(np.int64)
        fh = np.where(narrow, np.rint(width / self.ratio[0]), height).astype(np.int64)
        hh = np.where(found, hh, fh)
        ww = np.where(found, ww, fw)
        top = np.where(found, np.floor(u[:, 0] * (height - hh + 1)), (height - fh) // 2)
        left = np.where(found, np.floor(u[:, 1] * (width - ww + 1)), (width - fw) // 2)
        box = np.stack([top, left, hh, ww], axis=1).astype(np.uint16)
        return {"crop_box": box}

    def size_problem(self, height: int, width: int, size: int) -> str | None:
        if max(height, width) > 65535:
            return f"image of {height}x{width} pixels is too large for uint16 crop boxes (max 65535)"
        return None


@dataclass(frozen=True)
class PadCrop(CropOp):
    """CIFAR-style crop: zero-pad by ``padding`` and cut an output-sized window.

    Stores ``crop_box`` = (top, left, height, width) in source pixels (int16); top/left may be
    negative (inside the padding). With a source of the output size the crop is an exact copy.
    """

    kind: ClassVar[str] = "pad_crop"
    padding: int = 4

    def __post_init__(self) -> None:
        if not (0 <= self.padding <= 1024):
            raise PolicyError(f"pad_crop padding must be in [0, 1024], got {self.padding}")

    def fields(self) -> tuple[ParamField, ...]:
        return (ParamField("crop_box", "int16", (4,), "top, left, height, width in source pixels (may be negative: padding)"),)

    def size_problem(self, height: int, width: int, size: int) -> str | None:
        p = self.padding
        if height + 2 * p < size or width + 2 * p < size:
            return (
                f"pad_crop cannot cut {size}x{size} views from a {height}x{width} image padded by {p}: "
                "use --policy rrc for images of other sizes, or a smaller --output-size"
            )
        if max(height, width) + p > 32767:
            return f"image of {height}x{width} pixels is too large for int16 crop boxes"
        return None

    def sample(self, rng: KeyedRNG, n: int, height: np.ndarray, width: np.ndarray, size: int) -> dict[str, np.ndarray]:
        p = self.padding
        height = np.broadcast_to(np.asarray(height, dtype=np.int64), (n,))
        width = np.broadcast_to(np.asarray(width, dtype=np.int64), (n,))
        if n and ((height + 2 * p < size).any() or (width + 2 * p < size).any()):
            i = int(np.flatnonzero((height + 2 * p < size) | (width + 2 * p < size))[0])
            raise PolicyError(str(self.size_problem(int(height[i]), int(width[i]), size)))
        u = rng.random(size=(n, 2))
        top = -p + np.floor(u[:, 0] * (height + 2 * p - size + 1))
        left = -p + np.floor(u[:, 1] * (width + 2 * p - size + 1))
        box = np.stack([top, left, np.full(n, size), np.full(n, size)], axis=1).astype(np.int16)
        return {"crop_box": box}


@dataclass(frozen=True)
class HorizontalFlip(ViewOp):
    """Mirror left-right with probability ``p``; stores ``flip`` (uint8 0/1)."""

    kind: ClassVar[str] = "hflip"
    p: float = 0.5

    def __post_init__(self) -> None:
        if not (0.0 <= self.p <= 1.0):
            raise PolicyError(f"hflip p must be in [0, 1], got {self.p}")

    def fields(self) -> tuple[ParamField, ...]:
        return (ParamField("flip", "uint8", (), "1 if mirrored left-right"),)

    def sample(self, rng: KeyedRNG, n: int, size: int) -> dict[str, np.ndarray]:
        return {"flip": (rng.random(size=n) < self.p).astype(np.uint8)}

    def apply(self, views: torch.Tensor, params: Mapping[str, np.ndarray]) -> torch.Tensor:
        return kernels.hflip(views, params["flip"])
