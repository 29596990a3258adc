"""The store's arrays, declared once: path, shape, dtype, chunking, sharding, codec, fill value,
whether a chunk digest covers it and whether it is stored at all.

Every module that creates, writes, reads, checks or describes a store's arrays takes them from
here (the writer, the integrity checks, ``verify``, ``info``, the dry run, the build worker and
both training readers); no other module spells an array path or a stored dtype (a test looks).

With ``N`` images, ``V`` views, ``k`` top-k entries and ``C = ceil(N / chunk_size)`` chunks::

    params/<field>    [N, V, *shape]  per-view augmentation parameters (header.param_fields);
                                       absent with derived parameters (see below)
    targets/ids       [N, V, k]       class ids, by probability descending: uint8 up to 256
                                       classes, uint16 up to 65,536, else uint32
    targets/probs     [N, V, k]       the ensemble's top-k probabilities, descending: float16, or
                                       uint8 with the linear code p = q / 255 (see encode_probs)
    source/labels     [N]             int32 dataset label of each image
    source/sizes      [N, 2]          uint32 decoded (height, width)
    source/digests    [N, 16]         uint8 BLAKE2b-128 of each image's bytes (or pixels)
    source/skipped    [N]             uint8 1 if the image could not be used
    build/done        [C]             uint8 1 once the chunk's rows are written and verified
    build/digests     [C, A, 16]      uint8 BLAKE2b-128 of each chunk's rows of each digested array

Chunks run along the first axis: ``chunk_size`` images (one chunk per work unit), one done
entry per store chunk. A *sharded* store (schema 4, ``layout.shard_images`` = S) keeps each
array in one object per S images (Zarr v3's sharding codec; the chunk stays the inner chunk),
so ImageNet at S = 65,536 is 20 objects per array instead of 5,000.

Derived parameters (``layout.params == "derived"``): a view's parameters are a pure function of
(seed, global image index, view, image size, the chunk as the mixing pool) through the keyed
sampler, so the store keeps only their chunk digests and the sampler's version; a reader
re-derives a chunk's parameters and checks them against the digests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from dr.errors import StoreError

__all__ = [
    "ArraySpec",
    "CHUNK_DIGESTS",
    "DIGESTS",
    "DIGEST_BYTES",
    "DONE",
    "IDS",
    "LABELS",
    "PARAMS",
    "PROBS",
    "PROBS_DTYPES",
    "PROBS_MAX_ERROR",
    "SIZES",
    "SKIPPED",
    "SOURCE_ARRAYS",
    "TARGET_ARRAYS",
    "WORKER_ARRAYS",
    "array_specs",
    "decode_probs",
    "default_shard_images",
    "digest_paths",
    "encode_probs",
    "fill_value",
    "ids_dtype",
    "is_param",
    "param_name",
    "param_path",
    "param_paths",
    "probs_dtype",
    "stored_paths",
]


class StoreHeader(Protocol):
    """What this module reads of a store header (:class:`dr.storage.schema.StoreHeader`)."""

    @property
    def dataset(self) -> Any: ...
    @property
    def num_classes(self) -> int: ...
    @property
    def views(self) -> int: ...
    @property
    def topk(self) -> int: ...
    @property
    def chunk_size(self) -> int: ...
    @property
    def param_fields(self) -> Sequence[Any]: ...
    @property
    def layout(self) -> Any: ...


PARAMS = "params"
IDS = "targets/ids"
PROBS = "targets/probs"
LABELS = "source/labels"
SIZES = "source/sizes"
DIGESTS = "source/digests"
SKIPPED = "source/skipped"
DONE = "build/done"
CHUNK_DIGESTS = "build/digests"
DIGEST_BYTES = 16

TARGET_ARRAYS = (IDS, PROBS)
SOURCE_ARRAYS = (LABELS, SIZES, DIGESTS, SKIPPED)
#: the per-image arrays a build worker computes (``source/labels`` is written when the store is created)
WORKER_ARRAYS = (IDS, PROBS, SIZES, DIGESTS, SKIPPED)

#: the dtypes ``targets/probs`` may have
PROBS_DTYPES = ("float16", "uint8")
#: the probabilities' dtype of a version-3 store (and of a version-4 store's default)
VERSION_3_PROBS: Literal["float16"] = "float16"
#: the largest |decoded - exact| probability each encoding allows (float16 rounds a probability
#: in [0, 1] by at most half its last place at 1.0, 2**-12; uint8's linear code by half a step)
PROBS_MAX_ERROR = {"float16": 2.0**-12, "uint8": 0.5 / 255}
_UINT8_SCALE = 255.0


def param_path(name: str) -> str:
    """The array of parameter field ``name`` (``crop_box`` -> ``params/crop_box``)."""
    return f"{PARAMS}/{name}"


def is_param(path: str) -> bool:
    """Whether ``path`` is a parameter array."""
    return path.startswith(PARAMS + "/")


def param_name(path: str) -> str:
    """The field name of a parameter array (``params/crop_box`` -> ``crop_box``)."""
    return path.split("/", 1)[1]


def param_paths(header: StoreHeader) -> list[str]:
    """Every parameter array of the header's policy, stored or derived, in field order."""
    return [param_path(f.name) for f in header.param_fields]


