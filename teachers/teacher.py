"""The :class:`Teacher` (a model with its preprocessing, in eval mode) and how a spec becomes
one: :func:`load_teacher` builds the model with its kind's builder (:mod:`dr.teachers.kinds`),
loads its weights, and resolves its preprocessing and class names.

A spec with no weights at all is refused unless random teachers are allowed (tests,
benchmarks); their initialisation is then seeded, so a verifier can rebuild them. A
``python:`` factory that claims ``pretrained=true`` but loads no weights (its weights follow
the random seed, or it seeds itself) is random too: :func:`~dr.teachers.kinds.python.random_factory`
builds it twice under two seeds, watching the calls that read weights, to tell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dr.errors import TeacherError
from dr.teachers.class_maps import resolve_teacher_classes, sidecar_metadata
from dr.teachers.kinds.built import Built
from dr.teachers.kinds.program import build_program
from dr.teachers.kinds.python import build_python, random_factory
from dr.teachers.kinds.timm import build_timm
from dr.teachers.kinds.torchvision import build_torchvision, resolve_torchvision_weights
from dr.teachers.preprocess import Preprocess, resolve_preprocess
from dr.teachers.spec import TeacherSpec, parse_teacher_spec
from dr.teachers.weights import file_sha256, local_file

__all__ = ["Teacher", "build_model", "is_random_init", "load_teacher"]

_BUILDERS: dict[str, Callable[[TeacherSpec, str | None], Built]] = {
    "timm": build_timm,
    "torchvision": build_torchvision,
    "torchscript": build_program,
    "export": build_program,
    "python": build_python,
}


class Teacher(nn.Module):
    """A teacher in eval mode: uint8 views ``[B,3,H,W]`` in, logits ``[B,C]`` out.

    Resizes views to the teacher's input size when they differ, scales to ``[0,1]`` and
    normalises with the teacher's mean/std (buffers, so ``.to(device)`` moves them). Build one
    with :func:`load_teacher`.

    Args:
        model: the network (put in eval mode, gradients off).
        preprocess: how views become its inputs.
        spec: the spec it was loaded from.
        weights_sha256: SHA-256 of its weights file, or ``None``.
        classes: its class names, in the order of its outputs, if known.
        classes_from: where ``classes`` came from (for ``dr-build info``).
        init_seed: the seed of a random initialisation, for teachers without weights.
        hub_weights: the hub weights it was built with (torchvision's enum name), if any.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        preprocess: Preprocess,
        spec: TeacherSpec,
        weights_sha256: str | None,
        *,
        classes: Sequence[str] | None = None,
        classes_from: str | None = None,
        init_seed: int | None = None,
        hub_weights: str | None = None,
    ) -> None:
        super().__init__()
        #: inputs go to the network channels-last (set by ``Ensemble.optimize``)
        self.channels_last = False
        try:
            model.eval()
        except NotImplementedError:  # torch.export programs are exported in eval mode already
            pass
        self.model = model
        self.preprocess = preprocess
        self.spec = spec
        self.weights_sha256 = weights_sha256
        self.classes = tuple(classes) if classes is not None else None
        self.classes_from = classes_from
        self.init_seed = init_seed
        self.hub_weights = hub_weights
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
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last or x.is_cuda else x

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
            "hub_weights": self.hub_weights,
            "init_seed": self.init_seed,
            "classes_from": self.classes_from,
            "preprocess": self.preprocess.to_dict(),
        }


def build_model(spec: str | TeacherSpec) -> nn.Module:
    """The bare ``nn.Module`` of a spec (weights loaded if given), e.g. to train a student.

    Unlike :func:`load_teacher` this builds random-init models without complaint (students).

    Args:
        spec: a spec string or :class:`TeacherSpec`, e.g. ``timm:resnet18?num_classes=10``.

    Returns:
        The model with its weights loaded; no preprocessing is attached.

    Raises:
        TeacherError: a bad spec, or weights that cannot be read or do not fit.
    """
    if isinstance(spec, str):
        spec = parse_teacher_spec(spec)
    if spec.weights is None:
        return _BUILDERS[spec.kind](spec, None).model
    with local_file(spec.weights) as local:
        return _BUILDERS[spec.kind](spec, local).model


