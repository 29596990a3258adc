"""``timm:NAME[@WEIGHTS][?pretrained=true&options]``: a timm architecture, with a weights file,
timm's hub weights (``pretrained=true``: the only network access), or none (random)."""

from __future__ import annotations

from typing import Any

from dr.errors import TeacherError
from dr.teachers.kinds.built import Built
from dr.teachers.spec import TeacherSpec
from dr.teachers.weights import apply_weights, download_hint

__all__ = ["build_timm"]


def build_timm(spec: TeacherSpec, local: str | None) -> Built:
    """The timm model of ``spec`` with the weights file ``local`` (JAX/Flax ``.npz`` archives
    through timm's own loader), or timm's hub weights for ``pretrained=true`` without one."""
    import timm
    from timm.models import load_checkpoint

    pretrained = spec.pretrained and local is None
    try:
        kwargs: dict[str, Any] = dict(spec.kwargs)
        model = timm.create_model(spec.name, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        raise TeacherError(f"timm cannot create {spec.name!r}: {e}. List names with timm.list_models()") from e
    except OSError as e:  # URLError, requests' ConnectionError, huggingface_hub's LocalEntryNotFoundError...
        if not pretrained:
            raise TeacherError(f"timm cannot create {spec.name!r} with {kwargs}: {type(e).__name__}: {e}") from e
        raise TeacherError(download_hint(str(spec), e, "$HF_HOME (or $TORCH_HOME)")) from e
    except Exception as e:  # a bad option (TypeError) and the like: name the spec
        raise TeacherError(f"timm cannot create {spec.name!r} with {kwargs}: {type(e).__name__}: {e}") from e
    if local is not None and local.lower().endswith((".npz", ".npy")):
        load_checkpoint(model, local)  # timm's own loader for JAX/Flax archives
    else:
        apply_weights(model, spec, local)
    return Built(model)
