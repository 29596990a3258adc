"""Load teacher models from specs, with their preprocessing, in eval mode.

Weights never unpickle arbitrary objects: timm's checkpoint reader (``.safetensors`` through
safetensors, anything else through ``torch.load(weights_only=True)``). Weights may be local
paths or fsspec URLs. Hub downloads happen only for ``pretrained=true`` or torchvision's
``weights=ENUM``. A spec with no weights at all is refused unless random teachers are allowed
(tests, benchmarks); their initialisation is then seeded, so a verifier can rebuild them. A
``python:`` factory that claims ``pretrained=true`` but whose weights follow the random seed
is random too: it is built twice under two seeds to tell.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import posixpath
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dr.errors import DRError, TeacherError
from dr.teachers.classes import read_class_names, sidecar_metadata
from dr.teachers.spec import TeacherSpec, parse_teacher_spec
from dr.urls import is_url, strip_file_scheme

__all__ = [
    "Preprocess",
    "Teacher",
    "build_model",
    "file_sha256",
    "is_random_init",
    "load_state_dict",
    "load_teacher",
    "program_metadata",
    "resolve_torchvision_weights",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (recorded in the store header for each teacher's weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Preprocess:
    """How views become teacher inputs: resize to ``input_size`` (if set), scale, normalise.

    Attributes:
        input_size: ``(height, width)`` views are resized to, or ``None`` (as given).
        mean: per-channel mean of inputs scaled to ``[0, 1]`` (``(0, 0, 0)`` with
            ``normalize=none``).
        std: per-channel std (``(1, 1, 1)`` with ``normalize=none``).
        interpolation: ``bilinear``, ``bicubic`` or ``nearest``.
        source: where mean and std came from: the spec, torchvision's weights, metadata inside
            a program, a JSON card next to the weights, or ``pretrained_cfg``.
    """

    input_size: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    source: str = ""  # where mean/std came from: spec, pretrained_cfg, torchvision weights, metadata, card

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size) if self.input_size else None,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "source": self.source,
        }

    def describe(self) -> str:
        """One line: ``32x32 bilinear, mean 0.491,0.482,0.447 std 0.247,0.243,0.262 (pretrained_cfg)``."""
        return describe_preprocess(self.to_dict())


def describe_preprocess(d: dict[str, Any]) -> str:
    """One-line rendering of a :meth:`Preprocess.to_dict` (as stored in a store header)."""
    size = "x".join(str(v) for v in d["input_size"]) if d.get("input_size") else "view size"
    if list(d.get("mean", [])) == [0.0, 0.0, 0.0] and list(d.get("std", [])) == [1.0, 1.0, 1.0]:
        norm = "no normalisation (inputs in [0, 1])"
    else:
        norm = f"mean {','.join(f'{v:.4g}' for v in d.get('mean', []))} std {','.join(f'{v:.4g}' for v in d.get('std', []))}"
    src = f" ({d['source']})" if d.get("source") else ""
    return f"{size} {d.get('interpolation', 'bilinear')}, {norm}{src}"


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
    import fsspec

    with tempfile.TemporaryDirectory(prefix="dr-teacher-") as tmp:
        dest = os.path.join(tmp, posixpath.basename(location.rstrip("/")) or "weights")
        try:
            fs, path = fsspec.core.url_to_fs(location)
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


def _apply_weights(model: nn.Module, spec: TeacherSpec, local: str | None) -> None:
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


def _rng_dependent(spec: TeacherSpec) -> bool:
    """True when the factory's weights change with torch's random seed: it loaded nothing,
    whatever ``pretrained=true`` says (built twice, under seeds 0 and 1)."""
    states = []
    for seed in (0, 1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            states.append(_BUILDERS[spec.kind](spec, None).model.state_dict())
    return any(a.is_floating_point() and not torch.equal(a, states[1].get(k, a)) for k, a in states[0].items())


@dataclass
class _Built:
    """A builder's model plus what it knows about the model's classes and preprocessing."""

    model: nn.Module
    classes: tuple[str, ...] | None = None
    classes_from: str | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    preprocess_from: str | None = None


def _build_timm(spec: TeacherSpec, local: str | None) -> _Built:
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
        raise TeacherError(_download_hint(str(spec), e, "$HF_HOME (or $TORCH_HOME)")) from e
    except Exception as e:  # a bad option (TypeError) and the like: name the spec
        raise TeacherError(f"timm cannot create {spec.name!r} with {kwargs}: {type(e).__name__}: {e}") from e
    if local is not None and local.lower().endswith((".npz", ".npy")):
        load_checkpoint(model, local)  # timm's own loader for JAX/Flax archives
    else:
        _apply_weights(model, spec, local)
    return _Built(model)


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


def _imagenet_wnids(n: int) -> tuple[str, ...] | None:
    """ImageNet-1k WordNet ids (the ImageNet folder names), from timm's bundled tables."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset({"num_classes": n})
        return tuple(ImageNetInfo(subset).label_names()) if subset else None
    except Exception:  # noqa: BLE001 - tables missing: names stay unknown
        return None


