"""Teacher spec strings.

Grammar::

    KIND:NAME[@WEIGHTS][?key=value&key=value...]

    timm:resnet50                              timm architecture, random init (pass weights!)
    timm:resnet50?pretrained=true              timm hub weights (downloads; only when asked)
    timm:resnet50@/w/resnet50.safetensors      local weights (.safetensors, .pth/.pt/.bin)
    torchvision:resnet18@/w/r18.pth            torchvision architecture + local weights
    torchscript:/models/teacher.pt             a TorchScript program (torch.jit.save)
    export:/models/teacher.pt2                 a torch.export program (torch.export.save)
    python:dr.teachers.zoo:cifar_resnet@w.safetensors?depth=20   any factory returning nn.Module

Options (after ``?``): ``input_size`` (``224`` or ``3x224x224``/``224x224``), ``mean`` and
``std`` (three comma-separated floats), ``normalize=none`` (the model normalises inside: it gets
``[0, 1]`` inputs), ``interpolation`` (bilinear|bicubic|nearest), ``weight`` (ensemble weight,
default 1), ``pretrained`` (true|false; for ``python:`` it says the factory loads its own
weights), ``classes`` (the teacher's class names: a file -- JSON list, JSON card with
``"classes"``, or one name per line -- or comma-separated names), and for ``torchvision:``
``weights=ENUM`` (a torchvision weights name such as ``IMAGENET1K_V1`` or ``DEFAULT``). Any other
key is passed to the model factory (``num_classes=10``, ``depth=20``); values parse as int,
float, bool or str. ``@WEIGHTS`` may be a local path or an fsspec URL (``s3://``, ``file://``).
"""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

from pydantic import BaseModel, ConfigDict, Field

from dr.errors import TeacherError

__all__ = ["TeacherSpec", "parse_teacher_spec", "absolute_teacher_spec", "KINDS"]

KINDS = ("timm", "torchvision", "torchscript", "export", "python")
"""The teacher kinds a spec may name (``KIND:NAME...``)."""
_OPTION_KEYS = {"input_size", "mean", "std", "interpolation", "weight", "pretrained", "normalize", "classes"}


