"""Distillation losses on sparse top-k targets, computed without dense targets.

A sparse target is ``(ids, probs)`` with shapes ``[B, k]`` (what :class:`dr.ReinforcedDataset`
returns, collated). The top-k probabilities do not sum to one; ``rest`` says what the missing
mass means:

* ``"smooth"`` (default, ml-dr's choice): spread ``1 - sum(probs)`` uniformly over the other
  ``C - k`` classes;
* ``"renormalize"``: rescale the top-k probabilities to sum to one;
* ``"drop"``: use the top-k probabilities as they are.

Every loss equals the same loss on the densified target (:func:`densify`), tested.

The hard-label term: ``soft_cross_entropy(..., labels=, hard_weight=w)`` mixes in
cross-entropy with the dataset label, and :class:`HardLabelSchedule` gives ``w`` per step
(constant, or decaying to 0 over training). ``target_temperature`` sharpens (``< 1``) or
softens (``> 1``) the teachers' distribution before it is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from dr.errors import ConfigError

__all__ = ["SparseTarget", "HardLabelSchedule", "densify", "soft_cross_entropy", "kl_divergence"]

SparseTarget = tuple[torch.Tensor, torch.Tensor]
"""A sparse soft target: ``(ids [B, k], probs [B, k])``, as the Dataset and ``DeviceReplay`` serve it."""
Rest = Literal["smooth", "renormalize", "drop"]


def _split(target: SparseTarget | torch.Tensor) -> SparseTarget | None:
    if isinstance(target, torch.Tensor):
        return None
    if not isinstance(target, (tuple, list)) or len(target) != 2:
        raise ConfigError("a sparse target is a pair (ids [B,k], probs [B,k]); a dense target is a [B,C] tensor")
    ids, probs = target
    return ids.long(), probs.float()


def _prepare(probs: torch.Tensor, num_classes: int, rest: Rest, target_temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k weights and the per-class weight of each non-top-k class (``target_temperature``
    applied: every class's probability raised to ``1 / T`` and the whole renormalised)."""
    k = probs.shape[1]
    if rest == "renormalize":
        top, other = probs / probs.sum(1, keepdim=True).clamp_min(1e-12), probs.new_zeros(probs.shape[0])
    elif rest == "drop":
        top, other = probs, probs.new_zeros(probs.shape[0])
    elif rest == "smooth":
        remaining = (1 - probs.sum(1)).clamp_min(0)
        top, other = probs, remaining / max(num_classes - k, 1)
    else:
        raise ConfigError(f"rest must be 'smooth', 'renormalize' or 'drop', got {rest!r}")
    if target_temperature == 1.0:
        return top, other
    if not target_temperature > 0:
        raise ConfigError(f"target_temperature must be > 0 (< 1 sharpens, > 1 softens), got {target_temperature}")
    inv = 1.0 / target_temperature
    mass = top.sum(1) + other * max(num_classes - k, 0) if rest != "drop" else top.sum(1)
    top_t, other_t = top.clamp_min(0).pow(inv), other.clamp_min(0).pow(inv)
    total_t = top_t.sum(1) + (other_t * max(num_classes - k, 0) if rest != "drop" else 0)
    scale = mass / total_t.clamp_min(1e-30)  # keep the target's total mass ("drop" keeps its top-k mass)
    return top_t * scale[:, None], other_t * scale


def densify(target: SparseTarget, num_classes: int, rest: Rest = "smooth", target_temperature: float = 1.0) -> torch.Tensor:
    """The dense ``[B, C]`` target a sparse one stands for (for reference and for mixing)."""
    ids, probs = _split(target)  # type: ignore[misc]
    top, other = _prepare(probs, num_classes, rest, target_temperature)
    dense = other[:, None].expand(-1, num_classes).clone()
    return dense.scatter_(1, ids, top)


