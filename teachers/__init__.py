"""Teachers: spec strings, loading (timm, torchvision, TorchScript, torch.export, python
factories), preprocessing, ensembles and sparse top-k."""

from dr.teachers.classes import ClassMap, read_class_names, resolve_class_map
from dr.teachers.ensemble import Ensemble, topk
from dr.teachers.load import (
    Preprocess,
    Teacher,
    build_model,
    is_random_init,
    load_state_dict,
    load_teacher,
    program_metadata,
    resolve_torchvision_weights,
)
from dr.teachers.spec import KINDS, TeacherSpec, parse_teacher_spec

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
