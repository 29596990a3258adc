"""Build configuration: one pydantic model, validated at the edge (CLI or Python)."""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dr.errors import ConfigError
from dr.limits import MAX_CHUNK_SIZE, MAX_OUTPUT_SIZE, MAX_SEED, MAX_SHARD_IMAGES, MAX_TOPK, MAX_VIEWS
from dr.sources import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from dr.storage.layout import VERSION_3_PROBS
from dr.urls import Location

__all__ = ["BuildConfig", "EXAMPLE_CONFIG", "config_reference", "example_config", "field_bounds", "flag_of", "load_config_file"]


def _field(default: Any, help: str, *, flag: str | None = None, metavar: str | None = None, example: Any = None, **rules: Any) -> Any:
    """A BuildConfig field and everything its flag, its example and its docs row need: ``help``
    (the flag's help, the example's comment, the docs' meaning), ``flag`` (the command-line form
    when it is not ``--field-name``; ``"SOURCE"`` for the argument), ``metavar``, ``example``
    (the value ``dr-build config`` shows; ``None``: the default, commented out) and the bounds."""
    extra = {k: v for k, v in {"flag": flag, "metavar": metavar, "example": example}.items() if v is not None}
    return Field(default, description=help, json_schema_extra=extra or None, **rules)


RENAMED_KEYS = {"check_on": "eval_on", "check_images": "eval_images"}
"""Old build-setting names -> their names now; the old ones (config keys, keyword arguments and
hidden flags) still work, with a DeprecationWarning, until dr 0.4."""


