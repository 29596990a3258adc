"""Teachers: spec strings, loading (timm, torchvision, TorchScript, torch.export, python
factories), preprocessing, ensembles and sparse top-k."""

from teachers.ensemble import Ensemble, topk
from teachers.load import Preprocess, Teacher, build_model, load_state_dict, load_teacher
from teachers.spec import KINDS, TeacherSpec, parse_teacher_spec

__all__ = [
    "Ensemble",
    "KINDS",
    "Preprocess",
    "Teacher",
    "TeacherSpec",
    "build_model",
    "load_state_dict",
    "load_teacher",
    "parse_teacher_spec",
    "topk",
]
