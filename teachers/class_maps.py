"""Teacher class names and the map from teacher classes to a dataset's classes.

A teacher predicts ids in *its* label space; a store's ``targets/ids`` must name the
*dataset's* classes (``source/labels``), or a student learns bird as airplane. So a build
knows the teachers' class names where it can (a ``classes=`` spec option, a class-names file
next to the weights, the model's ``pretrained_cfg``, torchvision weight metadata, metadata
saved inside a TorchScript/export file) and refuses a dataset whose classes differ unless it
is given a :class:`ClassMap` (``--class-map identity|names|FILE``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dr.errors import ConfigError, TeacherError
from dr.urls import Location

if TYPE_CHECKING:
    from torch import nn

    from dr.teachers.kinds.built import Built
    from dr.teachers.spec import TeacherSpec

__all__ = ["ClassMap", "imagenet_wnids", "read_class_names", "resolve_class_map", "resolve_teacher_classes", "sidecar_metadata"]

log = logging.getLogger(__name__)


def _names_from(data: Any, where: str) -> tuple[str, ...]:
    if isinstance(data, Mapping):
        data = data.get("classes")
    if not isinstance(data, (list, tuple)) or not data or not all(isinstance(c, (str, int)) for c in data):
        raise TeacherError(f"class names in {where} must be a non-empty list of strings (or a JSON object with a 'classes' list)")
    return tuple(str(c) for c in data)


def read_class_names(location: str) -> tuple[str, ...]:
    """Class names from a file: a JSON list, a JSON object with ``"classes"`` (a model card),
    or text with one name per line.

    Args:
        location: a local path or an fsspec URL.

    Returns:
        The class names, in the file's order.

    Raises:
        TeacherError: the file cannot be read, is invalid JSON, or lists no names.
    """
    try:
        if "://" in location:
            with Location(location).open("rt") as f:
                text = f.read()
        else:
            text = Path(location).read_text()
    except (OSError, ImportError) as e:
        raise TeacherError(f"cannot read class names from {location!r}: {e}") from e
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            return _names_from(json.loads(stripped), location)
        except json.JSONDecodeError as e:
            raise TeacherError(f"class-names file {location!r} is not valid JSON: {e}") from e
    names = tuple(line.strip() for line in stripped.splitlines() if line.strip())
    if not names:
        raise TeacherError(f"class-names file {location!r} is empty")
    return names


def sidecar_metadata(weights: str | None) -> tuple[dict[str, Any], str | None]:
    """The JSON card next to a local weights/program file (``w.safetensors`` -> ``w.json``), if any.

    Returns ``(metadata, path)``; ``({}, None)`` when there is none. The demo teacher's card
    (``examples/assets/teacher/cifar_resnet20.json``) carries ``"classes"``; a card may also
    carry ``mean``, ``std``, ``input_size``, ``interpolation`` or ``normalize``.
    """
    if not weights or "://" in weights:
        return {}, None
    card = Path(weights).with_suffix(".json")
    if card == Path(weights) or not card.is_file():
        return {}, None
    try:
        data = json.loads(card.read_text())
    except (OSError, json.JSONDecodeError):
        return {}, None
    return (data, str(card)) if isinstance(data, dict) else ({}, None)


def imagenet_wnids(n: int) -> tuple[str, ...] | None:
    """ImageNet-1k WordNet ids (the ImageNet folder names) for a ``n``-class ImageNet model,
    from timm's bundled tables; ``None`` when ``n`` is no ImageNet subset timm knows."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset({"num_classes": n})
        return tuple(ImageNetInfo(subset).label_names()) if subset else None
    except Exception:  # noqa: BLE001 - tables missing: names stay unknown
        return None


def resolve_teacher_classes(
    model: nn.Module, spec: TeacherSpec, built: Built, card: dict[str, Any], card_path: str | None
) -> tuple[tuple[str, ...] | None, str | None]:
    """A teacher's class names and where they came from, first match wins: the spec's
    ``classes=`` (names, or a file), what its kind's builder found (torchvision weights, a
    program's metadata), the JSON card next to the weights, the model's ``pretrained_cfg``,
    timm's ImageNet tables for timm's pretrained models; ``(None, None)`` when unknown."""
    if spec.classes:
        if "," in spec.classes:
            return tuple(c.strip() for c in spec.classes.split(",")), "spec"
        return read_class_names(spec.classes), f"file {spec.classes}"
    if built.classes:
        return built.classes, built.classes_from
    if card.get("classes"):
        return tuple(str(c) for c in card["classes"]), f"card {card_path}"
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("label_names"):
        return tuple(str(c) for c in cfg["label_names"]), "pretrained_cfg"
    if spec.kind == "timm" and (spec.pretrained or spec.weights):
        names = imagenet_wnids(int(getattr(model, "num_classes", 0) or 0))
        if names:
            return names, "timm ImageNet tables"
    return None, None


