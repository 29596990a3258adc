"""``dr-build reinforce ... --dry-run``: plan a build and project its cost before spending it.

Counts images, chunks and views; projects the store's size from the policy's field widths
(an exact uncompressed figure) and from the first unit's arrays compressed with the store's
codec; times the first unit on the build's own hardware -- one teacher worker started on the
Ray cluster with the resources the build would give it -- and projects wall-clock and
GPU-hours for the whole build. Writes nothing: no store, no lock (Ray's own temporary
files aside).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import zarr.codecs

from dr.builder.config import BuildConfig
from dr.builder.units import plan_units
from dr.errors import WorkerStartError
from dr.sources import Source, open_source
from dr.storage.layout import PROBS, TARGET_ARRAYS, ArraySpec, array_specs, compressors, encode_probs, is_param
from dr.storage.schema import StoreHeader

__all__ = ["DryRun", "dry_run", "projected_bytes", "format_dry_run"]

#: bytes per image outside the per-view arrays: labels int32, sizes 2 x uint32, digest 16, skipped 1
PER_IMAGE_BYTES = 4 + 8 + 16 + 1


@dataclass
class DryRun:
    """What ``--dry-run`` found (all sizes in bytes, times in seconds)."""

    source: str
    images: int
    classes: int
    chunks: int
    chunk_size: int
    views_per_image: int
    views: int
    topk: int
    policy: str
    bytes_per_view_raw: float
    store_bytes_raw: int
    device: str
    workers: int
    gpus_per_worker: float
    timed: bool = False
    unit_images: int = 0
    worker_start_s: float = 0.0
    first_unit_s: float = 0.0
    warm_unit_s: float = 0.0
    views_per_s_per_worker: float = 0.0
    bytes_per_view_compressed: float = 0.0
    store_bytes_compressed: int = 0
    projected_wall_s: float = 0.0
    projected_gpu_hours: float = 0.0
    projected_cpu_hours: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _per_view_specs(header: StoreHeader) -> list[ArraySpec]:
    """The stored per-view arrays (parameters unless derived, targets)."""
    return [s for s in array_specs(header) if s.per == "image" and (is_param(s.path) or s.path in TARGET_ARRAYS)]


def projected_bytes(header: StoreHeader) -> tuple[float, int]:
    """(uncompressed bytes per view, uncompressed store bytes) from the layout's array widths."""
    per_view = sum(np.dtype(s.dtype).itemsize * math.prod(s.shape[2:]) for s in _per_view_specs(header))
    n = header.dataset.count
    return float(per_view), int(per_view * n * header.views + PER_IMAGE_BYTES * n)


def _compressed_bytes(header: StoreHeader, arrays: dict[str, np.ndarray]) -> int:
    """Bytes of a unit's per-view arrays as the writer stores them (the layout's dtypes and codecs)."""
    total = 0
    for spec in _per_view_specs(header):
        rows = encode_probs(header, arrays[spec.path]) if spec.path == PROBS else arrays[spec.path].astype(spec.dtype)
        codec = compressors(spec)[0]
        total += len(_numcodec(codec).encode(np.ascontiguousarray(rows)))
    return total


def _numcodec(codec: Any) -> Any:
    """The numcodecs codec of a zarr v3 codec (the same compression, without a store)."""
    from numcodecs import Blosc, Zstd

    if isinstance(codec, zarr.codecs.ZstdCodec):
        return Zstd(level=codec.level)
    return Blosc(cname="zstd", clevel=9, shuffle=Blosc.SHUFFLE)