class TeacherSpec(BaseModel):
    """A parsed teacher spec (see the module docstring for the string form).

    Build one with :func:`parse_teacher_spec`; ``str(spec)`` gives the string back.

    Attributes:
        kind: ``timm``, ``torchvision``, ``torchscript``, ``export`` or ``python``.
        name: the architecture (``resnet50``), the program's path, or ``MODULE:FACTORY``.
        weights: the ``@WEIGHTS`` path or URL (for programs: the program itself), or ``None``.
        input_size: ``(height, width)`` the teacher takes, or ``None`` (resolved when loading).
        mean: per-channel normalisation mean, or ``None`` (resolved when loading).
        std: per-channel normalisation std, or ``None``.
        interpolation: how views are resized to ``input_size``.
        weight: the teacher's weight in the ensemble (> 0).
        pretrained: use hub weights (timm), or for ``python:`` "the factory loads its own".
        normalize: ``"none"`` when the model normalises inside (it gets inputs in ``[0, 1]``).
        classes: the ``classes=`` option (a file or comma-separated names), or ``None``.
        hub_weights: torchvision's ``weights=ENUM`` name, or ``None``.
        kwargs: the other options, passed to the model factory.
        text: the spec string as given.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["timm", "torchvision", "torchscript", "export", "python"]
    name: str
    weights: str | None = None
    input_size: tuple[int, int] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = None
    weight: float = Field(1.0, gt=0)
    pretrained: bool = False
    normalize: Literal["none"] | None = None
    classes: str | None = None
    hub_weights: str | None = None
    kwargs: dict[str, int | float | bool | str] = Field(default_factory=dict)
    text: str = ""

    def __str__(self) -> str:
        return self.text or f"{self.kind}:{self.name}"


def _scalar(value: str) -> int | float | bool | str:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _floats3(key: str, value: str, spec: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise TeacherError(f"teacher spec {spec!r}: {key}={value!r} must be three comma-separated numbers, e.g. {key}=0.485,0.456,0.406")
    return parts  # type: ignore[return-value]


def _size(value: str, spec: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in value.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 3:
        parts = parts[1:]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise TeacherError(f"teacher spec {spec!r}: input_size={value!r} must look like 224, 224x224 or 3x224x224")
    return parts[0], parts[1]


def parse_teacher_spec(spec: str) -> TeacherSpec:
    """Parse ``KIND:NAME[@WEIGHTS][?options]`` into a :class:`TeacherSpec`.

    Args:
        spec: the spec string, e.g. ``timm:resnet50@/w/r50.safetensors?input_size=224``.

    Returns:
        The parsed spec; option values are typed (sizes, floats, booleans).

    Raises:
        TeacherError: unknown kind, empty name, or a malformed option -- naming the bad part.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise TeacherError(
            f"teacher spec {spec!r} must look like KIND:NAME[@WEIGHTS][?opts] with KIND one of {', '.join(KINDS)} (e.g. timm:resnet50@weights.safetensors)"
        )
    kind, rest = spec.split(":", 1)
    if kind not in KINDS:
        raise TeacherError(f"teacher spec {spec!r}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    rest, _, query = rest.partition("?")
    name, _, weights = rest.partition("@")
    if kind in ("torchscript", "export"):
        if weights:
            raise TeacherError(f"teacher spec {spec!r}: {kind} programs carry their weights; write {kind}:/path/to/file")
        name, weights = name, name
    if not name:
        raise TeacherError(f"teacher spec {spec!r}: missing model name after '{kind}:'")
    if kind == "python" and name.count(":") != 1:
        raise TeacherError(f"teacher spec {spec!r}: python teachers are python:MODULE:FACTORY, e.g. python:dr.teachers.zoo:cifar_resnet")
    fields: dict[str, Any] = {"kind": kind, "name": name, "weights": weights or None, "text": spec}
    kwargs: dict[str, int | float | bool | str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key == "input_size":
            fields["input_size"] = _size(value, spec)
        elif key in ("mean", "std"):
            fields[key] = _floats3(key, value, spec)
        elif key == "weights":
            if kind != "torchvision":
                raise TeacherError(
                    f"teacher spec {spec!r}: weights={value!r} names torchvision weights; for {kind} put the weights file after '@'"
                )
            fields["hub_weights"] = value
        elif key == "normalize" and value.lower() != "none":
            raise TeacherError(
                f"teacher spec {spec!r}: normalize={value!r}: the only value is none (the model normalises inside); otherwise give mean= and std="
            )
        elif key in _OPTION_KEYS:
            fields[key] = value
        elif not key.isidentifier():
            raise TeacherError(f"teacher spec {spec!r}: option name {key!r} is not a valid identifier")
        else:
            kwargs[key] = _scalar(value)
    fields["kwargs"] = kwargs
    if fields.get("normalize") and (fields.get("mean") or fields.get("std")):
        raise TeacherError(f"teacher spec {spec!r}: normalize=none and mean/std contradict each other; give one of them")
    if "normalize" in fields:
        fields["normalize"] = "none"
    try:
        return TeacherSpec(**fields)
    except ValueError as e:
        raise TeacherError(f"teacher spec {spec!r}: {e}") from e


def _absolute_path(path: str) -> str:
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def absolute_teacher_spec(spec: str) -> str:
    """``spec`` with its local files made absolute -- ``@WEIGHTS``, a ``torchscript:``/``export:``
    program, a ``classes=FILE`` -- so a store records teachers that ``dr-build verify`` (and a
    resume) finds from any working directory. URLs, hub names and options stay as written.

    Raises:
        TeacherError: ``spec`` does not parse (see :func:`parse_teacher_spec`).
    """
    parsed = parse_teacher_spec(spec)
    kind, rest = spec.split(":", 1)
    rest, sep, query = rest.partition("?")
    if kind in ("torchscript", "export"):
        rest = _absolute_path(rest)
    elif parsed.weights is not None:
        name, _, weights = rest.partition("@")
        rest = f"{name}@{_absolute_path(weights)}"
    if parsed.classes and "://" not in parsed.classes and os.path.isfile(os.path.expanduser(parsed.classes)):
        pairs = [(k, _absolute_path(v) if k == "classes" else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="/,:=@")
    return f"{kind}:{rest}{sep}{query}"
