"""A policy: one crop op followed by view ops, with seeded sampling and batched replay."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from dr.errors import PolicyError
from dr.policy import kernels
from dr.policy.mix import Mix
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


PARTNER = "partner_"


@dataclass(frozen=True)
class Policy:
    """An augmentation policy: ``crop`` then ``ops``, optionally ``mix`` with a partner view;
    producing ``output_size`` square views.

    Sampling is a pure function of ``(seed, image index, image size[, partner sizes])``, so any
    worker computes the same parameters for an image. Replay is batched over views with
    per-view parameters; a mixed view's partner goes through the same chain with its own
    stored parameters (fields prefixed ``partner_``).
    """

    name: str
    output_size: int
    crop: CropOp
    ops: tuple[ViewOp, ...] = ()
    mix: Mix | None = None

    def __post_init__(self) -> None:
        if not (1 <= self.output_size <= 8192):
            raise PolicyError(f"output_size must be in [1, 8192], got {self.output_size}")
        names = [f.name for f in self.fields()]
        if len(names) != len(set(names)):
            raise PolicyError(f"policy {self.name!r} has duplicate parameter fields: {names}")

    def chain_fields(self) -> tuple[ParamField, ...]:
        out: list[ParamField] = list(self.crop.fields())
        for op in self.ops:
            out.extend(op.fields())
        return tuple(out)

    def fields(self) -> tuple[ParamField, ...]:
        """Every stored parameter field, in order."""
        chain = self.chain_fields()
        if self.mix is None:
            return chain
        partner = tuple(replace(f, name=PARTNER + f.name, doc=f"partner view: {f.doc}") for f in chain)
        return chain + self.mix.fields() + partner

    def partners(self, seed: int, index: int, views: int, pool: tuple[int, int]) -> np.ndarray | None:
        """Partner image of each view (``None`` without mixing); ``pool`` = the store chunk."""
        return None if self.mix is None else self.mix.partners(seed, index, views, pool)

    def _sample_chain(self, rng: np.random.Generator, n: int, height: int, width: int) -> dict[str, np.ndarray]:
        out = dict(self.crop.sample(rng, n, height, width, self.output_size))
        for op in self.ops:
            out.update(op.sample(rng, n, self.output_size))
        return out

    def sample(
        self,
        seed: int,
        index: int,
        height: int,
        width: int,
        views: int,
        *,
        partners: np.ndarray | None = None,
        partner_sizes: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Parameters of ``views`` views of image ``index`` (``height x width``), seeded.

        With mixing, ``partners`` (from :meth:`partners`) and their ``partner_sizes``
        (``[views, 2]``: height, width) are required.

        Returns a dict ``field name -> array [views, *field.shape]`` with the field's dtype.
        """
        rng = image_rng(seed, index)
        out = self._sample_chain(rng, views, height, width)
        if self.mix is None:
            return out
        if partners is None or partner_sizes is None:
            raise PolicyError(f"policy {self.name!r} mixes views: pass partners= and partner_sizes=")
        out.update(self.mix.sample(rng, views, self.output_size))
        mixed = out["mix_kind"] != 0
        out["mix_partner"] = np.where(mixed, partners, 0).astype(np.uint32)
        per_view = [self._sample_chain(rng, 1, int(h), int(w)) for h, w in np.asarray(partner_sizes)]
        for name in per_view[0]:
            stacked = np.concatenate([p[name] for p in per_view])
            out[PARTNER + name] = stacked * mixed.reshape(-1, *([1] * (stacked.ndim - 1))).astype(stacked.dtype)
        return out

    def _chain(
        self, images: torch.Tensor | list[torch.Tensor], params: Mapping[str, torch.Tensor], idx: torch.Tensor, size: int
    ) -> torch.Tensor:
        views = self.crop.apply(images, params, idx, size)
        for op in self.ops:
            views = op.apply(views, params)
        return views

    def replay(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        params: Mapping[str, torch.Tensor | np.ndarray],
        image_index: torch.Tensor | np.ndarray | None = None,
        *,
        partner_index: torch.Tensor | np.ndarray | None = None,
        output_size: int | None = None,
    ) -> torch.Tensor:
        """Re-create views from source images and their stored parameters.

        Args:
            images: ``[N,3,H,W]`` uint8 tensor or a list of ``[3,H,W]`` uint8 tensors, on the
                device to compute on; includes the partner images of mixed views.
            params: field name -> ``[B, *shape]`` per-view parameters.
            image_index: ``[B]`` position in ``images`` of each view's image (default: ``i``).
            partner_index: ``[B]`` position in ``images`` of each view's partner (mixing only;
                needed when any ``mix_kind`` is non-zero).
            output_size: replay at another resolution (crop boxes are in source pixels; boxes in
                output pixels are rescaled).

        Returns:
            ``[B,3,S,S]`` uint8 views on the images' device.
        """
        cpu = torch.device("cpu")
        tp = {k: _as_tensor(v, cpu, widen=True) for k, v in params.items()}
        n = next(iter(tp.values())).shape[0]
        idx = torch.arange(n) if image_index is None else _as_tensor(image_index, cpu, widen=True)
        size = output_size or self.output_size
        if size != self.output_size:
            for f in self.fields():
                if f.output_pixels and f.name in tp:
                    tp[f.name] = (tp[f.name].to(torch.float64) * size / self.output_size).round().to(torch.int64)
        imgs = images if isinstance(images, torch.Tensor) else list(images)
        views = self._chain(imgs, tp, idx, size)
        if self.mix is None:
            return kernels.to_uint8(views)
        sel = tp["mix_kind"].nonzero().flatten()
        if sel.numel():
            if partner_index is None:
                raise PolicyError("mixed views need partner_index= (the position of each view's partner image)")
            pidx = _as_tensor(partner_index, cpu, widen=True)[sel]
            partner_params = {k[len(PARTNER) :]: v[sel] for k, v in tp.items() if k.startswith(PARTNER)}
            partner_views = self._chain(imgs, partner_params, pidx, size)
            mix_params = {k: tp[k][sel] for k in ("mix_kind", "mix_lambda", "mix_box")}
            views[sel.to(views.device)] = self.mix.combine(views[sel.to(views.device)], partner_views, mix_params)
        return kernels.to_uint8(views)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "output_size": self.output_size,
            "crop": self.crop.to_dict(),
            "ops": [op.to_dict() for op in self.ops],
            "mix": self.mix.to_dict() if self.mix is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Policy:
        try:
            crop = op_from_dict(d["crop"])
            ops = tuple(op_from_dict(o) for o in d.get("ops", []))
            mix = op_from_dict(d["mix"]) if d.get("mix") else None
            if not isinstance(crop, CropOp) or not all(isinstance(o, ViewOp) for o in ops) or not (mix is None or isinstance(mix, Mix)):
                raise PolicyError("policy must be one crop op, then view ops, then an optional mix")
            return cls(name=str(d["name"]), output_size=int(d["output_size"]), crop=crop, ops=ops, mix=mix)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PolicyError(f"malformed policy description {dict(d)!r}: {e}") from e