def dry_run(config: BuildConfig, *, source: Source | Any | None = None, time_unit: bool = True) -> DryRun:
    """Plan ``config``'s build without writing anything; with ``time_unit``, time its first
    unit on one worker of the build's cluster (cold, then again warm) and project the cost."""
    from dr.builder import driver, ray_runtime
    from dr.builder.teacher_eval import probe_ensemble

    src = open_source(source if source is not None else config.source, config.storage_options)
    ensemble, ensemble_desc, num_classes = probe_ensemble(config, src.classes)
    del ensemble
    ensemble_desc = {**ensemble_desc, **driver.teacher_math(config)}
    header = driver.make_header(config, src, ensemble_desc, num_classes)
    units = plan_units(header.dataset.count, header.chunk_size)
    per_view, raw = projected_bytes(header)
    shape = ray_runtime.worker_shape(ray_runtime.connect(config.address), config).capped(len(units))
    n, v = header.dataset.count, header.views
    plan = DryRun(
        source=str(header.dataset.location),
        images=n,
        classes=len(header.dataset.classes),
        chunks=len(units),
        chunk_size=header.chunk_size,
        views_per_image=v,
        views=n * v,
        topk=header.topk,
        policy=config.policy,
        bytes_per_view_raw=per_view,
        store_bytes_raw=raw,
        device=shape.device,
        workers=shape.workers,
        gpus_per_worker=shape.gpus,
    )
    if not time_unit:
        return plan
    unit = units[0]
    pool = driver.worker_pool(config, header, src, shape, concurrency=1)
    try:
        try:
            actor, plan.worker_start_s = pool.start_one()
        except WorkerStartError as e:
            raise WorkerStartError(f"--dry-run: its teacher worker did not start: {e}") from e
        ray = pool.ray
        t1 = time.perf_counter()
        result = ray.get(actor.compute.remote(unit.start, unit.stop))
        plan.first_unit_s = time.perf_counter() - t1
        # the first unit pays one-off costs (cuDNN autotuning, torch.compile, caches): time it
        # again when that is cheap, and project with the faster of the two
        if plan.first_unit_s < 120:
            t2 = time.perf_counter()
            ray.get(actor.compute.remote(unit.start, unit.stop))
            plan.warm_unit_s = time.perf_counter() - t2
        else:
            plan.warm_unit_s = plan.first_unit_s
            plan.notes.append("the first unit took over 2 minutes: projected from it (cold) alone")
    finally:
        pool.stop()
    plan.timed = True
    plan.unit_images = unit.size
    plan.views_per_s_per_worker = unit.size * v / max(min(plan.first_unit_s, plan.warm_unit_s), 1e-9)
    plan.bytes_per_view_compressed = _compressed_bytes(header, result.arrays) / (unit.size * v)
    plan.store_bytes_compressed = int(plan.bytes_per_view_compressed * n * v + PER_IMAGE_BYTES * n)
    workers = shape.workers
    plan.projected_wall_s = plan.worker_start_s + n * v / (plan.views_per_s_per_worker * workers)
    plan.projected_gpu_hours = plan.projected_wall_s * workers * shape.gpus / 3600
    plan.projected_cpu_hours = plan.projected_wall_s * workers * shape.cpus / 3600
    if workers > 1:
        plan.notes.append(f"assumes the {workers} workers each run at the timed worker's rate (one unit at a time: conservative)")
    if unit.size < header.chunk_size or unit.size < 2 * header.forward_group:
        plan.notes.append(f"timed on {unit.size} images only: the rate is rough")
    return plan


def _size(b: float) -> str:
    from dr.humanize import human_bytes

    return human_bytes(b)


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def format_dry_run(p: DryRun) -> str:
    """The human-readable plan ``dr-build reinforce --dry-run`` prints."""
    lines = [
        f"dry run: {p.source}",
        f"  images      {p.images:,} in {p.classes} classes",
        f"  chunks      {p.chunks:,} of {p.chunk_size} images (one work unit each)",
        f"  views       {p.views:,} ({p.views_per_image} per image, top-{p.topk}, policy {p.policy})",
        f"  store size  {_size(p.store_bytes_raw)} uncompressed ({p.bytes_per_view_raw:.0f} B/view from the policy's field widths)",
    ]
    if p.timed:
        lines += [
            f"              ~{_size(p.store_bytes_compressed)} compressed ({p.bytes_per_view_compressed:.1f} B/view, the first unit's arrays under the store's codec)",
            f"  timing      first unit ({p.unit_images} images, {p.unit_images * p.views_per_image:,} views) on 1 {p.device} worker: "
            f"{p.first_unit_s:.1f} s cold, {p.warm_unit_s:.1f} s warm -> {p.views_per_s_per_worker:,.0f} views/s per worker "
            f"(worker start {p.worker_start_s:.1f} s)",
            f"  projected   {_duration(p.projected_wall_s)} wall-clock on {p.workers} worker(s); "
            + (
                f"{p.projected_gpu_hours:.2f} GPU-hours"
                if p.gpus_per_worker
                else f"0 GPU-hours (CPU build: {p.projected_cpu_hours:.2f} CPU-hours)"
            ),
        ]
    else:
        lines.append("  timing      not measured (--dry-run without timing)")
    lines += [f"  note        {n}" for n in p.notes]
    lines.append("nothing was written; run the same command without --dry-run to build")
    return "\n".join(lines)
