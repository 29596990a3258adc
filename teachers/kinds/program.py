"""``torchscript:FILE`` and ``export:FILE``: saved programs (TorchScript, ``torch.export``),
and :func:`program_metadata`, the file saved inside one that says how to feed it."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dr.errors import TeacherError
from dr.teachers.kinds.built import Built
from dr.teachers.spec import TeacherSpec

__all__ = ["PROGRAM_METADATA", "build_program", "program_metadata"]

PROGRAM_METADATA = "dr.json"
"""The name of the extra file inside a program that holds :func:`program_metadata`'s JSON."""


def program_metadata(
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalize: str | None = None,
    input_size: Sequence[int] | None = None,
    interpolation: str | None = None,
    classes: Sequence[str] | None = None,
) -> dict[str, str]:
    """Extra files to save *inside* a TorchScript/export program so it says how to feed it:
    ``torch.jit.save(m, f, _extra_files=program_metadata(mean=..., std=..., classes=...))`` or
    ``torch.export.save(ep, f, extra_files=program_metadata(normalize="none"))``.

    Args:
        mean: per-channel mean of inputs in ``[0, 1]``.
        std: per-channel std.
        normalize: ``"none"`` when the program normalises inside (instead of ``mean``/``std``).
        input_size: the input ``(height, width)`` the program expects.
        interpolation: how views are resized to ``input_size``.
        classes: the program's class names, in the order of its outputs.

    Returns:
        ``{file name: JSON text}``, the ``extra_files`` mapping both save functions take.
    """
    meta: dict[str, Any] = {}
    for key, value in (("mean", mean), ("std", std), ("input_size", input_size), ("classes", classes)):
        if value is not None:
            meta[key] = list(value)
    if normalize is not None:
        meta["normalize"] = normalize
    if interpolation is not None:
        meta["interpolation"] = interpolation
    return {PROGRAM_METADATA: json.dumps(meta)}


def build_program(spec: TeacherSpec, local: str | None) -> Built:
    """The program of ``spec`` (the fetched file ``local``, else the spec's path), with the
    preprocessing and class names its :data:`PROGRAM_METADATA` file gives, if any."""
    path = local or spec.name
    extra = {PROGRAM_METADATA: ""}
    try:
        if spec.kind == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # deprecated, still supported for existing files
                model: nn.Module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
        else:
            model = torch.export.load(path, extra_files=extra).module()
    except Exception as e:
        raise TeacherError(f"cannot load {spec.kind} program {spec.name!r}: {type(e).__name__}: {e}") from e
    built = Built(model)
    raw = extra.get(PROGRAM_METADATA) or ""
    if raw:
        try:
            meta = json.loads(raw)
        except (json.JSONDecodeError, TypeError) as e:
            raise TeacherError(f"{spec.kind} program {spec.name!r}: its {PROGRAM_METADATA} metadata is not JSON: {e}") from e
        if isinstance(meta, dict):
            built.preprocess = {k: meta[k] for k in ("mean", "std", "normalize", "input_size", "interpolation") if k in meta}
            built.preprocess_from = f"metadata in {spec.name}" if built.preprocess else None
            if meta.get("classes"):
                built.classes = tuple(str(c) for c in meta["classes"])
                built.classes_from = f"metadata in {spec.name}"
    return built