def _rename_old_keys(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the old names of :data:`RENAMED_KEYS` replaced by the new ones (a value
    given under the old name wins: the CLI passes every flag, given or not, under the new name;
    ``None`` under the old name is a hidden flag not given)."""
    if not RENAMED_KEYS.keys() & data.keys():
        return data
    data = dict(data)
    for old, new in RENAMED_KEYS.items():
        value = data.pop(old, None)
        if value is not None:
            warnings.warn(
                f"build setting {old!r} is now {new!r} ({flag_of(new)}): the old name goes in dr 0.4", DeprecationWarning, stacklevel=3
            )
            data[new] = value
    return data


class BuildConfig(BaseModel):
    """Everything that defines a reinforcement build.

    Each field is a ``dr-build reinforce`` flag (``--field-name``, generated from the field by
    :func:`dr.cli.main.reinforce`), a key of ``--config`` files, a line of ``dr-build config``'s
    example and a row of the configuration reference -- all generated from the declarations
    below, so they cannot drift apart. The fields that change the store's bytes (source,
    teachers, policy, crop scale, output size, views, topk, seed, temperature, chunking and the
    store layout) are recorded in the store header; the rest only change how it is made.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- what is built ------------------------------------------------------------------------------
    source: str = _field(
        ...,
        "ImageFolder-layout directory (SOURCE/<class>/<image>) or fsspec URL, or a source spec: wds:, list:, hf-disk:, cifar10:, cifar100:",
        flag="SOURCE",
        example="/data/imagenet/train",
    )
    teachers: tuple[str, ...] = _field(
        ...,
        "Teacher spec KIND:NAME[@WEIGHTS][?options]; repeat the flag for an ensemble (probabilities are averaged)",
        flag="--teacher",
        metavar="SPEC",
        example=["timm:resnet50@/weights/resnet50.safetensors", "timm:vit_base_patch16_224@/weights/vit_b16.safetensors"],
        min_length=1,
    )
    out: str = _field(
        ..., "The store: a .zarr path or an fsspec URL (s3://bucket/x.zarr)", metavar="STORE", example="/shared/stores/imagenet+.zarr"
    )
    policy: str = _field("rrc", "Augmentation preset (see `dr-build policies`)", metavar="NAME", example="rrc+mix+ra/re")
    crop_scale: float | None = _field(
        None,
        "For the rrc presets, the smallest crop area as a share of the image (default: the preset's 0.08); small images lose "
        "their label in small crops (docs/how-to/choosing.md)",
        gt=0,
        le=1,
    )
    output_size: int | None = _field(None, "View size in pixels (default: the preset's, 224 rrc / 32 cifar)", ge=1, le=MAX_OUTPUT_SIZE)
    views: int = _field(8, "Augmented views per image (V)", flag="--views/-V", example=50, ge=1, le=MAX_VIEWS)
    topk: int = _field(5, "Soft-label entries kept per view (k)", flag="--topk/-k", example=10, ge=1, le=MAX_TOPK)
    seed: int = _field(0, "Seed of all augmentation sampling", example=0, ge=0, le=MAX_SEED)
    temperature: float = _field(1.0, "Softmax temperature applied to every teacher", example=1.0, gt=0)
    chunk_size: int = _field(256, "Images per store chunk and per work unit", example=256, ge=1, le=MAX_CHUNK_SIZE)
    forward_group: int | None = _field(
        None, "Images per teacher forward batch (default: auto, ~512 views, divides chunk_size)", ge=1, le=MAX_CHUNK_SIZE
    )
    # -- the store's layout ----------------------------------------------------------------------------
    shard_images: int | None = _field(
        None,
        "Images per shard object, a multiple of chunk_size (default: ~65,536 images or 256 MB per array; 0: one object "
        "per chunk, the version-3 layout)",
        ge=0,
        le=MAX_SHARD_IMAGES,
    )
    probs_dtype: Literal["float16", "uint8"] = _field(
        VERSION_3_PROBS,
        "How the top-k probabilities are stored: float16, or uint8 (p = q/255, error <= 0.002, fewer bytes)",
        example=VERSION_3_PROBS,
    )
    params: Literal["stored", "derived"] = _field(
        "stored",
        "Where the views' parameters live: stored in the store, or derived -- only their digests are stored and readers "
        "re-derive them with dr's keyed sampler (a smaller store, read by a dr with the same sampler version)",
        example="stored",
    )
    extend: str | None = _field(
        None,
        "Add SOURCE's images to this complete store as a new segment: the store's settings are used (flags that repeat them "
        "must agree), the teachers must be the store's (same weights), existing chunks are never rewritten",
        metavar="STORE",
    )
    # -- where and how it runs -------------------------------------------------------------------------
    address: str | None = _field(
        None,
        "Ray cluster to join: auto (this host's), ray://head:10001, host:port; default: a private local Ray that ignores "
        "RAY_ADDRESS and other programs' Ray",
        example="auto",
    )
    workers: int | None = _field(None, "Teacher actors (default: one per GPU, else 1)", ge=1)
    cpus_per_worker: float | None = _field(None, "CPUs reserved per actor (default: share the cluster's)", gt=0)
    device: Literal["auto", "cpu", "cuda"] = _field("auto", "Teacher device", example="auto")
    precision: Literal["auto", "fp32", "bf16"] = _field(
        "auto",
        "Teacher math: auto = bf16 autocast on CUDA, fp32 on CPU; bf16 = bf16 autocast on any device (fast on CPUs with AVX-512 BF16 or AMX)",
        example="auto",
    )
    compile: bool = _field(
        False, "Compile the teachers with torch.compile (15-40 s once per worker; pays off on big builds)", example=False
    )
    decode_threads: int = _field(4, "Image-decoding threads per actor", example=4, ge=1, le=256)
    units_per_worker: int = _field(
        2,
        "Chunks queued on each teacher actor (two run at once). Raise it when an actor finishes a chunk faster than the "
        "driver writes a batch of them (fast GPU teachers); on a 2-core CPU build 4 was no faster than 2",
        example=2,
        ge=2,
        le=64,
    )
    write_interval: float = _field(
        5.0, "Sharded stores: seconds finished chunks may wait to be written together (a crash recomputes them)", ge=0, le=3600
    )
    # -- stops, resumes, repairs -------------------------------------------------------------------------
    resume: bool = _field(False, "Continue an interrupted build of the store (same settings): done chunks are skipped", example=False)
    overwrite: bool = _field(False, "Replace the store if it exists", example=False)
    repair: bool = _field(
        False,
        "With resume: check every done chunk against its digests and recompute the damaged ones (what `verify` reports as FAIL chunk)",
    )
    force: bool = _field(
        False,
        "Take over a writer lock left on another host (or by a dr older than 0.3); a lock left on this host by a build that "
        "died is taken over by --resume, and one whose holder runs here is never taken",
        example=False,
    )
    max_chunks: int | None = _field(None, "Stop after writing this many chunks (exit code 3; finish with --resume)", ge=1)
    max_retries: int = _field(3, "Times a chunk is retried after its worker died", example=3, ge=0, le=100)
    start_timeout: float = _field(
        600.0, "Seconds to wait for a teacher worker while none runs; then the build fails, naming why", example=600, gt=0
    )
    on_bad_image: Literal["fail", "skip"] = _field(
        "fail",
        "What a bad image does: fail stops the build naming the file (finished chunks are kept), skip records it as skipped",
        example="fail",
    )
    max_image_pixels: int = _field(
        DEFAULT_MAX_IMAGE_PIXELS,
        "Decode limit: an image whose header declares more pixels is a bad image, never decoded (a decompression bomb)",
        ge=1,
    )
    max_image_bytes: int = _field(
        DEFAULT_MAX_IMAGE_BYTES,
        "Read limit: a source file larger than this many bytes is a bad image, never read whole (a file of endless "
        "bytes such as /dev/zero)",
        ge=1,
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="An fsspec option for a remote store or source (repeat the flag), e.g. endpoint_url=http://127.0.0.1:9000",
        json_schema_extra={"flag": "--storage-option", "metavar": "KEY=VALUE", "example": {}},
    )
    # -- the teachers, checked ----------------------------------------------------------------------------
    class_map: str | None = _field(
        None,
        "Teacher classes -> dataset classes: identity (same order), names (same names), or a JSON/YAML file "
        "{dataset_class: teacher class or [classes]}; needed when the classes differ",
        metavar="identity|names|FILE",
    )
    eval_on: str | None = _field(
        None,
        "Pre-flight: each teacher's and the ensemble's top-1 on this labelled folder first; stop if below min_agreement",
        metavar="VAL_DIR",
    )
    eval_images: int = _field(1000, "At most this many eval_on images (a seeded sample)", ge=1)
    min_agreement: float | None = _field(
        None, "Stop when the teachers' top-1 agreement with the labels is below this (default: twice chance; 0: off)", ge=0, le=1
    )
    agreement_check_images: int = _field(
        512, "Images after which the agreement guard also judges the plain agreement share (a proven collapse stops at once)", ge=1
    )
    allow_random_teachers: bool = _field(False, "Accept teacher specs without weights (seeded random init; tests, benchmarks)")

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        """The old names of renamed settings (:data:`RENAMED_KEYS`) still work, with a warning."""
        return _rename_old_keys(data) if isinstance(data, dict) else data

    @model_validator(mode="before")
    @classmethod
    def _extension_out(cls, data: Any) -> Any:
        """An extension is written into the store it extends: ``out`` defaults to ``extend``."""
        if isinstance(data, dict) and data.get("extend") and not data.get("out"):
            return {**data, "out": data["extend"]}
        return data

    @field_validator("teachers", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v

    @field_validator("teachers")
    @classmethod
    def _absolute_teachers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        """Local weight/program/classes files as absolute paths: the header records them, and
        ``verify`` or a resume may run from another directory."""
        from dr.teachers.spec import absolute_teacher_spec

        try:
            return tuple(absolute_teacher_spec(s) for s in v)
        except Exception as e:
            raise ConfigError(str(e)) from e  # a ValueError: pydantic reports it

    @field_validator("class_map")
    @classmethod
    def _absolute_class_map(cls, v: str | None) -> str | None:
        if v is None or v in ("identity", "names") or "://" in v:
            return v
        return os.path.abspath(os.path.expanduser(v))

    @model_validator(mode="after")
    def _shards_hold_chunks(self) -> BuildConfig:
        if self.shard_images and self.shard_images % self.chunk_size:
            raise ConfigError(
                f"shard_images {self.shard_images} must be a multiple of chunk_size {self.chunk_size} (a shard holds whole chunks)"
            )
        return self

    def location(self, url: str) -> Location:
        """``url`` (``out``, ``extend``, a segment of it) with this build's fsspec options."""
        return Location(url, self.storage_options)

    def resolved_forward_group(self) -> int:
        """Images per teacher forward pass: explicit, else the largest power of two with
        ``group * views <= 512`` that divides ``chunk_size``."""
        if self.forward_group is not None:
            return self.forward_group
        g = 1
        while g * 2 * self.views <= 512 and self.chunk_size % (g * 2) == 0:
            g *= 2
        return g


def load_config_file(path: str | Path, overrides: dict[str, Any] | None = None) -> BuildConfig:
    """Read a YAML build config, apply ``overrides`` (command-line flags), validate.

    Raises:
        ConfigError: unreadable YAML, an unknown key (named, with the allowed keys) or a bad
            value (the key, the value and the rule).
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values, got {type(data).__name__}")
    allowed = sorted(BuildConfig.model_fields)
    problems: list[str] = []
    meant: set[str] = set()  # keys a misspelt key probably stands for (their "missing" is not news)
    data = _rename_old_keys(data)  # before the flags' overrides: a flag beats the file's key, old name or new
    for key in sorted(set(map(str, data)) - set(allowed)):
        near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        meant.update(near)
        problems.append(f"unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    merged = {k: v for k, v in {**data, **(overrides or {})}.items() if k in allowed or k in RENAMED_KEYS}
    try:
        config = BuildConfig(**merged)
    except ValidationError as e:
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "missing":
                if key not in meant:
                    problems.append(f"{key}: missing (a required key)")
            else:
                problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    if problems:
        listing = "".join(f"\n  - {p}" for p in problems)
        raise ConfigError(
            f"{len(problems)} problem(s) in config file {str(path)!r}:{listing}\nallowed keys: {', '.join(allowed)}"
        ) from None
    return config


def flag_of(name: str) -> str:
    """The command-line form of BuildConfig field ``name`` (``--chunk-size``, ``--teacher``, ``SOURCE``)."""
    extra = BuildConfig.model_fields[name].json_schema_extra
    flag = extra.get("flag") if isinstance(extra, dict) else None
    return str(flag).split("/")[0] if flag else "--" + name.replace("_", "-")


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def example_config() -> str:
    """A commented example of every build-config key (``dr-build config``): the keys with an
    example value set to it, the others commented out at their default."""
    lines = ["# dr-build reinforce --config build.yaml   (command-line flags override these keys)"]
    for name, f in BuildConfig.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if "example" in extra:
            value = extra["example"]
            if isinstance(value, list):
                lines.append(f"{name}:{'':<29} # {f.description}")
                lines += [f"  - {_yaml(v)}" for v in value]
                continue
            text = f"{name}: {_yaml(value)}"
        else:
            default = None if f.is_required() else f.get_default(call_default_factory=True)
            text = f"# {name}: {_yaml(default)}"
        lines.append(f"{text:<37} # {f.description}")
    return "\n".join(lines) + "\n"


EXAMPLE_CONFIG = example_config()
"""A commented example of every build-config key: what ``dr-build config`` prints."""


def config_reference() -> str:
    """The build settings as the Markdown table of ``docs/reference/config.md`` (generated, so it
    lists every field with its flag, default and bounds)."""
    rows = ["| flag | config key | default | meaning |", "|---|---|---|---|"]
    for name, f in BuildConfig.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        flags = [x for x in str(extra.get("flag") or flag_of(name)).split("/")]
        metavar = extra.get("metavar")
        shown = ", ".join(f"`{x}{' ' + str(metavar) if metavar and x.startswith('--') else ''}`" for x in flags).replace("|", "\\|")
        if f.is_required():
            default = "required"
        else:
            value = f.get_default(call_default_factory=True)
            default = "—" if value is None or value == {} else f"`{_yaml(value)}`"
        bounds = [f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in field_bounds(f).items()]
        meaning = (
            ((f.description or "") + (f" ({', '.join(bounds)})" if bounds else ""))
            .replace("|", "\\|")
            .replace("<", "&lt;")
            .replace("[", "\\[")
        )
        rows.append(f"| {shown} | `{name}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


def field_bounds(f: Any) -> dict[str, Any]:
    """A field's numeric bounds (``>=``, ``>``, ``<=``), from its pydantic metadata."""
    out = {}
    for m in f.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                out[sign] = getattr(m, attr)
    return out


#: the markers between which ``docs/reference/config.md`` holds :func:`config_reference`'s table
REFERENCE_MARKERS = (
    "<!-- generated by `python -m dr.builder.config docs/reference/config.md`: do not edit -->",
    "<!-- end of generated -->",
)


def write_reference(path: str | Path) -> bool:
    """Replace the generated table of a Markdown page (between :data:`REFERENCE_MARKERS`) with
    :func:`config_reference`; returns whether the page changed."""
    page = Path(path).read_text()
    head, mark, rest = page.partition(REFERENCE_MARKERS[0])
    _, end, tail = rest.partition(REFERENCE_MARKERS[1])
    if not mark or not end:
        raise ConfigError(f"{path}: the generated-table markers are missing: {REFERENCE_MARKERS}")
    new = f"{head}{mark}\n{config_reference()}{end}{tail}"
    Path(path).write_text(new)
    return new != page


if __name__ == "__main__":
    import sys

    print("changed" if write_reference(sys.argv[1]) else "up to date")
