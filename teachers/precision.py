"""The teachers' arithmetic: which precision a build really uses, and an fp32 classifier head.

bf16 autocast speeds up the teachers' bodies on CUDA and on CPUs with native bf16 (AVX-512
BF16, AMX), but bf16 logits (8 significant bits) flip near-tied top-1 predictions (0.4 % of
views on the demo teacher, measured). So under bf16 the classifier head runs in fp32 on fp32
features (:func:`fp32_head`), and the softmax is always fp32 (:class:`teachers.Ensemble`).
The *resolved* precision (what actually runs on the device kind) is recorded in the store
header, so a resume on other math is refused.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Fp32Head", "fp32_head", "resolved_precision"]


def resolved_precision(precision: str, device_type: str) -> str:
    """What ``precision`` (``auto``, ``fp32``, ``bf16``) means on ``device_type``: ``bf16`` is
    bf16 autocast on any device, ``auto`` is bf16 on CUDA and fp32 elsewhere (a CPU without
    native bf16 emulates it, slower than fp32, so a CPU runs bf16 only when asked)."""
    if precision == "bf16" or (precision == "auto" and device_type == "cuda"):
        return "bf16"
    return "fp32"


class Fp32Head(nn.Module):
    """Runs ``head`` in fp32 on fp32 inputs, with autocast disabled around it."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.head(x.float())  # type: ignore[no-any-return]


def _classifier(model: nn.Module) -> nn.Module | None:
    """The classifier head: timm's ``get_classifier()``, else the last ``nn.Linear``."""
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        try:
            head = getter()
        except Exception:  # noqa: BLE001 - not timm's method after all
            head = None
        if isinstance(head, nn.Linear):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def fp32_head(model: nn.Module) -> bool:
    """Wrap ``model``'s classifier head in :class:`Fp32Head` in place; ``False`` when there is
    none to wrap (TorchScript/exported programs, no ``nn.Linear``, already wrapped). Wrapping a
    layer that is not the head only costs speed, never accuracy."""
    if isinstance(model, (torch.jit.ScriptModule, torch.fx.GraphModule)):
        return False
    if any(isinstance(m, Fp32Head) for m in model.modules()):
        return False
    head = _classifier(model)
    if head is None:
        return False
    for name, module in model.named_modules():
        if module is head and name:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, Fp32Head(head))
            return True
    return False