def ids_dtype(num_classes: int) -> str:
    """The smallest unsigned integer dtype that holds class ids and leaves the dtype's maximum
    free as the fill value (``uint8`` up to 255 classes, ``uint16`` up to 65,535, else ``uint32``).

    Args:
        num_classes: the number of classes.

    Returns:
        The dtype's name.
    """
    if num_classes <= 255:
        return "uint8"
    return "uint16" if num_classes <= 65535 else "uint32"


def _ids_dtype(header: StoreHeader) -> str:
    if header.layout is None:  # schema 3: uint16 whatever the class count
        return "uint16" if header.num_classes <= 65535 else "uint32"
    return ids_dtype(header.num_classes)


def probs_dtype(header: StoreHeader) -> str:
    """``float16`` or ``uint8``: how ``targets/probs`` is stored."""
    return str(header.layout.probs) if header.layout is not None else VERSION_3_PROBS


def encode_probs(header: StoreHeader, probs: np.ndarray) -> np.ndarray:
    """Probabilities in ``[0, 1]`` as the store keeps them: float16, or uint8 with the linear
    code ``q = round(255 p)``. Monotone, so sorted probabilities stay sorted; the error bound is
    :data:`PROBS_MAX_ERROR`."""
    if probs_dtype(header) == VERSION_3_PROBS:
        return np.asarray(probs).astype(np.float16)
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    return np.rint(p * _UINT8_SCALE).astype(np.uint8)


def decode_probs(header: StoreHeader, stored: np.ndarray) -> np.ndarray:
    """Stored ``targets/probs`` rows as float32 probabilities (the inverse of :func:`encode_probs`
    up to its rounding)."""
    stored = np.asarray(stored)
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) / np.float32(_UINT8_SCALE)
    return stored.astype(np.float32)


def fill_value(path: str, dtype: str) -> float | int:
    """What a missing chunk of array ``path`` reads as: never a valid target or label (NaN
    probabilities, or 255 per uint8 entry, a top-k mass above 1; ids the dtype's maximum, at
    least the class count; labels -1); zeros elsewhere (the chunk digests tell those apart)."""
    if path == PROBS:
        return float("nan") if dtype.startswith("float") else int(np.iinfo(np.dtype(dtype)).max)
    if path == IDS:
        return int(np.iinfo(np.dtype(dtype)).max)
    if path == LABELS:
        return -1
    return 0


