"""MixUp and CutMix between a view and a partner view, with stored partner and lambda.

The teacher labels the *mixed image* (the paper's choice), so the store keeps one soft label
per (mixed) view. A view's partner is another image of the same store chunk (the partner
pool), drawn from the view's own keyed stream, so a build decodes no image twice per chunk. The
partner's own crop/flip/ops are stored beside the view's (fields prefixed ``partner_``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from dr.errors import PolicyError
from dr.policy import kernels
from dr.policy.ops import Op, ParamField
from dr.policy.rng import KeyedRNG

__all__ = ["Mix", "MIX_NONE", "MIX_MIXUP", "MIX_CUTMIX"]

MIX_NONE, MIX_MIXUP, MIX_CUTMIX = 0, 1, 2


@dataclass(frozen=True)
class Mix(Op):
    """Mix each view with probability ``p_mixup`` (MixUp) or ``p_cutmix`` (CutMix).

    ``lambda ~ Beta(alpha, alpha)`` is the base view's weight (rounded to float16 before use,
    so the stored value is exact). CutMix pastes the partner inside a box of area
    ``(1 - lambda) S^2`` (timm's ``rand_bbox``); its stored lambda is the actual kept area.
    """

    kind: ClassVar[str] = "mix"
    p_mixup: float = 0.25
    p_cutmix: float = 0.25
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.p_mixup < 0 or self.p_cutmix < 0 or self.p_mixup + self.p_cutmix > 1 or self.alpha <= 0:
            raise PolicyError(f"mix needs p_mixup, p_cutmix >= 0 with sum <= 1 and alpha > 0; got {self}")

    def fields(self) -> tuple[ParamField, ...]:
        return (
            ParamField("mix_kind", "uint8", (), "0 none, 1 MixUp, 2 CutMix"),
            ParamField("mix_partner", "uint32", (), "index of the partner image (same store chunk)"),
            ParamField("mix_lambda", "float16", (), "weight of this view (1 - partner's share)"),
            ParamField("mix_box", "uint16", (4,), "CutMix box (top, left, h, w) in output pixels", output_pixels=True),
        )

    def draw_partners(self, rng: KeyedRNG, own: np.ndarray, pool_size: int) -> np.ndarray:
        """Partner position of each view: uniform over the ``pool_size`` pool positions other
        than the view's own position ``own`` (itself when the pool holds one image)."""
        own = np.asarray(own, dtype=np.int64)
        draw = rng.integers(0, max(pool_size - 1, 1), size=len(own))
        if pool_size < 2:
            return own.copy()
        return draw + (draw >= own)

    def sample(self, rng: KeyedRNG, n: int, size: int) -> dict[str, np.ndarray]:
        u = rng.random(size=n)
        kind = np.where(u < self.p_mixup, MIX_MIXUP, np.where(u < self.p_mixup + self.p_cutmix, MIX_CUTMIX, MIX_NONE))
        lam = rng.beta(self.alpha, self.alpha, size=n).astype(np.float16).astype(np.float64)
        cy, cx = rng.integers(0, size, size=n), rng.integers(0, size, size=n)
        cut = np.sqrt(1.0 - lam)
        ch, cw = (size * cut).astype(np.int64), (size * cut).astype(np.int64)
        y0, y1 = np.clip(cy - ch // 2, 0, size), np.clip(cy + ch // 2, 0, size)
        x0, x1 = np.clip(cx - cw // 2, 0, size), np.clip(cx + cw // 2, 0, size)
        box = np.stack([y0, x0, y1 - y0, x1 - x0], axis=1)
        cut_lam = 1.0 - (box[:, 2] * box[:, 3]) / float(size * size)
        lam = np.where(kind == MIX_CUTMIX, cut_lam, np.where(kind == MIX_MIXUP, lam, 1.0))
        box = box * (kind == MIX_CUTMIX)[:, None]
        return {"mix_kind": kind.astype(np.uint8), "mix_lambda": lam.astype(np.float16), "mix_box": box.astype(np.uint16)}

    def combine(self, base: torch.Tensor, partner: torch.Tensor, mixed: np.ndarray, params: Mapping[str, np.ndarray]) -> torch.Tensor:
        """Mix uint8 views in place: ``base [B,3,S,S]``; ``partner [M,3,S,S]`` are the partners
        of the views at positions ``mixed [M]`` (host indices); ``params`` hold every view's
        fields. Batched, grouped on the host: MixUp views with a ``[m,1,1,1]`` lambda, CutMix
        views with box masks; only mixed views are read and written."""
        dev = base.device
        mixed = np.asarray(mixed, dtype=np.int64)
        kind = np.asarray(params["mix_kind"])[mixed]
        mu, cm = np.flatnonzero(kind == MIX_MIXUP), np.flatnonzero(kind == MIX_CUTMIX)
        # MixUp: lam * base + (1 - lam) * partner, rounded
        lam = torch.from_numpy(np.asarray(params["mix_lambda"])[mixed[mu]].astype(np.float32)).to(dev).view(-1, 1, 1, 1)
        b = base.index_select(0, torch.from_numpy(mixed[mu]).to(dev)).to(torch.float32)
        p = partner.index_select(0, torch.from_numpy(mu).to(dev)).to(torch.float32)
        mixup = (lam * b + (1 - lam) * p).round_().clamp_(0, 255).to(torch.uint8)
        base.index_copy_(0, torch.from_numpy(mixed[mu]).to(dev), mixup)
        # CutMix: the partner inside the box
        boxes = torch.from_numpy(np.asarray(params["mix_box"], dtype=np.int64).reshape(-1, 4)[mixed[cm]]).to(dev)
        rows = torch.from_numpy(mixed[cm]).to(dev)
        cut = torch.where(
            kernels.box_mask(boxes, base.shape[-2], base.shape[-1]),
            partner.index_select(0, torch.from_numpy(cm).to(dev)),
            base.index_select(0, rows),
        )
        return base.index_copy_(0, rows, cut)
