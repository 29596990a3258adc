"""Distillation losses on sparse top-k targets, computed without dense targets.

A sparse target is ``(ids, probs)`` with shapes ``[B, k]`` (what :class:`dr.ReinforcedDataset`
returns, collated). The top-k probabilities do not sum to one; ``rest`` says what the missing
mass means:

* ``"smooth"`` (default, ml-dr's choice): spread ``1 - sum(probs)`` uniformly over the other
  ``C - k`` classes;
* ``"renormalize"``: rescale the top-k probabilities to sum to one;
* ``"drop"``: use the top-k probabilities as they are.

Every loss equals the same loss on the densified target (:func:`densify`), tested.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from dr.errors import ConfigError

__all__ = ["SparseTarget", "densify", "soft_cross_entropy", "kl_divergence"]

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


def _prepare(probs: torch.Tensor, num_classes: int, rest: Rest) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k weights and the per-class weight of each non-top-k class."""
    k = probs.shape[1]
    if rest == "renormalize":
        return probs / probs.sum(1, keepdim=True).clamp_min(1e-12), probs.new_zeros(probs.shape[0])
    if rest == "drop":
        return probs, probs.new_zeros(probs.shape[0])
    if rest == "smooth":
        remaining = (1 - probs.sum(1)).clamp_min(0)
        return probs, remaining / max(num_classes - k, 1)
    raise ConfigError(f"rest must be 'smooth', 'renormalize' or 'drop', got {rest!r}")


def densify(target: SparseTarget, num_classes: int, rest: Rest = "smooth") -> torch.Tensor:
    """The dense ``[B, C]`` target a sparse one stands for (for reference and for mixing)."""
    ids, probs = _split(target)  # type: ignore[misc]
    top, other = _prepare(probs, num_classes, rest)
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
            cross-entropy with ``labels`` (0: soft targets only).
        label_smoothing: for the hard-label term.
        reduction: ``mean`` (default), ``sum`` or ``none``.
    """
    logp = F.log_softmax(logits.float() / temperature, dim=1)
    sparse = _split(target)
    if sparse is None:
        loss = -(target.float() * logp).sum(1)  # type: ignore[union-attr]
    else:
        ids, probs = sparse
        top, other = _prepare(probs, logits.shape[1], rest)
        picked = logp.gather(1, ids)
        loss = -(top * picked).sum(1)
        if rest == "smooth":
            loss = loss - other * (logp.sum(1) - picked.sum(1))
    if labels is not None and hard_weight:
        hard = F.cross_entropy(logits.float(), labels.long(), reduction="none", label_smoothing=label_smoothing)
        loss = (1 - hard_weight) * loss + hard_weight * hard
    return _reduce(loss, reduction)


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
