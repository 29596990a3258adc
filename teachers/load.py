"""Load teacher models from specs, with their preprocessing, in eval mode.

Weights never unpickle arbitrary objects: ``.safetensors`` through safetensors, anything else
through ``torch.load(weights_only=True)``. Hub downloads happen only for ``pretrained=true``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dr.errors import TeacherError
from teachers.spec import TeacherSpec, parse_teacher_spec

__all__ = ["Preprocess", "Teacher", "build_model", "load_teacher", "load_state_dict", "file_sha256"]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (recorded in the store header for each teacher's weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Preprocess:
    """How views become teacher inputs: resize to ``input_size`` (if set), scale, normalise."""

    input_size: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size) if self.input_size else None,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a weights file without unpickling objects; unwraps common checkpoint wrappers."""
    p = Path(path)
    if not p.is_file():
        raise TeacherError(f"teacher weights {str(p)!r} not found: check the path after '@' in the teacher spec")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TeacherError(
            f"cannot read teacher weights {str(p)!r}: {type(e).__name__}: {e}. Use .safetensors or a plain state_dict saved with torch.save"
        ) from e
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TeacherError(f"teacher weights {str(p)!r} are not a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _apply_weights(model: nn.Module, spec: TeacherSpec) -> None:
    if spec.weights is None:
        return
    state = load_state_dict(spec.weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise TeacherError(
            f"weights {spec.weights!r} do not fit {spec.kind}:{spec.name}: {str(e).splitlines()[0]} -- check the architecture name and its options (num_classes, ...)"
        ) from e


def _build_timm(spec: TeacherSpec) -> nn.Module:
    import timm

    try:
        kwargs: dict[str, Any] = dict(spec.kwargs)
        model = timm.create_model(spec.name, pretrained=spec.pretrained and spec.weights is None, **kwargs)
    except RuntimeError as e:
        raise TeacherError(f"timm cannot create {spec.name!r}: {e}. List names with timm.list_models()") from e
    _apply_weights(model, spec)
    return model


def _build_torchvision(spec: TeacherSpec) -> nn.Module:
    import torchvision

    if spec.name not in torchvision.models.list_models():
        raise TeacherError(f"torchvision has no model {spec.name!r}; see torchvision.models.list_models()")
    weights = "DEFAULT" if (spec.pretrained and spec.weights is None) else None
    model = torchvision.models.get_model(spec.name, weights=weights, **spec.kwargs)
    _apply_weights(model, spec)
    return model


def _build_program(spec: TeacherSpec) -> nn.Module:
    path = Path(spec.name)
    if not path.is_file():
        raise TeacherError(f"{spec.kind} teacher file {str(path)!r} not found")
    try:
        if spec.kind == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # deprecated, still supported for existing files
                return torch.jit.load(str(path), map_location="cpu")
        return torch.export.load(str(path)).module()
    except Exception as e:
        raise TeacherError(f"cannot load {spec.kind} program {str(path)!r}: {type(e).__name__}: {e}") from e


def _build_python(spec: TeacherSpec) -> nn.Module:
    module_name, factory_name = spec.name.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TeacherError(
            f"teacher spec python:{spec.name}: cannot import module {module_name!r} ({e}); is it installed on every worker?"
        ) from e
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise TeacherError(f"teacher spec python:{spec.name}: {module_name} has no callable {factory_name!r}")
    model = factory(**spec.kwargs)
    if not isinstance(model, nn.Module):
        raise TeacherError(f"python:{spec.name} returned {type(model).__name__}, not a torch.nn.Module")
    _apply_weights(model, spec)
    return model


_BUILDERS = {
    "timm": _build_timm,
    "torchvision": _build_torchvision,
    "torchscript": _build_program,
    "export": _build_program,
    "python": _build_python,
}


def _resolve_preprocess(model: nn.Module, spec: TeacherSpec) -> Preprocess:
    cfg: dict[str, Any] = {}
    if spec.kind == "timm" or hasattr(model, "pretrained_cfg"):
        from timm.data import resolve_model_data_config

        try:
            cfg = resolve_model_data_config(model)
        except Exception:  # noqa: BLE001 - fall back to defaults below
            cfg = {}
    size = spec.input_size
    if size is None and cfg.get("input_size"):
        size = (int(cfg["input_size"][1]), int(cfg["input_size"][2]))
    if size is None and spec.kind == "torchvision":
        size = (224, 224)
    mean = spec.mean or tuple(cfg.get("mean", IMAGENET_MEAN))
    std = spec.std or tuple(cfg.get("std", IMAGENET_STD))
    interp = spec.interpolation or cfg.get("interpolation") or "bilinear"
    if interp not in ("bilinear", "bicubic", "nearest"):
        interp = "bilinear"
    return Preprocess(size, mean, std, interp)  # type: ignore[arg-type]


class Teacher(nn.Module):
    """A teacher in eval mode: uint8 views ``[B,3,H,W]`` in, logits ``[B,C]`` out.

    Resizes views to the teacher's input size when they differ, scales to ``[0,1]`` and
    normalises with the teacher's mean/std (buffers, so ``.to(device)`` moves them).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, preprocess: Preprocess, spec: TeacherSpec, weights_sha256: str | None) -> None:
        super().__init__()
        try:
            model.eval()
        except NotImplementedError:  # torch.export programs are exported in eval mode already
            pass
        self.model = model
        self.preprocess = preprocess
        self.spec = spec
        self.weights_sha256 = weights_sha256
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, 3, 1, 1) * 255, persistent=False)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def prepare(self, views: torch.Tensor) -> torch.Tensor:
        x = views.to(torch.float32)
        size = self.preprocess.input_size
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            mode = self.preprocess.interpolation
            if mode == "nearest":
                x = F.interpolate(x, size=size, mode="nearest")
            else:
                x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        out = self.model(self.prepare(views))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-ready description recorded in the store header."""
        return {
            "spec": str(self.spec),
            "kind": self.spec.kind,
            "name": self.spec.name,
            "weights": self.spec.weights,
            "weights_sha256": self.weights_sha256,
            "weight": self.spec.weight,
            "preprocess": self.preprocess.to_dict(),
        }


def build_model(spec: str | TeacherSpec) -> nn.Module:
    """The bare ``nn.Module`` of a spec (weights loaded if given), e.g. to train a student."""
    if isinstance(spec, str):
        spec = parse_teacher_spec(spec)
    return _BUILDERS[spec.kind](spec)


def load_teacher(spec: str | TeacherSpec) -> Teacher:
    """Build the model of a spec, load its weights, resolve preprocessing; eval mode, CPU."""
    if isinstance(spec, str):
        spec = parse_teacher_spec(spec)
    if spec.weights is None and not spec.pretrained and spec.kind in ("timm", "torchvision"):
        log.warning("teacher %s has no weights and pretrained=false: it is randomly initialised", spec)
    model = build_model(spec)
    digest = file_sha256(spec.weights) if spec.weights else None
    return Teacher(model, _resolve_preprocess(model, spec), spec, digest)
