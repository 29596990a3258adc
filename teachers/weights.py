"""Teacher weights: fetch a file, hash it, read its state dict, apply it to a model.

Weights never unpickle arbitrary objects: timm's checkpoint reader (``.safetensors`` through
safetensors, anything else through ``torch.load(weights_only=True)``). Weights may be local
paths or fsspec URLs (fetched into a temporary directory that is removed afterwards). Hub
downloads happen only in the kinds that ask for them (``pretrained=true``, torchvision's
``weights=ENUM``); :func:`download_hint` is what they say when one fails.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dr.errors import TeacherError
from dr.teachers.spec import TeacherSpec
from dr.urls import Location, is_url, strip_file_scheme

__all__ = ["apply_weights", "download_hint", "file_sha256", "load_state_dict", "local_file"]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (recorded in the store header for each teacher's weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def local_file(location: str, what: str = "teacher weights") -> Iterator[str]:
    """A local path for ``location``: a path, ``file://`` URL, or any fsspec URL (fetched into a
    temporary directory that is removed afterwards; the file name is kept, so the suffix still
    says how to read it)."""
    location = strip_file_scheme(location)
    if not is_url(location):
        if not Path(location).is_file():
            raise TeacherError(f"{what} {location!r} not found: check the path after '@' in the teacher spec")
        yield location
        return
    with tempfile.TemporaryDirectory(prefix="dr-teacher-") as tmp:
        dest = os.path.join(tmp, posixpath.basename(location.rstrip("/")) or "weights")
        try:
            fs, path = Location(location).filesystem()
            fs.get(path, dest)
        except FileNotFoundError as e:
            raise TeacherError(f"{what} {location!r} not found: check the URL after '@' in the teacher spec") from e
        except Exception as e:
            raise TeacherError(f"cannot fetch {what} {location!r}: {type(e).__name__}: {e}") from e
        if not os.path.isfile(dest):
            raise TeacherError(f"{what} {location!r} not found (or not a file)")
        yield dest


def _read_state(local: str, shown: str) -> dict[str, torch.Tensor]:
    """timm's checkpoint reader: safetensors, or ``torch.load(weights_only=True)``; picks
    ``state_dict_ema``/``model_ema``/``state_dict``/``model`` and strips DDP/compile prefixes."""
    from timm.models import load_state_dict as timm_load_state_dict

    try:
        state: Any = timm_load_state_dict(local, use_ema=True, weights_only=True)
    except Exception as e:
        raise TeacherError(
            f"cannot read teacher weights {shown!r}: {type(e).__name__}: {e}. Use .safetensors or a plain state_dict saved with torch.save"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TeacherError(f"teacher weights {shown!r} are not a state_dict of tensors")
    return state


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a weights file without unpickling objects; unwraps common checkpoint wrappers
    (``state_dict_ema``, ``model_ema``, ``state_dict``, ``model``; ``module.`` prefixes) with
    timm's loader.

    Args:
        path: a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file: a local path or an fsspec URL.

    Returns:
        The state dict, parameter name to tensor.

    Raises:
        TeacherError: the file cannot be fetched or read.
    """
    with local_file(str(path)) as local:
        return _read_state(local, str(path))


def apply_weights(model: nn.Module, spec: TeacherSpec, local: str | None) -> None:
    """Load the weights file ``local`` (the spec's ``@WEIGHTS``, fetched) into ``model``,
    strictly: a key missing, left over or of another shape is named in the error. ``None``:
    nothing to load."""
    if local is None:
        return
    state = _read_state(local, str(spec.weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise TeacherError(
            f"weights {spec.weights!r} do not fit {spec.kind}:{spec.name}: {_state_mismatch(model.state_dict(), state) or str(e).splitlines()[0]}"
            " -- check the architecture name and its options (depth, width, num_classes, ...)"
        ) from e


def _state_mismatch(own: dict[str, torch.Tensor], given: dict[str, torch.Tensor], show: int = 4) -> str:
    """Which keys a state dict lacks, has in excess, or has in another shape, named."""

    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:show]) + (f" and {len(keys) - show} more" if len(keys) > show else "")

    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = [
        f"{k} (file {list(given[k].shape)}, model {list(own[k].shape)})"
        for k in sorted(set(own) & set(given))
        if own[k].shape != given[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {listed(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): {listed(shapes)}")
    return "; ".join(parts)


def download_hint(spec: str, e: BaseException, cache: str) -> str:
    """What to say when hub weights cannot be downloaded: where they would be cached, and how
    to name a file instead."""
    return (
        f"teacher {spec}: cannot get its hub weights ({type(e).__name__}: {e}). Either give this machine network "
        f"access once (the weights are then cached under {cache}), or download the weights elsewhere and name the file: "
        "KIND:NAME@/path/weights.safetensors (or .pth)"
    )
