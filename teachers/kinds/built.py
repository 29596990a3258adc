"""What a kind's builder returns: the model, and what it learnt about its classes and inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Built"]


@dataclass
class Built:
    """A builder's model plus what it knows about the model's classes and preprocessing.

    Attributes:
        model: the network, weights loaded (or randomly initialised).
        classes: its class names, when the kind knows them (torchvision weights, a program's
            metadata).
        classes_from: where ``classes`` came from.
        preprocess: mean/std/input size/interpolation the kind knows (a partial
            :meth:`~dr.teachers.preprocess.Preprocess.to_dict`).
        preprocess_from: where ``preprocess`` came from.
    """

    model: nn.Module
    classes: tuple[str, ...] | None = None
    classes_from: str | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    preprocess_from: str | None = None
