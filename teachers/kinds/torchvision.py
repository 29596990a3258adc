"""``torchvision:NAME[@WEIGHTS][?weights=ENUM|pretrained=true&options]``: a torchvision
architecture, with a weights file or torchvision's weights enum (its classes, preprocessing
and, when no file is named, its hub download: the only network access)."""

from __future__ import annotations

from typing import Any

from torch import nn

from dr.errors import TeacherError
from dr.teachers.class_maps import imagenet_wnids
from dr.teachers.kinds.built import Built
from dr.teachers.spec import TeacherSpec
from dr.teachers.weights import apply_weights, download_hint

__all__ = ["build_torchvision", "resolve_torchvision_weights"]


def resolve_torchvision_weights(spec: TeacherSpec) -> Any:
    """The torchvision weights enum member a spec asks for. Resolving downloads nothing.

    Args:
        spec: a parsed ``torchvision:`` spec.

    Returns:
        The member named by ``?weights=ENUM`` (``DEFAULT`` for ``pretrained=true``), or ``None``
        when the spec asks for none.

    Raises:
        TeacherError: torchvision has no such weights for the architecture (the message lists
            the names it has).
    """
    name = spec.hub_weights or ("DEFAULT" if spec.pretrained else None)
    if name is None:
        return None
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(spec.name)
    except (ValueError, KeyError) as e:
        raise TeacherError(f"teacher spec {spec}: torchvision has no weights for {spec.name!r}") from e
    try:
        return enum[name.split(".")[-1]]
    except KeyError:
        raise TeacherError(
            f"teacher spec {spec}: torchvision {spec.name} has no weights {name!r}; use one of {', '.join(enum.__members__)}"
        ) from None


def _from_weights_enum(spec: TeacherSpec, w: Any, kwargs: dict[str, Any], built: Built) -> None:
    """What the weights enum ``w`` says: the class count and names (``kwargs``, ``built``), the
    builder options torchvision sets for pretrained weights, the preprocessing."""
    categories = list(w.meta.get("categories") or [])
    if categories:
        if int(kwargs.get("num_classes", len(categories))) != len(categories):
            raise TeacherError(f"teacher spec {spec}: {w} has {len(categories)} classes, not num_classes={kwargs['num_classes']}")
        kwargs["num_classes"] = len(categories)
        imagenet = w.name.startswith("IMAGENET1K") and len(categories) == 1000
        built.classes = (imagenet_wnids(1000) if imagenet else None) or tuple(categories)
        built.classes_from = f"torchvision {w}" + (" (ImageNet-1k WordNet ids)" if imagenet else "")
    if spec.name in ("inception_v3", "googlenet"):  # what torchvision's builders set for pretrained weights
        kwargs.setdefault("transform_input", True)
        kwargs.setdefault("aux_logits", True)
        kwargs.setdefault("init_weights", False)
    t = w.transforms()
    if hasattr(t, "mean") and hasattr(t, "std"):
        crop = list(getattr(t, "crop_size", []) or [])
        built.preprocess = {
            "mean": tuple(float(v) for v in t.mean),
            "std": tuple(float(v) for v in t.std),
            "input_size": (int(crop[0]), int(crop[-1])) if crop else None,
            "interpolation": getattr(getattr(t, "interpolation", None), "value", None),
        }
        built.preprocess_from = f"torchvision {w}"


def build_torchvision(spec: TeacherSpec, local: str | None) -> Built:
    """The torchvision model of ``spec`` with the weights file ``local``, or the weights enum's
    weights (downloaded, or found in ``$TORCH_HOME/hub``) when no file is named."""
    import torchvision

    if spec.name not in torchvision.models.list_models():
        raise TeacherError(f"torchvision has no model {spec.name!r}; see torchvision.models.list_models()")
    w = resolve_torchvision_weights(spec)
    kwargs: dict[str, Any] = dict(spec.kwargs)
    built = Built(nn.Identity())
    if w is not None:
        _from_weights_enum(spec, w, kwargs, built)
    built.model = torchvision.models.get_model(spec.name, weights=None, **kwargs)
    if local is not None:
        apply_weights(built.model, spec, local)
    elif w is not None:
        # the only network access: hub weights the spec asked for (cached under $TORCH_HOME/hub)
        try:
            state = w.get_state_dict(progress=False, check_hash=True)
        except Exception as e:
            raise TeacherError(download_hint(str(spec), e, "$TORCH_HOME/hub/checkpoints")) from e
        built.model.load_state_dict(state)
    return built
