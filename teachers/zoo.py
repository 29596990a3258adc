"""Small CIFAR-sized networks the project trains itself (demo teacher, tests).

These are ordinary ``torch.nn.Module`` factories, usable as teacher specs through
``python:dr.teachers.zoo:cifar_resnet`` (plus ``@weights.safetensors``). Each model carries
a timm-style ``pretrained_cfg`` so preprocessing resolves the same way as for timm models.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dr.errors import TeacherError

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "CifarResNet", "cifar_resnet", "tiny_cnn"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _cifar_cfg(num_classes: int) -> dict[str, Any]:
    return {
        "input_size": (3, 32, 32),
        "interpolation": "bilinear",
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "crop_pct": 1.0,
        "crop_mode": "center",
        "num_classes": num_classes,
    }


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016): depth ``6n + 2``, three stages.

    Args:
        depth: total depth, ``6n + 2`` (20, 32, 44, 56, ...).
        width: channels of the first stage (16 in the paper); stages use ``w, 2w, 4w``.
        num_classes: size of the classifier.
    """

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise TeacherError(f"CifarResNet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                layers.append(_Block(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.pretrained_cfg = _cifar_cfg(num_classes)
        self.num_classes = num_classes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def cifar_resnet(depth: int = 20, width: int = 16, num_classes: int = 10) -> CifarResNet:
    """Factory for :class:`CifarResNet` (teacher spec ``python:dr.teachers.zoo:cifar_resnet``)."""
    return CifarResNet(depth=depth, width=width, num_classes=num_classes)


def tiny_cnn(num_classes: int = 10, width: int = 8) -> nn.Module:
    """A few-thousand-parameter CNN for fast tests (``python:dr.teachers.zoo:tiny_cnn``)."""
    model = nn.Sequential(
        nn.Conv2d(3, width, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )
    model.pretrained_cfg = _cifar_cfg(num_classes)  # type: ignore[assignment]
    return model
