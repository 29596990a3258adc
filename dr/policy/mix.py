"""MixUp and CutMix between a view and a partner view, with stored partner and lambda.

The teacher labels the *mixed image* (the paper's choice), so the store keeps one soft label
per (mixed) view. A view's partner is another image of the same store chunk (the partner
pool), drawn from its own seeded stream, so a build decodes no image twice per chunk. The
partner's own crop/flip/ops are stored beside the view's (fields prefixed ``partner_``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from dr.errors import PolicyError
from dr.policy.ops import Op, ParamField

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

    def partners(self, seed: int, index: int, views: int, pool: tuple[int, int]) -> np.ndarray:
        """Partner image of each view: uniform over the pool ``[start, stop)`` minus ``index``."""
        start, stop = pool
        rng = np.random.default_rng([int(seed), int(index), 1])
        if stop - start < 2:
            return np.full(views, index, dtype=np.int64)
        draw = rng.integers(start, stop - 1, size=views)
        return draw + (draw >= index)

    def sample(self, rng: np.random.Generator, n: int, size: int) -> dict[str, np.ndarray]:
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

    def combine(self, base: torch.Tensor, partner: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mix uint8 views ``base`` and ``partner`` (``[B,3,S,S]``) per the stored params."""
        out = base.clone()
        kinds = params["mix_kind"].tolist()
        lams = params["mix_lambda"].to(torch.float32).tolist()
        boxes = params["mix_box"].tolist()
        for j, kind in enumerate(kinds):
            if kind == MIX_MIXUP:
                lam = torch.tensor(lams[j], dtype=torch.float32, device=base.device)
                mixed = lam * base[j].to(torch.float32) + (1 - lam) * partner[j].to(torch.float32)
                out[j] = mixed.round().clamp_(0, 255).to(torch.uint8)
            elif kind == MIX_CUTMIX:
                top, left, h, w = boxes[j]
                out[j, :, top : top + h, left : left + w] = partner[j, :, top : top + h, left : left + w]
        return out
