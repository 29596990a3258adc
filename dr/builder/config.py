"""Build configuration: one pydantic model, validated at the edge (CLI or Python)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dr.errors import ConfigError
from dr.sources import DEFAULT_MAX_IMAGE_PIXELS

__all__ = ["BuildConfig", "load_config_file", "EXAMPLE_CONFIG"]


class BuildConfig(BaseModel):
    """Everything that defines a reinforcement build.

    The fields that change the store's bytes (source, teachers, policy, output size, views,
    topk, seed, temperature, chunk size, forward group) are recorded in the store header; the
    rest (Ray address, workers, resume) only change how fast it is made.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(
        description="ImageFolder-layout directory (root/<class>/<image>) or a source spec: wds:, list:, hf-disk:, cifar10:, cifar100:"
    )
    teachers: tuple[str, ...] = Field(min_length=1, description="teacher specs, e.g. timm:resnet50@w.safetensors")
    policy: str = Field("rrc", description="augmentation preset (see `dr-build policies`)")
    out: str = Field(description="store path or fsspec URL (.zarr)")
    views: int = Field(8, ge=1, le=10_000, description="augmented views per image (V)")
    topk: int = Field(5, ge=1, le=1000, description="soft-label entries kept per view (k)")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed of all augmentation sampling")
    output_size: int | None = Field(None, ge=1, le=8192, description="view size in pixels (default: the preset's)")
    crop_scale: float | None = Field(
        None,
        gt=0,
        le=1,
        description="rrc presets: the smallest crop area as a share of the image (default: the preset's 0.08; 0.35 for 64-px images)",
    )
    temperature: float = Field(1.0, gt=0, description="softmax temperature applied to every teacher")
    chunk_size: int = Field(256, ge=1, le=1 << 20, description="images per store chunk = per work unit")
    forward_group: int | None = Field(None, ge=1, description="images per teacher forward batch (default: auto, divides chunk_size)")
    address: str | None = Field(None, description="Ray address (ray://host:10001, auto); default: a private local Ray")
    workers: int | None = Field(None, ge=1, description="teacher actors (default: one per GPU, else 1)")
    cpus_per_worker: float | None = Field(None, gt=0, description="CPUs reserved per actor (default: share the cluster's)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="teacher math: auto = bf16 autocast on CUDA, fp32 on CPU")
    compile: bool = Field(False, description="torch.compile the teachers (15-40 s once per worker; pays off on big builds)")
    decode_threads: int = Field(4, ge=1, le=256, description="image-decoding threads per actor")
    extend: str | None = Field(
        None,
        description="a complete store to extend: SOURCE's images are added as a new segment, with the store's settings and teachers",
    )
    resume: bool = Field(False, description="continue an interrupted build of out (same settings)")
    overwrite: bool = Field(False, description="replace out if it exists")
    force: bool = Field(False, description="take over the store's writer lock")
    on_bad_image: Literal["fail", "skip"] = Field("fail", description="fail: stop naming the file; skip: record it as skipped")
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS,
        ge=1,
        description="decode limit: an image whose header declares more pixels is a bad image, never decoded (decompression bombs)",
    )
    max_retries: int = Field(3, ge=0, le=100, description="times a unit is retried after its worker died")
    start_timeout: float = Field(
        600.0, gt=0, description="seconds to wait for a teacher worker while none is running; then the build fails"
    )
    max_chunks: int | None = Field(None, ge=1, description="stop after writing this many chunks (staged builds)")
    repair: bool = Field(False, description="with resume: check every done chunk against its digests and recompute the damaged ones")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for remote stores and sources")
    class_map: str | None = Field(
        None, description="teacher classes -> dataset classes: identity, names, or a JSON/YAML file {dataset_class: teacher class(es)}"
    )
    allow_random_teachers: bool = Field(False, description="accept teacher specs without weights (seeded random init; tests, benchmarks)")
    check_on: str | None = Field(None, description="labelled ImageFolder: measure each teacher's top-1 on it before the build")
    check_images: int = Field(1000, ge=1, description="at most this many --check-on images (a seeded sample)")
    min_agreement: float | None = Field(
        None, ge=0, le=1, description="stop when teacher top-1 agreement with the labels is below this (default: 2x chance; 0: off)"
    )
    agreement_check_images: int = Field(
        512,
        ge=1,
        description="images after which the agreement guard also judges the plain agreement (it judges a proven collapse at once)",
    )

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
    for key in sorted(set(map(str, data)) - set(allowed)):
        near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        meant.update(near)
        problems.append(f"unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    merged = {k: v for k, v in {**data, **(overrides or {})}.items() if k in allowed}
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


EXAMPLE_CONFIG = """\
# dr-build reinforce --config build.yaml   (command-line flags override these keys)
source: /data/imagenet/train          # ImageFolder layout <source>/<class>/<image>, or wds:/data/train-{000000..000127}.tar?label=cls, list:train.csv, hf-disk:PATH?image=img&label=label, cifar10:DIR
out: /shared/stores/imagenet+.zarr    # or s3://bucket/prefix/imagenet+.zarr
teachers:                             # KIND:NAME[@WEIGHTS][?options]; an ensemble averages probabilities
  - timm:resnet50@/weights/resnet50.safetensors
  - timm:vit_base_patch16_224@/weights/vit_b16.safetensors?weight=1
policy: rrc+mix+ra/re                 # see `dr-build policies`
views: 50                             # V: augmented views per image
topk: 10                              # k: soft-label entries kept per view
seed: 0
temperature: 1.0
chunk_size: 256                       # images per store chunk and per work unit
# output_size: 224                    # default: the preset's
# forward_group: 8                    # images per teacher batch (default: auto)
address: auto                         # Ray: auto (join this host's cluster), ray://head:10001; omit: a private local Ray
# workers: 8                          # default: one per GPU, else 1
# cpus_per_worker: 4                  # CPUs reserved per actor (default: share the cluster's)
device: auto                          # auto | cpu | cuda
precision: auto                       # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
compile: false                        # torch.compile the teachers (pays off on big builds)
decode_threads: 4
on_bad_image: fail                    # fail | skip
# max_image_pixels: 89478485          # decode limit: larger images are bad images (decompression bombs)
max_retries: 3                        # per unit, after a worker dies
start_timeout: 600                    # seconds to wait for a worker while none runs; then fail
# max_chunks: 10                      # stop after this many chunks (exit code 3; finish with --resume)
# extend: /shared/stores/imagenet+.zarr  # add SOURCE to this complete store as a new segment (no out:; its settings)
resume: false
# repair: false                       # with resume: recompute chunks that fail their digests (see dr-build verify)
overwrite: false
force: false                          # take over the store's writer lock
storage_options: {}                   # fsspec options for remote stores, e.g. {endpoint_url: ...}
# class_map: names                    # teacher classes -> dataset classes: identity | names | map.json
# check_on: /data/imagenet/val        # pre-flight: each teacher's top-1 on a labelled folder first
# min_agreement: 0.002                # stop if teacher top-1 agreement with labels is lower (default 2x chance; 0 off)
# check_images: 1000                  # at most this many check_on images
# agreement_check_images: 512         # images after which the agreement guard also judges the plain share
# allow_random_teachers: false        # accept teacher specs without weights (tests, benchmarks only)
"""
"""A commented example of every build-config key: what ``dr-build config`` prints."""
