"""A policy: one crop op followed by view ops, with seeded sampling and batched replay."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dr.errors import PolicyError
from dr.policy import kernels
from dr.policy.ops import CropOp, ParamField, ViewOp, op_from_dict

__all__ = ["Policy", "image_rng"]


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for one image: ``default_rng([seed, index])`` -- no global state."""
    return np.random.default_rng([int(seed), int(index)])


_NARROW_INTS = (np.int8, np.uint8, np.int16, np.uint16, np.uint32)


def _as_tensor(value: torch.Tensor | np.ndarray, device: torch.device, *, widen: bool) -> torch.Tensor:
    """Parameters as tensors on ``device``; narrow integer fields widened to int64 (not every
    torch op supports uint16/int16)."""
    if isinstance(value, torch.Tensor):
        t = value
        if widen and t.dtype in (torch.int8, torch.uint8, torch.int16, torch.uint16, torch.uint32):
            t = t.to(torch.int64)
        return t.to(device)
    arr = np.asarray(value)
    if widen and arr.dtype.type in _NARROW_INTS:
        arr = arr.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device)


@dataclass(frozen=True)
class Policy:
    """An augmentation policy: ``crop`` then ``ops``, producing ``output_size`` square views.

    Sampling is a pure function of ``(seed, image index, image size)``, so any worker computes
    the same parameters for an image. Replay is batched over views with per-view parameters.
    """

    name: str
    output_size: int
    crop: CropOp
    ops: tuple[ViewOp, ...] = ()

    def __post_init__(self) -> None:
        if not (1 <= self.output_size <= 8192):
            raise PolicyError(f"output_size must be in [1, 8192], got {self.output_size}")
        names = [f.name for f in self.fields()]
        if len(names) != len(set(names)):
            raise PolicyError(f"policy {self.name!r} has duplicate parameter fields: {names}")

    def fields(self) -> tuple[ParamField, ...]:
        """Every stored parameter field, in order."""
        out: list[ParamField] = list(self.crop.fields())
        for op in self.ops:
            out.extend(op.fields())
        return tuple(out)

    def sample(self, seed: int, index: int, height: int, width: int, views: int) -> dict[str, np.ndarray]:
        """Parameters of ``views`` views of image ``index`` (``height x width``), seeded.

        Returns a dict ``field name -> array [views, *field.shape]`` with the field's dtype.
        """
        rng = image_rng(seed, index)
        out = dict(self.crop.sample(rng, views, height, width, self.output_size))
        for op in self.ops:
            out.update(op.sample(rng, views, self.output_size))
        return out

    def replay(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        params: Mapping[str, torch.Tensor | np.ndarray],
        image_index: torch.Tensor | np.ndarray | None = None,
        *,
        output_size: int | None = None,
    ) -> torch.Tensor:
        """Re-create views from source images and their stored parameters.

        Args:
            images: ``[N,3,H,W]`` uint8 tensor or a list of ``[3,H,W]`` uint8 tensors, on the
                device to compute on.
            params: field name -> ``[B, *shape]`` per-view parameters.
            image_index: ``[B]`` image of each view (default: view ``i`` uses image ``i``).
            output_size: replay at another resolution (boxes are in source pixels).

        Returns:
            ``[B,3,S,S]`` uint8 views on the images' device.
        """
        first = images if isinstance(images, torch.Tensor) else images[0]
        device = first.device
        # crop boxes stay on the CPU: the crop kernel reads them as Python ints
        tp = {k: _as_tensor(v, torch.device("cpu") if k == "crop_box" else device, widen=k != "flip") for k, v in params.items()}
        n = next(iter(tp.values())).shape[0]
        idx = torch.arange(n) if image_index is None else _as_tensor(image_index, torch.device("cpu"), widen=True)
        size = output_size or self.output_size
        views = self.crop.apply(images if isinstance(images, torch.Tensor) else list(images), tp, idx, size)
        for op in self.ops:
            views = op.apply(views, tp)
        return kernels.to_uint8(views)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "output_size": self.output_size,
            "crop": self.crop.to_dict(),
            "ops": [op.to_dict() for op in self.ops],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Policy:
        try:
            crop = op_from_dict(d["crop"])
            ops = tuple(op_from_dict(o) for o in d.get("ops", []))
            if not isinstance(crop, CropOp) or not all(isinstance(o, ViewOp) for o in ops):
                raise PolicyError("policy must be one crop op followed by view ops")
            return cls(name=str(d["name"]), output_size=int(d["output_size"]), crop=crop, ops=ops)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as e:
            raise PolicyError(f"malformed policy description {dict(d)!r}: {e}") from e