def _build_torchvision(spec: TeacherSpec, local: str | None) -> _Built:
    import torchvision

    if spec.name not in torchvision.models.list_models():
        raise TeacherError(f"torchvision has no model {spec.name!r}; see torchvision.models.list_models()")
    w = resolve_torchvision_weights(spec)
    kwargs: dict[str, Any] = dict(spec.kwargs)
    built = _Built(nn.Identity())
    if w is not None:
        categories = list(w.meta.get("categories") or [])
        if categories:
            if int(kwargs.get("num_classes", len(categories))) != len(categories):
                raise TeacherError(f"teacher spec {spec}: {w} has {len(categories)} classes, not num_classes={kwargs['num_classes']}")
            kwargs["num_classes"] = len(categories)
            imagenet = w.name.startswith("IMAGENET1K") and len(categories) == 1000
            built.classes = (_imagenet_wnids(1000) if imagenet else None) or tuple(categories)
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
    built.model = torchvision.models.get_model(spec.name, weights=None, **kwargs)
    if local is not None:
        _apply_weights(built.model, spec, local)
    elif w is not None:
        # the only network access: hub weights the spec asked for (cached under $TORCH_HOME/hub)
        try:
            state = w.get_state_dict(progress=False, check_hash=True)
        except Exception as e:
            raise TeacherError(_download_hint(str(spec), e, "$TORCH_HOME/hub/checkpoints")) from e
        built.model.load_state_dict(state)
    return built


def _download_hint(spec: str, e: BaseException, cache: str) -> str:
    return (
        f"teacher {spec}: cannot get its hub weights ({type(e).__name__}: {e}). Either give this machine network "
        f"access once (the weights are then cached under {cache}), or download the weights elsewhere and name the file: "
        "KIND:NAME@/path/weights.safetensors (or .pth)"
    )


PROGRAM_METADATA = "dr.json"


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


def _build_program(spec: TeacherSpec, local: str | None) -> _Built:
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
    built = _Built(model)
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


def _build_python(spec: TeacherSpec, local: str | None) -> _Built:
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
    _apply_weights(model, spec, local)
    return _Built(model)


_BUILDERS = {
    "timm": _build_timm,
    "torchvision": _build_torchvision,
    "torchscript": _build_program,
    "export": _build_program,
    "python": _build_python,
}


