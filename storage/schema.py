"""The store schema (versions 3 and 4): the header model, its seal, the version checks.

A store is a Zarr v3 group. Its attributes are the header (:class:`StoreHeader`, JSON), so
``zarr.open_group(path).attrs`` explains the store without this package. The arrays are
declared in :mod:`dr.storage.layout` (paths, shapes, dtypes, chunking, codecs, fill values).

Version 4 adds ``header.layout`` (:class:`StoreLayout`): sharding (``shard_images``), the
probabilities' dtype (float16 or uint8) and stored or derived parameters (with the keyed
sampler's version). A store whose layout is version 3's -- unsharded, float16, stored
parameters -- is written as a version-3 store, in the layout dr 0.2 writes, so dr 0.2
reads it; this code reads both versions.

The ensemble record (``header.ensemble``, part of the resume key) holds the *resolved* teacher
math: ``precision`` (``fp32``, or ``bf16`` = bf16 autocast body with an fp32 classifier head
and softmax), ``device`` (``cpu`` or ``cuda``) and ``compile``.

Source locations (``header.dataset.location``) are absolute paths or URLs.

The header is sealed: ``header.seal`` holds a SHA-256 of each field that decides what a view
is and what its target means (:data:`SEALED_FIELDS`: the dataset's identity, classes, views,
k, seed, chunking, output size, the policy, the parameter layout, the teachers' identities and
math, and in version 4 the store layout) and a digest over those, which also keys every chunk
digest in ``build/digests``. Editing a sealed field is named by every reader; editing the field
and its hash together leaves every chunk digest wrong. Unsealed fields (status, times, skipped
reasons, source location, build settings) can change without touching the data's meaning.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from dr.errors import ConfigError
from dr.limits import MAX_CHUNK_SIZE, MAX_IMAGES, MAX_OUTPUT_SIZE, MAX_SEED, MAX_SHARD_IMAGES, MAX_TOPK, MAX_VIEWS
from dr.storage.layout import VERSION_3_PROBS

__all__ = [
    "FORMAT",
    "READABLE_VERSIONS",
    "SCHEMA_VERSION",
    "SEALED_FIELDS",
    "HeaderSeal",
    "ParamFieldSpec",
    "DatasetInfo",
    "StoreHeader",
    "StoreLayout",
]

FORMAT = "dr-store"
"""The header's ``format`` value: what marks a Zarr group as a dr store."""
# 2: keyed per-view sampling streams, one replay arithmetic; 3: sealed header (both 0.2.0);
# 4: the store layout -- shards, uint8 probabilities, derived parameters (0.3.0)
SCHEMA_VERSION = 4
"""The newest store schema this code writes (a store in version 3's layout is written as version 3)."""
READABLE_VERSIONS = (3, 4)
"""The store schemas this code reads (other versions are refused, naming both)."""
#: the header fields the seal covers -- the resume key (:meth:`StoreHeader.config_key`): each one
#: decides which view a stored row replays or what its target means (the dataset without its
#: location, the teachers without their file locations); version 4 adds ``layout``
SEALED_FIELDS_V3 = (
    "schema_version",
    "dataset",
    "num_classes",
    "views",
    "topk",
    "seed",
    "chunk_size",
    "forward_group",
    "output_size",
    "policy",
    "param_fields",
    "ensemble",
)
SEALED_FIELDS = (*SEALED_FIELDS_V3, "layout")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamFieldSpec(_Strict):
    """One parameter array: ``params/<name>`` of shape ``[N, V, *shape]`` and ``dtype``.

    Attributes:
        name: the field's name (``crop_box``, ``flip``, ...): lower case, digits, ``_``.
        dtype: the numpy dtype of the array.
        shape: the per-view shape (``()`` for a scalar per view).
        doc: what the field holds.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    dtype: Literal["uint8", "int8", "uint16", "int16", "uint32", "int32", "float16", "float32"]
    shape: tuple[int, ...] = ()
    doc: str = ""


class StoreLayout(_Strict):
    """How a version-4 store keeps its arrays (:mod:`dr.storage.layout`).

    Attributes:
        shard_images: images per shard object (a multiple of ``chunk_size``), or ``None``:
            one object per chunk, as in version 3.
        probs: ``targets/probs`` as ``float16`` or ``uint8`` (the linear code ``p = q / 255``).
        params: ``stored`` parameter arrays, or ``derived``: only their chunk digests are
            stored and readers re-derive them with the keyed sampler.
        sampler_version: the keyed sampler's version (:data:`dr.policy.SAMPLER_VERSION`) the
            build used: a reader with another sampler refuses derived parameters.
    """

    shard_images: int | None = Field(default=None, ge=1, le=MAX_SHARD_IMAGES)
    probs: Literal["float16", "uint8"] = VERSION_3_PROBS
    params: Literal["stored", "derived"] = "stored"
    sampler_version: int = Field(ge=1, le=1_000_000)

    @property
    def is_version_3(self) -> bool:
        """Whether this is version 3's layout (unsharded, float16, stored parameters)."""
        return self.shard_images is None and self.probs == VERSION_3_PROBS and self.params == "stored"