@dataclass(frozen=True)
class ArraySpec:
    """One array of a store, resolved for a header.

    Attributes:
        path: where it lies in the group (``targets/ids``).
        shape: its full shape.
        dtype: the numpy dtype's name.
        chunks: the chunk (the inner chunk of a sharded array).
        shards: the shard shape, or ``None`` (one object per chunk).
        codec: ``"blosc"`` (Blosc-zstd with byte shuffle) or ``"zstd"`` (zstd-19).
        fill: the fill value (what a missing chunk reads as).
        digested: ``build/digests`` covers it.
        stored: it is in the store (derived parameters are not).
        per: ``"image"`` (first axis: images) or ``"chunk"`` (first axis: store chunks).
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    codec: Literal["blosc", "zstd"]
    fill: float | int
    digested: bool
    stored: bool
    per: Literal["image", "chunk"]


def _codec(path: str) -> Literal["blosc", "zstd"]:
    """Per array, the smaller of two codecs measured on real stores (docs/design.md): Blosc-zstd
    with byte shuffle for the parameter fields and the probabilities (5-35 % smaller than
    zstd-19), plain zstd-19 for the class ids (shuffling 1,000-class ids costs ~35 %)."""
    return "zstd" if path == IDS else "blosc"


def default_shard_images(chunk_size: int, bytes_per_image: int, max_images: int = 65536, max_bytes: int = 256 << 20) -> int:
    """The shard size when none is given: about ``max_images`` images or ``max_bytes`` of raw
    rows per shard of the largest array, whichever is smaller, as a multiple of ``chunk_size``.

    Args:
        chunk_size: images per chunk (a shard holds whole chunks).
        bytes_per_image: raw bytes per image of the largest per-image array.
        max_images: the image cap.
        max_bytes: the byte cap.

    Returns:
        Images per shard: a positive multiple of ``chunk_size``.
    """
    cap = min(max_images, max(1, max_bytes // max(1, bytes_per_image)))
    return max(1, cap // chunk_size) * chunk_size


def array_specs(header: StoreHeader, *, include_derived: bool = False) -> list[ArraySpec]:
    """Every array of a store with ``header``, in a fixed order (parameters, targets, source, build).

    Args:
        header: the store's header (its layout decides dtypes, sharding and derived parameters).
        include_derived: also list derived parameter arrays (``stored=False``), which the store
            does not hold.
    """
    n, v, k, cs = header.dataset.count, header.views, header.topk, header.chunk_size
    n_chunks = -(-n // cs)
    shard = header.layout.shard_images if header.layout is not None else None
    derived = header.layout is not None and header.layout.params == "derived"
    per_image: list[tuple[str, tuple[int, ...], str, bool]] = [
        (param_path(f.name), (v, *f.shape), f.dtype, not derived) for f in header.param_fields
    ]
    per_image += [
        (IDS, (v, k), _ids_dtype(header), True),
        (PROBS, (v, k), probs_dtype(header), True),
        (LABELS, (), "int32", True),
        (SIZES, (2,), "uint32", True),
        (DIGESTS, (DIGEST_BYTES,), "uint8", True),
        (SKIPPED, (), "uint8", True),
    ]
    out = []
    for path, tail, dtype, stored in per_image:
        if not stored and not include_derived:
            continue
        # a sharded store's small per-image arrays (labels, sizes, digests, skip flags: a few
        # bytes an image, read whole when a store opens) keep one inner chunk per shard: Zarr
        # decodes each inner chunk on its own, ~0.2 ms apiece, 5,005 of them per array at ImageNet
        inner = shard if shard and path in SOURCE_ARRAYS else cs
        out.append(
            ArraySpec(
                path,
                (n, *tail),
                dtype,
                (inner, *tail),
                (shard, *tail) if shard else None,
                _codec(path),
                fill_value(path, dtype),
                True,
                stored,
                "image",
            )
        )
    chunk_shard = (shard // cs,) if shard else None
    a = len(digest_paths(header))
    # the per-chunk arrays likewise: one inner chunk per shard (the driver, their one writer,
    # rewrites a shard object whole on every update either way)
    out.append(ArraySpec(DONE, (n_chunks,), "uint8", chunk_shard or (1,), chunk_shard, "blosc", 0, False, True, "chunk"))
    out.append(
        ArraySpec(
            CHUNK_DIGESTS,
            (n_chunks, a, DIGEST_BYTES),
            "uint8",
            (chunk_shard[0] if chunk_shard else 1, a, DIGEST_BYTES),
            (chunk_shard[0], a, DIGEST_BYTES) if chunk_shard else None,
            "blosc",
            0,
            False,
            True,
            "chunk",
        )
    )
    return out


def spec_of(header: StoreHeader, path: str) -> ArraySpec:
    """The spec of array ``path`` (derived parameters included)."""
    for spec in array_specs(header, include_derived=True):
        if spec.path == path:
            return spec
    raise StoreError(f"the store layout has no array {path!r}")


def digest_paths(header: StoreHeader) -> tuple[str, ...]:
    """The arrays covered by ``build/digests``, in the order of its second axis (sorted paths);
    derived parameters included (their digests are what a reader checks its derivation with)."""
    return tuple(sorted([*param_paths(header), *TARGET_ARRAYS, *SOURCE_ARRAYS]))


def stored_paths(header: StoreHeader) -> list[str]:
    """The paths of the arrays the store holds."""
    return [s.path for s in array_specs(header)]


def describe(header: StoreHeader) -> str:
    """One line: sharding, the probabilities' dtype, stored or derived parameters."""
    shard = header.layout.shard_images if header.layout is not None else None
    return (
        f"{'sharded, ' + format(shard, ',') + ' images per shard' if shard else 'unsharded (one object per chunk)'}; "
        f"probabilities {probs_dtype(header)}; parameters {header.layout.params if header.layout is not None else 'stored'}"
    )


#: a function a reader gives :mod:`dr.storage.integrity` to re-derive a chunk's parameter rows:
#: (chunk, its rows of ``source/sizes`` and ``source/skipped``) -> {parameter path: rows}
Deriver = Callable[[int, np.ndarray, np.ndarray], dict[str, np.ndarray]]


def compressors(spec: ArraySpec) -> list[Any]:
    """The zarr codecs of an array spec."""
    import zarr.codecs

    if spec.codec == "zstd":
        return [zarr.codecs.ZstdCodec(level=19)]
    return [zarr.codecs.BloscCodec(cname="zstd", clevel=9, shuffle="shuffle")]