def _size_of(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    parts = parts[1:] if len(parts) == 3 else parts
    return (parts[0], parts[-1]) if parts else None


def _resolve_preprocess(model: nn.Module, spec: TeacherSpec, built: _Built, card: dict[str, Any], card_path: str | None) -> Preprocess:
    """Where each teacher's input normalisation comes from, first match wins: the spec
    (``mean``/``std`` or ``normalize=none``); metadata the builder found (torchvision weights,
    metadata saved inside a program); a JSON card next to the weights; the model's timm-style
    ``pretrained_cfg``. TorchScript/export programs with none of these are refused: a
    program may normalise inside, and a wrong guess costs the whole build (11.66 % vs 82.76 %
    agreement measured with a ResNet-56)."""
    cfg: dict[str, Any] = {}
    if spec.kind == "timm" or hasattr(model, "pretrained_cfg"):
        from timm.data import resolve_model_data_config

        try:
            cfg = resolve_model_data_config(model)
        except Exception:  # noqa: BLE001 - fall back to the other sources
            cfg = {}
    card_pre: dict[str, Any] = {k: card[k] for k in ("mean", "std", "normalize", "input_size", "interpolation") if k in card}
    candidates: list[tuple[str, dict[str, Any]]] = []
    if spec.normalize == "none":
        candidates.append(("spec (normalize=none)", {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}))
    elif spec.mean is not None or spec.std is not None:
        if spec.kind in ("torchscript", "export") and (spec.mean is None or spec.std is None):
            raise TeacherError(f"teacher spec {spec}: give both mean= and std= (or normalize=none)")
        candidates.append(("spec", {"mean": spec.mean, "std": spec.std}))
    if built.preprocess:
        candidates.append((built.preprocess_from or "model metadata", built.preprocess))
    if card_pre:
        candidates.append((f"card {card_path}", card_pre))
    if cfg:
        candidates.append(("pretrained_cfg", dict(cfg)))

    def first(key: str) -> tuple[Any, str | None]:
        for where, values in candidates:
            v = values.get(key)
            if key in ("mean", "std") and values.get("normalize") == "none":
                v = (0.0, 0.0, 0.0) if key == "mean" else (1.0, 1.0, 1.0)
            if v is not None:
                return v, where
        return None, None

    mean, mean_from = first("mean")
    std, _ = first("std")
    if mean is None or std is None:
        if spec.kind in ("torchscript", "export"):
            raise TeacherError(
                f"teacher spec {spec}: the {spec.kind} program does not say how its inputs are normalised. Add "
                "?mean=R,G,B&std=R,G,B (the values it was trained with), or ?normalize=none if it normalises inside "
                "(it then gets inputs in [0, 1]); or save them with the file (teachers.program_metadata)"
            )
        mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
        mean_from = "default (ImageNet mean/std)"
        if spec.kind == "python":
            log.warning("teacher %s: no mean/std in the spec or a pretrained_cfg: using ImageNet's; pass ?mean=...&std=...", spec)
    size: tuple[int, int] | None = spec.input_size
    if size is None:
        raw, _ = first("input_size")
        size = _size_of(raw)
    if size is None and spec.kind == "torchvision":
        size = (224, 224)
    interp = spec.interpolation or first("interpolation")[0] or "bilinear"
    if interp not in ("bilinear", "bicubic", "nearest"):
        interp = "bilinear"
    return Preprocess(size, tuple(float(v) for v in mean), tuple(float(v) for v in std), interp, str(mean_from))  # type: ignore[arg-type]


def _resolve_classes(
    model: nn.Module, spec: TeacherSpec, built: _Built, card: dict[str, Any], card_path: str | None
) -> tuple[tuple[str, ...] | None, str | None]:
    if spec.classes:
        if "," in spec.classes:
            return tuple(c.strip() for c in spec.classes.split(",")), "spec"
        return read_class_names(spec.classes), f"file {spec.classes}"
    if built.classes:
        return built.classes, built.classes_from
    if card.get("classes"):
        return tuple(str(c) for c in card["classes"]), f"card {card_path}"
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("label_names"):
        return tuple(str(c) for c in cfg["label_names"]), "pretrained_cfg"
    if spec.kind == "timm" and (spec.pretrained or spec.weights):
        names = _imagenet_wnids(int(getattr(model, "num_classes", 0) or 0))
        if names:
            return names, "timm ImageNet tables"
    return None, None


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
    torchvision ``weights=``.

    Args:
        spec: a spec string or :class:`TeacherSpec`.

    Returns:
        ``True`` when its network would be randomly initialised (programs never are).
    """
    if isinstance(spec, str):
        spec = parse_teacher_spec(spec)
    return spec.kind in ("timm", "torchvision", "python") and spec.weights is None and not spec.pretrained and spec.hub_weights is None


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
    random_init = is_random_init(spec)
    if not random_init and spec.kind == "python" and spec.weights is None and _rng_dependent(spec):
        # pretrained=true, but the factory's weights follow the random seed: it loaded none
        if not allow_random:
            raise TeacherError(
                f"teacher spec {str(spec)!r} says pretrained=true, but {spec.name} builds a network whose weights change with "
                "the random seed: it loads no weights, so every view would be labelled by a random network. Give the weights "
                f"file (python:{spec.name}@/path/weights.safetensors), or pass --allow-random-teachers (tests and benchmarks "
                "only; the store then records the teacher as random)"
            )
        random_init = True
    if random_init and not allow_random:
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
    classes, classes_from = _resolve_classes(model, spec, built, card, card_path)
    hub = str(resolve_torchvision_weights(spec)) if spec.kind == "torchvision" and spec.weights is None and not random_init else None
    return Teacher(
        model,
        _resolve_preprocess(model, spec, built, card, card_path),
        spec,
        digest,
        classes=classes,
        classes_from=classes_from,
        init_seed=init_seed if random_init else None,
        hub_weights=hub,
    )
