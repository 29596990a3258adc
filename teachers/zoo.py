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

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CifarResNet",
    "ResNet9",
    "cifar_resnet",
    "pooled_projection",
    "resnet64",
    "resnet9",
    "tiny_cnn",
]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _cfg(num_classes: int, size: int = 32, mean: tuple[float, ...] = CIFAR_MEAN, std: tuple[float, ...] = CIFAR_STD) -> dict[str, Any]:
    return {
        "input_size": (3, size, size),
        "interpolation": "bilinear",
        "mean": mean,
        "std": std,
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
        stem_stride: stride of the first convolution: 1 for 32-px inputs, 2 for 64-px inputs
            (the stages then run at the same 32/16/8-px resolutions).
    """

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10, stem_stride: int = 1) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise TeacherError(f"CifarResNet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                layers.append(_Block(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.pretrained_cfg = _cfg(num_classes)
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


def resnet64(depth: int = 20, width: int = 32, num_classes: int = 100) -> CifarResNet:
    """A :class:`CifarResNet` for 64-px images (Tiny-ImageNet): a stride-2 stem, ImageNet mean/std.

    Teacher spec ``python:dr.teachers.zoo:resnet64@weights.safetensors?depth=20&width=32``.
    """
    model = CifarResNet(depth=depth, width=width, num_classes=num_classes, stem_stride=2)
    model.pretrained_cfg = _cfg(num_classes, 64, IMAGENET_MEAN, IMAGENET_STD)
    return model


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """The ResNet-9 of Page's fast CIFAR-10 training (DAWNBench), sized for 64-px inputs.

    A stride-2 stem, then ``conv(2w) + residual`` at 32 px, ``conv(4w) + pool``,
    ``conv(8w) + pool + residual`` at 8 px, global max pooling and a linear classifier whose
    logits are scaled by 1/8 (as in the original): a plain, wide, shallow network, unlike the
    deep narrow :class:`CifarResNet`.

    Args:
        width: channels of the stem (24 gives ~0.94 M parameters at 100 classes).
        num_classes: size of the classifier.
        input_size: the image size the network is meant for (recorded in ``pretrained_cfg``).
    """

    def __init__(self, width: int = 24, num_classes: int = 100, input_size: int = 64) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(3, w, stride=2),
            _conv_bn(w, 2 * w),
            _Residual(2 * w),
            _conv_bn(2 * w, 4 * w),
            nn.MaxPool2d(2),
            _conv_bn(4 * w, 8 * w),
            nn.MaxPool2d(2),
            _Residual(8 * w),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(8 * w, num_classes)
        self.pretrained_cfg = _cfg(num_classes, input_size, IMAGENET_MEAN, IMAGENET_STD)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)) * 0.125


def resnet9(width: int = 24, num_classes: int = 100, input_size: int = 64) -> ResNet9:
    """Factory for :class:`ResNet9` (teacher spec ``python:dr.teachers.zoo:resnet9``)."""
    return ResNet9(width=width, num_classes=num_classes, input_size=input_size)


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
    model.pretrained_cfg = _cfg(num_classes)  # type: ignore[assignment]
    return model


def pooled_projection(num_classes: int = 1000, grid: int = 4, input_size: int = 32) -> nn.Module:
    """A teacher that costs almost nothing: the view average-pooled to ``grid x grid`` and a
    random linear projection to ``num_classes`` logits (``python:dr.teachers.zoo:pooled_projection``,
    with ``--allow-random-teachers``). Its labels mean nothing; it exists to measure everything
    else a build does -- decoding, sampling, replay, writing -- at ImageNet's scale
    (``bench/imagenet_scale.py``).

    Args:
        num_classes: the label space (1,000: ImageNet's).
        grid: the pooled grid's side.
        input_size: the view size it expects (recorded in ``pretrained_cfg``).
    """
    model = nn.Sequential(nn.AdaptiveAvgPool2d(grid), nn.Flatten(), nn.Linear(3 * grid * grid, num_classes))
    model.pretrained_cfg = _cfg(num_classes, input_size, IMAGENET_MEAN, IMAGENET_STD)  # type: ignore[assignment]
    return model