class DatasetInfo(_Strict):
    """What the store was built from.

    Attributes:
        kind: the source kind (``image_folder``, ``wds``, ``list``, ``hf-disk``, ``cifar10``, ...).
        count: the number of images N.
        classes: the class names, in label order.
        labels_sha256: SHA-256 of the class names and the labels (the dataset's identity).
        digests_sha256: SHA-256 of ``source/digests``, set when the build completes.
        location: where the source was read from: an absolute path, a URL or a source spec.
        offset: the global index of this store's first image: 0, except in a segment that
            extends a store (:mod:`dr.storage.segments`), where it is the number of images in
            the segments before it. Every view's random stream and every mixing partner use
            global indices, so a segment holds what a one-shot build over all segments would.
    """

    kind: str
    count: int = Field(ge=1, le=MAX_IMAGES)
    classes: tuple[str, ...]
    labels_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    digests_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    location: str | None = None
    offset: int = Field(default=0, ge=0, le=MAX_IMAGES)


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


class HeaderSeal(_Strict):
    """The header's seal: a SHA-256 per sealed field and one digest over them all (which keys
    the chunk digests, so the seal cannot be rewritten alone).

    Attributes:
        algorithm: ``sha256``.
        fields: sealed field name to the SHA-256 of its canonical JSON.
        digest: SHA-256 of the canonical JSON of ``fields``.
    """

    algorithm: Literal["sha256"] = "sha256"
    fields: dict[str, Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]]
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")