@dataclass(frozen=True)
class ClassMap:
    """Teacher class ``t`` counts as dataset class ``teacher_to_dataset[t]`` (``-1``: dropped).

    Applied to the ensemble's probabilities before top-k: mapped teacher classes are summed
    into their dataset class (many-to-one is allowed, e.g. dog breeds -> dog), dropped ones
    are removed, and the result is renormalised to sum to one over the dataset's classes.
    ``kind="identity"`` keeps the teachers' ids as they are (same count, names differ).
    Built by :func:`resolve_class_map`; recorded in a store's header (``ensemble.class_map``).

    Attributes:
        kind: ``identity``, ``names`` or ``file`` (how the map was given).
        teacher_to_dataset: for each teacher class id, the dataset class id it counts as, or
            ``-1`` (dropped).
        num_dataset: the number of dataset classes.
        source: the map file, for ``kind="file"``.
    """

    kind: str
    teacher_to_dataset: tuple[int, ...]
    num_dataset: int
    source: str | None = None

    @property
    def is_identity(self) -> bool:
        return self.kind == "identity"

    def apply(self, probs: torch.Tensor) -> torch.Tensor:
        """``[B, teacher classes]`` probabilities -> ``[B, dataset classes]``, summing to one."""
        if self.is_identity:
            return probs
        index = torch.tensor(self.teacher_to_dataset, device=probs.device)
        if probs.shape[1] != index.numel():
            raise TeacherError(f"class map is for {index.numel()} teacher classes, the teachers predict {probs.shape[1]}")
        keep = (index >= 0).nonzero().squeeze(1)
        target = index[keep]
        if torch.unique(target).numel() == target.numel():  # one-to-one: a gather, deterministic everywhere
            order = torch.full((self.num_dataset,), -1, dtype=torch.long, device=probs.device)
            order[target] = keep
            out = probs[:, order.clamp_min(0)] * (order >= 0).to(probs.dtype)
        else:
            m = torch.zeros(probs.shape[1], self.num_dataset, dtype=probs.dtype, device=probs.device)
            m[keep, target] = 1
            out = probs @ m
        return out / out.sum(1, keepdim=True).clamp_min(1e-30)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "teacher_to_dataset": list(self.teacher_to_dataset),
            "num_dataset": self.num_dataset,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ClassMap | None:
        if not d:
            return None
        return cls(str(d["kind"]), tuple(int(i) for i in d["teacher_to_dataset"]), int(d["num_dataset"]), d.get("source"))


def _preview(names: Sequence[str], n: int = 6) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _load_map_file(path: str) -> Mapping[str, Any]:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read --class-map {path!r}: {e}; use a JSON/YAML file, 'identity' or 'names'") from e
    try:
        data = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as e:
        raise ConfigError(f"--class-map {path!r} is not valid JSON/YAML: {e}") from e
    if not isinstance(data, Mapping):
        raise ConfigError(
            f'--class-map {path!r} must map each dataset class to teacher class(es), e.g. {{"dog": ["beagle", "pug"], "cat": 3}}'
        )
    return data


def _same_classes_or_raise(ds: list[str], tc: list[str] | None, num_teacher_classes: int) -> None:
    """Without a class map the teachers' classes must be the dataset's (or, names unknown, as
    many); else a ConfigError naming both and the --class-map that fits."""
    if tc is not None and tc == ds:
        return
    if tc is None and num_teacher_classes == len(ds):
        # names unknown: ids are taken as the dataset's (the agreement guard checks it)
        log.warning(
            "the teachers' class names are unknown: their %d class ids are taken as the dataset's classes in order (%s); "
            "name them (?classes=FILE, or a JSON card next to the weights) to have the build check it",
            num_teacher_classes,
            _preview(ds),
        )
        return
    if tc is None:
        what = f"the teachers predict {num_teacher_classes} classes (their names are unknown)"
        hint = (
            'name the teachers\' classes (?classes=FILE in the spec, or a JSON card with "classes" next to the weights) and pass '
            "--class-map names, or pass --class-map FILE mapping each dataset class to teacher class ids"
        )
    else:
        what = f"the teachers' {len(tc)} classes are ({_preview(tc)})"
        if set(ds) <= set(tc):
            hint = "every dataset class is a teacher class of the same name: pass --class-map names"
        elif len(ds) == len(tc):
            hint = "if only the names differ and the order is the same, pass --class-map identity; otherwise --class-map FILE"
        else:
            hint = 'pass --class-map FILE mapping each dataset class to teacher class(es), e.g. {"dog": ["beagle", "pug"]}'
    raise ConfigError(
        f"the dataset's {len(ds)} classes ({_preview(ds)}) are not the teachers' classes: {what}. "
        f"Stored ids would name the wrong classes; {hint}"
    )