def is_random_init(spec: str | TeacherSpec) -> bool:
    """Whether a spec names no weights at all: no ``@WEIGHTS``, no ``pretrained=true``, no
    torchvision ``weights=``. (A ``python:`` factory with ``pretrained=true`` and no
    ``@WEIGHTS`` may still be random: :func:`load_teacher` builds it to tell.)

    Args:
        spec: a spec string or :class:`TeacherSpec`.

    Returns:
        ``True`` when its network would be randomly initialised (programs never are).
    """
    if isinstance(spec, str):
        spec = parse_teacher_spec(spec)
    return spec.kind in ("timm", "torchvision", "python") and spec.weights is None and not spec.pretrained and spec.hub_weights is None


def _random_or_refused(spec: TeacherSpec, allow_random: bool) -> bool:
    """Whether ``spec``'s network is randomly initialised; raises when it is and random
    teachers are not allowed. A ``python:`` factory with ``pretrained=true`` and no
    ``@WEIGHTS`` is random when it loads no weights (:func:`random_factory`)."""
    if not is_random_init(spec):
        why = random_factory(spec) if spec.kind == "python" and spec.weights is None else None
        if why is not None and not allow_random:
            raise TeacherError(
                f"teacher spec {str(spec)!r} says pretrained=true, but {spec.name} {why}, so every view would be labelled by "
                f"a random network. Give the weights file (python:{spec.name}@/path/weights.safetensors), or pass "
                "--allow-random-teachers (tests and benchmarks only; the store then records the teacher as random)"
            )
        return why is not None
    if not allow_random:
        how = {
            "timm": "ask for timm's hub weights (?pretrained=true)",
            "torchvision": "ask for torchvision's weights (?weights=IMAGENET1K_V1, or ?pretrained=true for DEFAULT)",
            "python": "add ?pretrained=true if the factory loads its own weights",
        }[spec.kind]
        raise TeacherError(
            f"teacher spec {str(spec)!r} has no weights: it would label every view with a randomly initialised network. "
            f"Give the weights file ({spec.kind}:{spec.name}@/path/weights.safetensors), {how}, or pass --allow-random-teachers "
            "(tests and benchmarks only)"
        )
    return True


def load_teacher(spec: str | TeacherSpec, *, allow_random: bool = False, init_seed: int = 0) -> Teacher:
    """Build the model of a spec, load its weights, resolve preprocessing and class names;
    eval mode, CPU.

    Args:
        spec: a spec string or :class:`TeacherSpec`.
        allow_random: accept a spec without weights (a randomly initialised network; tests and
            benchmarks). Its initialisation is seeded with ``init_seed`` (recorded in
            :meth:`Teacher.describe`), so the same network can be rebuilt later.
        init_seed: the seed of a random initialisation.

    Returns:
        The teacher, in eval mode on the CPU.

    Raises:
        TeacherError: a bad spec, missing or unfitting weights, a random teacher not allowed,
            or a program whose preprocessing is unknown.
    """
    if isinstance(spec, str):
        spec = parse_teacher_spec(spec)
    random_init = _random_or_refused(spec, allow_random)
    digest: str | None = None
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            built = _BUILDERS[spec.kind](spec, None)
    elif spec.weights is None:
        built = _BUILDERS[spec.kind](spec, None)
    else:
        with local_file(spec.weights, "teacher program" if spec.kind in ("torchscript", "export") else "teacher weights") as local:
            built = _BUILDERS[spec.kind](spec, local)
            digest = file_sha256(local)
    card, card_path = sidecar_metadata(spec.weights)
    model = built.model
    classes, classes_from = resolve_teacher_classes(model, spec, built, card, card_path)
    hub = str(resolve_torchvision_weights(spec)) if spec.kind == "torchvision" and spec.weights is None and not random_init else None
    return Teacher(
        model,
        resolve_preprocess(model, spec, built, card, card_path),
        spec,
        digest,
        classes=classes,
        classes_from=classes_from,
        init_seed=init_seed if random_init else None,
        hub_weights=hub,
    )