class StoreHeader(_Strict):
    """The store's root attributes (the header; see the store format reference).

    Attributes:
        format: always ``dr-store``.
        schema_version: :data:`SCHEMA_VERSION`.
        status: ``building`` until every chunk is done, then ``complete``.
        tool_version: the dr version that created the store.
        created_at: ISO 8601 creation time.
        completed_at: ISO 8601 completion time, or ``None``.
        dataset: what the store was built from.
        num_classes: the dataset's class count.
        views: V, the views per image.
        topk: k, the soft-label entries kept per view.
        seed: the seed of every view's random stream.
        chunk_size: images per store chunk (and work unit).
        forward_group: images per teacher batch (divides ``chunk_size``).
        output_size: the view size the teachers saw, in pixels.
        policy: the augmentation policy (``Policy.to_dict()``).
        param_fields: the parameter arrays' layout.
        ensemble: the teachers, their preprocessing, classes, class map and arithmetic.
        build: the resolved build configuration and build records.
        skipped: source index to the reason the image was skipped.
        layout: how the arrays are kept (version 4; ``None`` in version 3, whose layout is fixed).
        seal: the seal of the sealed fields (:data:`SEALED_FIELDS`).
    """

    format: Literal["dr-store"] = "dr-store"
    schema_version: int
    status: Literal["building", "complete"]
    tool_version: str
    created_at: str
    completed_at: str | None = None
    dataset: DatasetInfo
    num_classes: int = Field(ge=1, le=2**31)
    views: int = Field(ge=1, le=MAX_VIEWS)
    topk: int = Field(ge=1, le=MAX_TOPK)
    seed: int = Field(ge=0, le=MAX_SEED)
    chunk_size: int = Field(ge=1, le=MAX_CHUNK_SIZE)
    forward_group: int = Field(ge=1, le=MAX_CHUNK_SIZE)
    output_size: int = Field(ge=1, le=MAX_OUTPUT_SIZE)
    policy: dict[str, Any]
    param_fields: tuple[ParamFieldSpec, ...]
    ensemble: dict[str, Any]
    build: dict[str, Any] = Field(default_factory=dict)
    skipped: dict[Annotated[str, StringConstraints(pattern=r"^[0-9]{1,12}$")], Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=dict
    )
    layout: StoreLayout | None = None
    seal: HeaderSeal | None = None

    @model_validator(mode="after")
    def _layout_matches_version(self) -> StoreHeader:
        if self.schema_version >= 4 and self.layout is None:
            raise ConfigError(f"a version-{self.schema_version} header needs its layout")
        if self.schema_version < 4 and self.layout is not None:
            raise ConfigError(f"a version-{self.schema_version} header has no layout")
        return self

    @property
    def sealed_fields(self) -> tuple[str, ...]:
        """The sealed fields of this header's schema version."""
        return SEALED_FIELDS_V3 if self.schema_version < 4 else SEALED_FIELDS

    def compute_seal(self) -> HeaderSeal:
        """The seal of this header's sealed fields, as :meth:`config_key` renders them."""
        key = self.config_key()
        fields = {name: hashlib.sha256(_canonical(key[name])).hexdigest() for name in self.sealed_fields}
        return HeaderSeal(fields=fields, digest=hashlib.sha256(_canonical(fields)).hexdigest())

    def sealed(self) -> StoreHeader:
        """This header with its seal (what a writer stores)."""
        return self.model_copy(update={"seal": self.compute_seal()})

    def seal_problems(self) -> list[str]:
        """What does not match the seal: the names of edited sealed fields, ``"seal"`` when the
        seal itself was altered or removed; empty for an intact header."""
        if self.seal is None:
            return ["seal"]
        now = self.compute_seal()
        edited = [name for name in self.sealed_fields if self.seal.fields.get(name) != now.fields[name]]
        if edited:
            return edited
        return [] if self.seal.digest == now.digest and set(self.seal.fields) == set(self.sealed_fields) else ["seal"]

    def to_attrs(self) -> dict[str, Any]:
        """The header as the store's attributes (JSON). ``dataset.offset`` is written only
        when non-zero, so a store that is not a segment has the attributes every 0.2 reader
        reads."""
        attrs = self.model_dump(mode="json")
        if not self.dataset.offset:
            attrs["dataset"].pop("offset", None)
        if self.layout is None:
            attrs.pop("layout", None)
        return attrs

    def digest_key(self) -> bytes:
        """The key of the chunk digests (BLAKE2b keyed with the seal's digest)."""
        return bytes.fromhex(self.seal.digest) if self.seal is not None else b""

    def config_key(self) -> dict[str, Any]:
        """The fields that must match for a resume to continue a build (no timestamps, no
        file locations: teachers are keyed by their weights' digest, not where the file lies,
        like the dataset by its content, not its path -- see :func:`_location_free`)."""
        unkeyed = {"digests_sha256", "location"} | (set() if self.dataset.offset else {"offset"})
        key = self.model_dump(include=set(self.sealed_fields), exclude={"dataset": unkeyed}, mode="json")
        key["ensemble"] = _location_free(key["ensemble"])
        return key


def _location_free(ensemble: dict[str, Any]) -> dict[str, Any]:
    """The ensemble record without where its files lie: each teacher's spec loses its
    ``@WEIGHTS`` (or program path) and ``classes=`` file, ``weights``/``classes_from`` go (the
    weights' sha256, the class names and the map's ids stay), so the same build resumes from
    another directory or checkout."""
    out = dict(ensemble)
    teachers = []
    for t in ensemble.get("teachers", []):
        t = {k: v for k, v in t.items() if k not in ("weights", "classes_from")}
        spec = str(t.get("spec", ""))
        kind, _, rest = spec.partition(":")
        rest, sep, query = rest.partition("?")
        program = kind in ("torchscript", "export")
        rest = "" if program else rest.partition("@")[0]
        query = "&".join(p for p in query.split("&") if p and not p.startswith("classes="))
        t["spec"] = f"{kind}:{rest}{sep if query else ''}{query}"
        if program:
            t.pop("name", None)
        teachers.append(t)
    out["teachers"] = teachers
    if isinstance(out.get("class_map"), dict):
        out["class_map"] = {k: v for k, v in out["class_map"].items() if k != "source"}
    return out