def _teacher_to_dataset(
    mapping: dict[str, Any], ds: list[str], tc: list[str] | None, num_teacher_classes: int, class_map: str
) -> list[int]:
    """For each teacher class id, the dataset class it counts for (-1: none)."""
    t2d = [-1] * num_teacher_classes
    for d_index, name in enumerate(ds):
        if name not in mapping:
            raise ConfigError(f"--class-map {class_map}: dataset class {name!r} is not mapped to any teacher class")
        targets = mapping[name]
        for t in targets if isinstance(targets, (list, tuple)) else [targets]:
            if isinstance(t, int) and not isinstance(t, bool):
                t_id = t
            elif tc is not None and str(t) in tc:
                t_id = tc.index(str(t))
            elif str(t).isdigit():
                t_id = int(str(t))
            else:
                raise ConfigError(
                    f"--class-map {class_map}: {t!r} (for {name!r}) is not a teacher class"
                    + (f" ({_preview(tc)})" if tc is not None else "; the teachers' names are unknown, use ids")
                )
            if not 0 <= t_id < num_teacher_classes:
                raise ConfigError(f"--class-map {class_map}: teacher class id {t_id} (for {name!r}) is not in [0, {num_teacher_classes})")
            if t2d[t_id] != -1:
                raise ConfigError(f"--class-map {class_map}: teacher class {t_id} is mapped to two dataset classes")
            t2d[t_id] = d_index
    return t2d


def resolve_class_map(
    dataset_classes: Sequence[str],
    teacher_classes: Sequence[str] | None,
    num_teacher_classes: int,
    class_map: str | None,
) -> ClassMap | None:
    """Check that the teachers' classes are the dataset's; build the :class:`ClassMap` asked for.

    Args:
        dataset_classes: the source's class names (``source/labels`` index them).
        teacher_classes: the teachers' class names, if known.
        num_teacher_classes: how many classes the teachers predict.
        class_map: ``None`` (the classes must be the same), ``"identity"`` (same count, ids
            kept), ``"names"`` (each dataset class is the teacher class of the same name) or a
            JSON/YAML file mapping each dataset class to a teacher class name or id, or a list.

    Returns:
        The map, or ``None`` when ``class_map`` is ``None`` and the classes agree.

    Raises:
        ConfigError: the classes differ and no map was given, or the map is invalid -- naming
            the classes and the fix.
        TeacherError: the teachers' names do not match their class count.
    """
    ds = [str(c) for c in dataset_classes]
    tc = [str(c) for c in teacher_classes] if teacher_classes is not None else None
    if tc is not None and len(tc) != num_teacher_classes:
        raise TeacherError(
            f"the teachers' class names list {len(tc)} classes but they predict {num_teacher_classes}: fix the class-names file"
        )
    if class_map is None:
        _same_classes_or_raise(ds, tc, num_teacher_classes)
        return None
    if class_map == "identity":
        if num_teacher_classes != len(ds):
            raise ConfigError(
                f"--class-map identity needs as many teacher classes as dataset classes, got {num_teacher_classes} vs {len(ds)}: "
                "use --class-map names or a map file"
            )
        return ClassMap("identity", tuple(range(num_teacher_classes)), len(ds))
    if class_map == "names":
        if tc is None:
            raise ConfigError(
                "--class-map names needs the teachers' class names: add ?classes=FILE to the teacher spec or put a JSON card "
                'with "classes" next to the weights'
            )
        missing = [c for c in ds if c not in tc]
        if missing:
            raise ConfigError(f"--class-map names: dataset classes {_preview(missing)} are not teacher classes ({_preview(tc)})")
        mapping: dict[str, Any] = {c: c for c in ds}
        kind, source = "names", None
    else:
        mapping, kind, source = dict(_load_map_file(class_map)), "file", class_map
    unknown = [str(k) for k in mapping if str(k) not in ds]
    if unknown:
        raise ConfigError(f"--class-map {class_map}: {', '.join(map(repr, unknown))} not dataset classes ({_preview(ds)})")
    t2d = _teacher_to_dataset(mapping, ds, tc, num_teacher_classes, class_map)
    return ClassMap(kind, tuple(t2d), len(ds), source)
