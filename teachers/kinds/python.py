"""``python:MODULE:FACTORY[@WEIGHTS][?options]``: a network a Python factory builds, called with
the spec's options; the weights file, if named, is loaded strictly into what it returns.

A factory that says it loads its own weights (``pretrained=true``, no ``@WEIGHTS``) is taken at
its word only when :func:`random_factory` finds it does: built under two random seeds, while
the calls that read weights are watched, it must load weights and come out the same both times.
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from dr.errors import DRError, TeacherError
from dr.teachers.kinds.built import Built
from dr.teachers.spec import TeacherSpec
from dr.teachers.weights import apply_weights

__all__ = ["build_python", "random_factory"]


def _factory(spec: TeacherSpec) -> Callable[..., Any]:
    """The callable a ``python:MODULE:FACTORY`` spec names, imported."""
    module_name, factory_name = spec.name.split(":")
    if module_name.split(".")[0] in ("teachers", "storage", "cli"):
        module_name = "dr." + module_name  # v0.1 specs named the helper packages top-level
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TeacherError(
            f"teacher spec python:{spec.name}: cannot import module {module_name!r} ({e}); is it installed on every worker?"
        ) from e
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise TeacherError(f"teacher spec python:{spec.name}: {module_name} has no callable {factory_name!r}")
    return factory  # type: ignore[no-any-return]


def build_python(spec: TeacherSpec, local: str | None) -> Built:
    """Call the factory of ``spec`` with its options; load the weights file ``local`` into the
    model it returns (strictly), if given."""
    factory = _factory(spec)
    factory_name = spec.name.split(":")[1]
    try:
        model = factory(**spec.kwargs)
    except DRError:
        raise
    except Exception as e:
        raise TeacherError(
            f"teacher spec python:{spec.name}: {factory_name}({', '.join(f'{k}={v!r}' for k, v in spec.kwargs.items())}) failed: "
            f"{type(e).__name__}: {e}. Check the spec's ?options against the factory's arguments"
        ) from e
    if not isinstance(model, nn.Module):
        raise TeacherError(f"python:{spec.name} returned {type(model).__name__}, not a torch.nn.Module")
    # lazy modules (nn.LazyLinear, ...) have no weights until a first forward pass: every later
    # use of the model (weights, eval, hashing) would fail in torch with a long traceback
    lazy = [
        f"{type(m).__name__} at {name or 'the root'}"
        for name, m in model.named_modules()
        if any(torch.nn.parameter.is_lazy(t) for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)))
    ]
    if lazy:
        shown = ", ".join(lazy[:3]) + (f" and {len(lazy) - 3} more" if len(lazy) > 3 else "")
        raise TeacherError(
            f"teacher spec python:{spec.name}: {factory_name} returns a model with uninitialized lazy modules ({shown}): "
            "give the layers their sizes, or run one forward pass in the factory before returning the model"
        )
    apply_weights(model, spec, local)
    return Built(model)


_WATCH = threading.RLock()  # one watch at a time (a factory may load a teacher): it swaps functions of torch


def _weight_readers() -> list[tuple[Any, str]]:
    """The functions through which weights reach a model: ``load_state_dict`` (timm's and
    torchvision's hub weights, ``safetensors.torch.load_model``, a factory's own checkpoint)
    and torch's readers of weight files and programs (``torch.load``, ``torch.jit.load``)."""
    return [(nn.Module, "load_state_dict"), (torch, "load"), (torch.serialization, "load"), (torch.jit, "load")]


@contextmanager
def _watch_weight_loads() -> Iterator[list[str]]:
    """A list that fills, while the block runs, with the weight readers this thread calls."""
    seen: list[str] = []
    thread = threading.get_ident()

    def watched(original: Callable[..., Any], name: str) -> Callable[..., Any]:
        @functools.wraps(original)
        def call(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == thread:
                seen.append(name)
            return original(*args, **kwargs)

        return call

    with _WATCH:
        swapped = [(owner, attr, getattr(owner, attr)) for owner, attr in _weight_readers()]
        try:
            for owner, attr, original in swapped:
                setattr(owner, attr, watched(original, f"{getattr(owner, '__name__', owner)}.{attr}"))
            yield seen
        finally:
            for owner, attr, original in reversed(swapped):
                setattr(owner, attr, original)


def random_factory(spec: TeacherSpec) -> str | None:
    """Why the factory of a ``python:`` spec without ``@WEIGHTS`` builds a random network, or
    ``None`` when it loads its weights.

    The factory is built twice, under torch seeds 0 and 1 (the global RNG is restored), while
    the calls that read weights are watched. Its network is random when its weights differ
    between the two (they follow the seed), and also when they are equal but no weights were
    read: a factory that seeds itself loads nothing from a file. A network without
    floating-point weights has nothing random.
    """
    states = []
    with _watch_weight_loads() as loads:
        for seed in (0, 1):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                states.append(build_python(spec, None).model.state_dict())
    weights = {k: a for k, a in states[0].items() if a.is_floating_point()}
    if any(not torch.equal(a, states[1].get(k, a)) for k, a in weights.items()):
        if loads:
            return "builds a network whose weights change with the random seed: what it loads leaves other weights random"
        return "builds a network whose weights change with the random seed: it loads no weights"
    if weights and not loads:
        return (
            "loads no weights from a file (its weights are the same under two random seeds because it seeds the random "
            "generator itself, or sets them by hand)"
        )
    return None
