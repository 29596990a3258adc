"""Teachers: spec strings, loading (timm, torchvision, TorchScript, torch.export, python
factories), preprocessing, class maps, ensembles and sparse top-k.

Modules: ``spec`` (parsing ``KIND:NAME[@WEIGHTS][?options]``), ``weights`` (fetching, hashing
and reading weight files), ``preprocess`` (input size, mean/std and where they came from),
``class_maps`` (class names and teacher -> dataset class maps), ``kinds`` (one builder per
kind: ``timm``, ``torchvision``, ``program``, ``python``), ``teacher`` (:class:`Teacher` and
:func:`load_teacher`), ``ensemble`` (:class:`Ensemble`, :func:`topk`), ``precision`` and
``zoo`` (the bundled CIFAR networks).

Importing ``dr.teachers`` is light: only the spec parser is imported (no torch); the other
names load on first use, so ``from dr.teachers.preprocess import describe_preprocess`` does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dr.teachers.spec import KINDS, TeacherSpec, parse_teacher_spec

if TYPE_CHECKING:
    from dr.teachers.class_maps import ClassMap, read_class_names, resolve_class_map
    from dr.teachers.ensemble import Ensemble, topk
    from dr.teachers.kinds.program import program_metadata
    from dr.teachers.kinds.torchvision import resolve_torchvision_weights
    from dr.teachers.preprocess import Preprocess
    from dr.teachers.teacher import Teacher, build_model, is_random_init, load_teacher
    from dr.teachers.weights import load_state_dict

__all__ = [
    "ClassMap",
    "Ensemble",
    "KINDS",
    "Preprocess",
    "Teacher",
    "TeacherSpec",
    "build_model",
    "is_random_init",
    "load_state_dict",
    "load_teacher",
    "parse_teacher_spec",
    "program_metadata",
    "read_class_names",
    "resolve_class_map",
    "resolve_torchvision_weights",
    "topk",
]

_LAZY = {
    "ClassMap": "dr.teachers.class_maps",
    "read_class_names": "dr.teachers.class_maps",
    "resolve_class_map": "dr.teachers.class_maps",
    "Ensemble": "dr.teachers.ensemble",
    "topk": "dr.teachers.ensemble",
    "program_metadata": "dr.teachers.kinds.program",
    "resolve_torchvision_weights": "dr.teachers.kinds.torchvision",
    "Preprocess": "dr.teachers.preprocess",
    "Teacher": "dr.teachers.teacher",
    "build_model": "dr.teachers.teacher",
    "is_random_init": "dr.teachers.teacher",
    "load_teacher": "dr.teachers.teacher",
    "load_state_dict": "dr.teachers.weights",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dr.teachers' has no attribute {name!r}")