def soft_cross_entropy(
    logits: torch.Tensor,
    target: SparseTarget | torch.Tensor,
    *,
    temperature: float = 1.0,
    rest: Rest = "smooth",
    labels: torch.Tensor | None = None,
    hard_weight: float = 0.0,
    label_smoothing: float = 0.0,
    target_temperature: float = 1.0,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """Cross-entropy ``-sum_c t_c log softmax(z / T)_c`` against a soft target.

    Args:
        logits: ``[B, C]`` student logits.
        target: sparse ``(ids, probs)`` or a dense ``[B, C]`` distribution.
        temperature: divides the student logits (scale the loss by ``T**2`` yourself if wanted).
        rest: meaning of the mass outside the top-k (see the module docstring).
        labels: hard labels ``[B]`` for the optional hard-label term.
        hard_weight: the loss is ``(1 - hard_weight)`` x the soft term + ``hard_weight`` x
            cross-entropy with ``labels`` (0: soft targets only); a :class:`HardLabelSchedule`
            gives it per step.
        label_smoothing: for the hard-label term.
        target_temperature: applied to the target: each class's probability raised to
            ``1 / target_temperature``, renormalised (``< 1`` sharpens, 1 leaves it as stored).
        reduction: ``mean`` (default), ``sum`` or ``none``.
    """
    if hard_weight and labels is None:
        raise ConfigError(
            f"hard_weight={hard_weight} needs labels=: pass the batch's dataset labels (ReinforcedDataset(return_labels=True), "
            "DeviceReplay.batch(..., return_labels=True))"
        )
    if not 0.0 <= hard_weight <= 1.0:
        raise ConfigError(f"hard_weight must be in [0, 1] (0: soft targets only, 1: hard labels only), got {hard_weight}")
    logp = F.log_softmax(logits.float() / temperature, dim=1)
    sparse = _split(target)
    if sparse is None:
        t = target.float()  # type: ignore[union-attr]
        if target_temperature != 1.0:
            t = t.clamp_min(0).pow(1.0 / target_temperature)
            t = t / t.sum(1, keepdim=True).clamp_min(1e-30)
        loss = -(t * logp).sum(1)
    else:
        ids, probs = sparse
        top, other = _prepare(probs, logits.shape[1], rest, target_temperature)
        picked = logp.gather(1, ids)
        loss = -(top * picked).sum(1)
        if rest == "smooth":
            loss = loss - other * (logp.sum(1) - picked.sum(1))
    if labels is not None and hard_weight:
        hard = F.cross_entropy(logits.float(), labels.long(), reduction="none", label_smoothing=label_smoothing)
        loss = (1 - hard_weight) * loss + hard_weight * hard
    return _reduce(loss, reduction)


@dataclass(frozen=True)
class HardLabelSchedule:
    """The hard-label weight of :func:`soft_cross_entropy` over training.

    ``schedule(progress)`` with ``progress = step / total_steps`` in ``[0, 1]`` gives the
    weight: ``start`` throughout (``shape="constant"``), or falling from ``start`` to ``end``
    along a straight line (``"linear"``) or a half cosine (``"cosine"``). A decaying weight
    gives short trainings the label's signal early and ends on the teachers' soft targets
    (whose calibration the hard term would otherwise lose). ``docs/how-to/training.md`` shows
    its use and what has been measured so far.

    Args:
        start: the weight at the start of training, in ``[0, 1]``.
        end: the weight at the end (``linear``/``cosine``), in ``[0, 1]``.
        shape: ``"constant"``, ``"linear"`` or ``"cosine"``.

    Raises:
        ConfigError: a weight outside ``[0, 1]`` or an unknown shape.
    """

    start: float = 0.5
    end: float = 0.0
    shape: Literal["constant", "linear", "cosine"] = "linear"

    def __post_init__(self) -> None:
        if not (0.0 <= self.start <= 1.0 and 0.0 <= self.end <= 1.0):
            raise ConfigError(f"hard-label weights must be in [0, 1], got start={self.start}, end={self.end}")
        if self.shape not in ("constant", "linear", "cosine"):
            raise ConfigError(f"shape must be 'constant', 'linear' or 'cosine', got {self.shape!r}")

    def __call__(self, progress: float) -> float:
        """The weight at ``progress`` (the share of training done, clipped to ``[0, 1]``)."""
        if self.shape == "constant":
            return float(self.start)
        t = min(1.0, max(0.0, float(progress)))
        f = t if self.shape == "linear" else (1 - math.cos(math.pi * t)) / 2
        return float(self.start + (self.end - self.start) * f)

    def at(self, step: int, total_steps: int) -> float:
        """The weight at optimizer step ``step`` of ``total_steps``."""
        return self(step / max(1, total_steps - 1))

    def describe(self) -> str:
        """A short name for records and tables (``"0.5"``, ``"0.5->0 linear"``)."""
        if self.shape == "constant" or self.start == self.end:
            return f"{self.start:g}"
        return f"{self.start:g}->{self.end:g} {self.shape}"


def kl_divergence(
    logits: torch.Tensor,
    target: SparseTarget | torch.Tensor,
    *,
    temperature: float = 1.0,
    rest: Rest = "smooth",
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """``KL(t || softmax(z / T)) * T**2`` (Hinton et al.'s scaling) against a soft target."""
    ce = soft_cross_entropy(logits, target, temperature=temperature, rest=rest, reduction="none")
    sparse = _split(target)
    if sparse is None:
        t = target.float()  # type: ignore[union-attr]
        entropy = -(t * t.clamp_min(1e-12).log()).sum(1)
    else:
        ids, probs = sparse
        top, other = _prepare(probs, logits.shape[1], rest)
        entropy = -(top * top.clamp_min(1e-12).log()).sum(1)
        if rest == "smooth":
            entropy = entropy - (logits.shape[1] - ids.shape[1]) * other * other.clamp_min(1e-12).log()
    return _reduce((ce - entropy) * temperature**2, reduction)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ConfigError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
