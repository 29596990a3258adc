"""How views become a teacher's inputs: its input size, mean/std and resize mode, and where
they came from.

Importing this module imports neither torch nor timm (``dr-build info`` formats the stored
preprocessing with :func:`describe_preprocess`); :func:`resolve_preprocess` imports timm's
data config only when a model has one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dr.errors import TeacherError

if TYPE_CHECKING:
    from torch import nn

    from dr.teachers.kinds.built import Built
    from dr.teachers.spec import TeacherSpec

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocess", "describe_preprocess", "resolve_preprocess"]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""ImageNet's per-channel mean of inputs in ``[0, 1]``: the default for python factories."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet's per-channel std of inputs in ``[0, 1]``."""


@dataclass(frozen=True)
class Preprocess:
    """How views become teacher inputs: resize to ``input_size`` (if set), scale, normalise.

    Attributes:
        input_size: ``(height, width)`` views are resized to, or ``None`` (as given).
        mean: per-channel mean of inputs scaled to ``[0, 1]`` (``(0, 0, 0)`` with
            ``normalize=none``).
        std: per-channel std (``(1, 1, 1)`` with ``normalize=none``).
        interpolation: ``bilinear``, ``bicubic`` or ``nearest``.
        source: where mean and std came from: the spec, torchvision's weights, metadata inside
            a program, a JSON card next to the weights, or ``pretrained_cfg``.
    """

    input_size: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    source: str = ""  # where mean/std came from: spec, pretrained_cfg, torchvision weights, metadata, card

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size) if self.input_size else None,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "source": self.source,
        }

    def describe(self) -> str:
        """One line: ``32x32 bilinear, mean 0.491,0.482,0.447 std 0.247,0.243,0.262 (pretrained_cfg)``."""
        return describe_preprocess(self.to_dict())


def describe_preprocess(d: dict[str, Any]) -> str:
    """One-line rendering of a :meth:`Preprocess.to_dict` (as stored in a store header)."""
    size = "x".join(str(v) for v in d["input_size"]) if d.get("input_size") else "view size"
    if list(d.get("mean", [])) == [0.0, 0.0, 0.0] and list(d.get("std", [])) == [1.0, 1.0, 1.0]:
        norm = "no normalisation (inputs in [0, 1])"
    else:
        norm = f"mean {','.join(f'{v:.4g}' for v in d.get('mean', []))} std {','.join(f'{v:.4g}' for v in d.get('std', []))}"
    src = f" ({d['source']})" if d.get("source") else ""
    return f"{size} {d.get('interpolation', 'bilinear')}, {norm}{src}"


def _size_of(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    parts = parts[1:] if len(parts) == 3 else parts
    return (parts[0], parts[-1]) if parts else None


def resolve_preprocess(model: nn.Module, spec: TeacherSpec, built: Built, card: dict[str, Any], card_path: str | None) -> Preprocess:
    """Where each teacher's input normalisation comes from, first match wins: the spec
    (``mean``/``std`` or ``normalize=none``); metadata the builder found (torchvision weights,
    metadata saved inside a program); a JSON card next to the weights; the model's timm-style
    ``pretrained_cfg``. TorchScript/export programs with none of these are refused: a
    program may normalise inside, and a wrong guess costs the whole build (11.66 % vs 82.76 %
    agreement measured with a ResNet-56)."""
    cfg: dict[str, Any] = {}
    if spec.kind == "timm" or hasattr(model, "pretrained_cfg"):
        from timm.data import resolve_model_data_config

        try:
            cfg = resolve_model_data_config(model)
        except Exception:  # noqa: BLE001 - fall back to the other sources
            cfg = {}
    card_pre: dict[str, Any] = {k: card[k] for k in ("mean", "std", "normalize", "input_size", "interpolation") if k in card}
    candidates: list[tuple[str, dict[str, Any]]] = []
    if spec.normalize == "none":
        candidates.append(("spec (normalize=none)", {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}))
    elif spec.mean is not None or spec.std is not None:
        if spec.kind in ("torchscript", "export") and (spec.mean is None or spec.std is None):
            raise TeacherError(f"teacher spec {spec}: give both mean= and std= (or normalize=none)")
        candidates.append(("spec", {"mean": spec.mean, "std": spec.std}))
    if built.preprocess:
        candidates.append((built.preprocess_from or "model metadata", built.preprocess))
    if card_pre:
        candidates.append((f"card {card_path}", card_pre))
    if cfg:
        candidates.append(("pretrained_cfg", dict(cfg)))

    def first(key: str) -> tuple[Any, str | None]:
        for where, values in candidates:
            v = values.get(key)
            if key in ("mean", "std") and values.get("normalize") == "none":
                v = (0.0, 0.0, 0.0) if key == "mean" else (1.0, 1.0, 1.0)
            if v is not None:
                return v, where
        return None, None

    mean, mean_from = first("mean")
    std, _ = first("std")
    if mean is None or std is None:
        if spec.kind in ("torchscript", "export"):
            raise TeacherError(
                f"teacher spec {spec}: the {spec.kind} program does not say how its inputs are normalised. Add "
                "?mean=R,G,B&std=R,G,B (the values it was trained with), or ?normalize=none if it normalises inside "
                "(it then gets inputs in [0, 1]); or save them with the file (teachers.program_metadata)"
            )
        mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
        mean_from = "default (ImageNet mean/std)"
        if spec.kind == "python":
            log.warning("teacher %s: no mean/std in the spec or a pretrained_cfg: using ImageNet's; pass ?mean=...&std=...", spec)
    size: tuple[int, int] | None = spec.input_size
    if size is None:
        raw, _ = first("input_size")
        size = _size_of(raw)
    if size is None and spec.kind == "torchvision":
        size = (224, 224)
    interp = spec.interpolation or first("interpolation")[0] or "bilinear"
    if interp not in ("bilinear", "bicubic", "nearest"):
        interp = "bilinear"
    return Preprocess(size, tuple(float(v) for v in mean), tuple(float(v) for v in std), interp, str(mean_from))  # type: ignore[arg-type]
