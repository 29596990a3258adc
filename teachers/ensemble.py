"""Ensembles of teachers and sparse top-k soft labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dr.errors import TeacherError
from teachers.load import Teacher, load_teacher
from teachers.precision import fp32_head, resolved_precision
from teachers.spec import TeacherSpec

__all__ = ["Ensemble", "topk"]


class Ensemble(nn.Module):
    """Average the teachers' probabilities (weighted), each at ``temperature``.

    ``p = sum_i w_i softmax(z_i / T) / sum_i w_i`` -- the paper's ensemble rule.
    """

    weights: torch.Tensor

    def __init__(self, teachers: Sequence[Teacher], temperature: float = 1.0, precision: str = "fp32") -> None:
        super().__init__()
        if not teachers:
            raise TeacherError("an ensemble needs at least one teacher: pass --teacher SPEC")
        if not temperature > 0:
            raise TeacherError(f"temperature must be > 0, got {temperature}")
        self.members: list[Teacher] = list(teachers)
        self.teachers = nn.ModuleList(teachers)
        self.temperature = float(temperature)
        if precision not in ("auto", "fp32", "bf16"):
            raise TeacherError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        self.precision = precision
        if precision != "fp32":  # bf16 bodies, fp32 classifier heads (see teachers.precision)
            for t in self.members:
                fp32_head(t.model)
        w = torch.tensor([t.spec.weight for t in teachers], dtype=torch.float32)
        self.register_buffer("weights", w / w.sum(), persistent=False)

    @classmethod
    def from_specs(cls, specs: Sequence[str | TeacherSpec], temperature: float = 1.0, precision: str = "fp32") -> Ensemble:
        return cls([load_teacher(s) for s in specs], temperature, precision)

    def optimize(self, *, channels_last: bool = True, compile: bool = False) -> Ensemble:
        """Channels-last weights and, optionally, ``torch.compile`` of each teacher's network."""
        for t in self.members:
            if channels_last:
                t.model.to(memory_format=torch.channels_last)
            if compile:
                t.model = torch.compile(t.model, dynamic=False)  # type: ignore[assignment]
        return self

    @torch.inference_mode()
    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 views ``[B,3,H,W]`` -> ensemble probabilities ``[B,C]`` (float32)."""
        probs: torch.Tensor | None = None
        bf16 = resolved_precision(self.precision, views.device.type) == "bf16"
        for i, teacher in enumerate(self.members):
            with torch.autocast(views.device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = teacher(views).float()
            p = torch.softmax(logits / self.temperature, dim=1) * self.weights[i]
            if probs is not None and p.shape != probs.shape:
                raise TeacherError(
                    f"teacher {teacher.spec} predicts {p.shape[1]} classes but {self.members[0].spec} predicts {probs.shape[1]}: all teachers must share the label space"
                )
            probs = p if probs is None else probs + p
        if probs is None:
            raise TeacherError("empty ensemble")
        return probs

    def describe(self) -> dict[str, Any]:
        return {
            "rule": "weighted_mean_of_probabilities",
            "temperature": self.temperature,
            "teachers": [t.describe() for t in self.members],
        }  # type: ignore[operator]


def topk(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` class ids and probabilities, sorted descending (ties: lower id first)."""
    if k < 1 or k > probs.shape[1]:
        raise TeacherError(f"top-k must be in [1, {probs.shape[1]}] (number of classes), got {k}")
    # Stable order for ties: sort by (-prob, id) via a stable descending sort.
    values, ids = torch.sort(probs, dim=1, descending=True, stable=True)
    return ids[:, :k], values[:, :k]
