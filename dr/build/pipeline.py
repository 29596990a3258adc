"""The build driver: plan, fan units out to teacher actors on Ray, write, finalise.

The driver is the only writer of the store (one writer per chunk is a hard rule); actors
receive chunk ranges and return small arrays. Ray is imported here, never by ``import dr``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dr import __version__
from dr.build.config import BuildConfig
from dr.build.plan import Unit, plan_units
from dr.build.worker import SourceRef, UnitWorker
from dr.errors import ConfigError, DRError
from dr.policy import get_policy
from dr.sources import Source, absolute_location, open_source
from storage import SCHEMA_VERSION, DatasetInfo, ParamFieldSpec, StoreHeader, StoreWriter, now_iso, store_exists
from storage.lock import StoreLock

__all__ = ["BuildResult", "reinforce", "make_header"]

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    """What a build did: the final header, chunks computed and skipped, speed."""

    header: StoreHeader
    out: str
    chunks_total: int
    chunks_computed: int
    chunks_skipped: int
    views_computed: int
    seconds: float
    workers: list[str] = field(default_factory=list)
    working_seconds: float = 0.0  # from the moment the workers were up to the last write

    @property
    def views_per_second(self) -> float:
        return self.views_computed / self.seconds if self.seconds > 0 else 0.0

    @property
    def working_views_per_second(self) -> float:
        """Throughput once the workers are up (excludes Ray start and model loading)."""
        return self.views_computed / self.working_seconds if self.working_seconds > 0 else 0.0

    @property
    def complete(self) -> bool:
        return self.header.status == "complete"

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "status": self.header.status,
            "images": self.header.dataset.count,
            "views": self.header.views,
            "chunks_total": self.chunks_total,
            "chunks_computed": self.chunks_computed,
            "chunks_skipped": self.chunks_skipped,
            "views_computed": self.views_computed,
            "seconds": round(self.seconds, 3),
            "views_per_second": round(self.views_per_second, 1),
            "working_views_per_second": round(self.working_views_per_second, 1),
            "workers": self.workers,
        }


def make_header(config: BuildConfig, source: Source, ensemble_desc: dict[str, Any], num_classes: int) -> StoreHeader:
    """The store header a build with ``config`` on ``source`` writes (status ``building``)."""
    policy = get_policy(config.policy, config.output_size)
    group = config.resolved_forward_group()
    if config.chunk_size % group:
        raise ConfigError(
            f"chunk_size {config.chunk_size} must be a multiple of forward_group {group} (teacher batches must not straddle chunks)"
        )
    fp = source.fingerprint()
    if config.topk > num_classes:
        raise ConfigError(f"--topk {config.topk} exceeds the teachers' {num_classes} classes: use --topk {num_classes} or less")
    if len(fp.classes) > num_classes:
        raise ConfigError(
            f"the source has {len(fp.classes)} classes but the teachers predict {num_classes}: use teachers trained on this label space"
        )
    return StoreHeader(
        schema_version=SCHEMA_VERSION,
        status="building",
        tool_version=__version__,
        created_at=now_iso(),
        dataset=DatasetInfo(
            kind=fp.kind, count=fp.count, classes=fp.classes, labels_sha256=fp.labels_sha256, location=absolute_location(config.source)
        ),
        num_classes=num_classes,
        views=config.views,
        topk=config.topk,
        seed=config.seed,
        chunk_size=config.chunk_size,
        forward_group=group,
        output_size=policy.output_size,
        policy=policy.to_dict(),
        param_fields=tuple(ParamFieldSpec(**f.to_dict()) for f in policy.fields()),
        ensemble=ensemble_desc,
        build={"config": config.model_dump(mode="json", exclude={"storage_options"})},
    )


def _open_writer(config: BuildConfig, header: StoreHeader, labels: np.ndarray, lock: StoreLock) -> StoreWriter:
    exists = store_exists(config.out, config.storage_options)
    if exists:
        lock.check(force=config.force)  # never touch a store another build is writing
    if config.resume and not config.overwrite and exists:
        lock.acquire(force=config.force)
        return StoreWriter.resume(config.out, header, storage_options=config.storage_options)
    writer = StoreWriter.create(config.out, header, labels, overwrite=config.overwrite, storage_options=config.storage_options)
    lock.acquire(force=True)  # the store was just created by us
    return writer


def _init_ray(address: str | None) -> Any:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, configure_logging=True)
    return ray


def _teacher_math(config: BuildConfig) -> dict[str, Any]:
    """The teachers' resolved arithmetic, recorded in the header's ensemble record (so part of
    the resume key): a resume with another --precision or --compile, or ``auto`` on another
    device kind, would mix differently computed chunks in one store."""
    from teachers.precision import resolved_precision

    device = _worker_resources(_init_ray(config.address), config)[3]
    return {"precision": resolved_precision(config.precision, device), "device": device, "compile": config.compile}


def _repair(writer: StoreWriter, labels: np.ndarray) -> list[int]:
    """``--repair``: check every done chunk of every array against its recorded digest and
    mark the damaged chunks not done (the store goes back to ``building``), so the build
    recomputes exactly those. Returns the chunks reopened."""
    problems = writer.damaged()
    chunks = sorted({p.chunk for p in problems})
    for p in problems:
        log.warning("--repair: %s", p)
    if chunks:
        log.warning("--repair: recomputing %d damaged chunk(s) of %s: %s", len(chunks), writer.url, chunks)
    else:
        log.warning("--repair: every done chunk of %s matches its digests; nothing to repair", writer.url)
    writer.reopen(chunks, labels)
    return chunks


def reinforce(
    config: BuildConfig,
    *,
    source: Source | Any | None = None,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
    echo: Callable[[str], None] | None = None,
) -> BuildResult:
    """Run (or resume) a build; returns a :class:`BuildResult`.

    Args:
        config: the build configuration.
        source: a dataset object to use instead of ``config.source`` (a path).
        progress: show a tqdm bar (views/s and ETA).
        on_chunk: called with each chunk index after it is written (monitoring, tests).
        echo: called with messages for the user (the ``check_on`` pre-flight table).
    """
    from dr.build.preflight import format_evaluation, guard_for, probe_ensemble, run_check_on

    if config.repair and (not config.resume or config.overwrite):
        raise ConfigError("--repair recomputes the damaged chunks of an existing store: use it with --resume (and without --overwrite)")
    t0 = time.perf_counter()
    src = open_source(source if source is not None else config.source, config.storage_options)
    ensemble, ensemble_desc, num_classes = probe_ensemble(config, src.classes)  # teachers vs dataset classes
    if config.check_on:  # pre-flight: measure the teachers on labelled data before building
        report = run_check_on(config, ensemble, src.classes, get_policy(config.policy, config.output_size).output_size)
        if echo is not None:
            echo(format_evaluation(report))
    del ensemble
    ensemble_desc = {**ensemble_desc, **_teacher_math(config)}
    header = make_header(config, src, ensemble_desc, num_classes)
    lock = StoreLock(config.out, config.storage_options)
    try:
        writer = _open_writer(config, header, src.labels(), lock)
        if config.repair:
            _repair(writer, src.labels())
        header = writer.header
        units = plan_units(header.dataset.count, header.chunk_size, writer.done())
        total_chunks = writer.n_chunks
        skipped = total_chunks - len(units)
        if config.max_chunks is not None:
            units = units[: config.max_chunks]
        computed, views_done, worker_names, working = 0, 0, list[str](), 0.0
        if units:
            guard = guard_for(config, src.labels(), len(src.classes), header.ensemble)
            computed, views_done, worker_names, working = _run_units(config, header, src, units, writer, progress, on_chunk, guard)
        if writer.done().all():
            header = writer.finalize()
        else:
            header = writer.header
    finally:
        lock.release()
    result = BuildResult(header, config.out, total_chunks, computed, skipped, views_done, time.perf_counter() - t0, worker_names, working)
    log.info("build %s: %s", config.out, result.to_dict())
    return result


def _worker_resources(ray: Any, config: BuildConfig) -> tuple[int, float, float, str]:
    cluster = ray.cluster_resources()
    cpus = float(cluster.get("CPU", 1))
    gpus = int(cluster.get("GPU", 0)) if config.device != "cpu" else 0
    if config.device == "cuda" and gpus == 0:
        raise ConfigError("--device cuda but the Ray cluster has no GPUs: use --device auto or cpu, or join GPU workers")
    if gpus:
        workers = config.workers or gpus
        per_cpu = config.cpus_per_worker or max(1.0, math.floor(cpus / workers))
        return workers, per_cpu, 1.0, "cuda"
    workers = config.workers or 1
    per_cpu = config.cpus_per_worker or max(0.01, cpus / workers)
    return workers, per_cpu, 0.0, "cpu"


def _run_units(
    config: BuildConfig,
    header: StoreHeader,
    src: Source,
    units: list[Unit],
    writer: StoreWriter,
    progress: bool,
    on_chunk: Callable[[int], None] | None,
    guard: Any = None,
) -> tuple[int, int, list[str], float]:
    from tqdm.auto import tqdm

    ray = _init_ray(config.address)
    workers, per_cpu, per_gpu, device = _worker_resources(ray, config)
    workers = min(workers, len(units))
    # Restarts are ours, not Ray's: a dead actor is replaced and its units resubmitted.
    # Two concurrent units per actor: one decodes and samples on CPU threads while the other's
    # views run through the teachers, so the device is not idle between units.
    actor_cls = ray.remote(UnitWorker).options(num_cpus=per_cpu, num_gpus=per_gpu, max_restarts=0, max_task_retries=0, max_concurrency=2)
    source_ref = SourceRef(ray.put(src))

    def new_actor() -> Any:
        return actor_cls.remote(
            source_ref,
            header.policy,
            list(config.teachers),
            temperature=config.temperature,
            views=header.views,
            topk=header.topk,
            seed=header.seed,
            forward_group=header.forward_group,
            device=device,
            threads=max(1, int(per_cpu)),
            decode_threads=config.decode_threads,
            on_bad_image=config.on_bad_image,
            precision=config.precision,
            compile=config.compile,
            class_map=header.ensemble.get("class_map"),
            allow_random_teachers=config.allow_random_teachers,
            init_seeds=[t.get("init_seed") or 0 for t in header.ensemble["teachers"]],
        )

    actors: list[Any] = []
    starting: dict[Any, Any] = {}
    for _ in range(workers):
        actor = new_actor()
        starting[actor.ping.remote()] = actor
    names: list[str] = []
    pending = list(reversed(units))
    in_flight: dict[Any, tuple[Unit, Any]] = {}
    retries: dict[int, int] = {}
    failure: BaseException | None = None

    def fill() -> None:
        """Give every live actor up to two units (the next is ready when one returns)."""
        for actor in actors:
            busy = sum(1 for _, a in in_flight.values() if a is actor)
            while busy < 2 and pending and failure is None:
                unit = pending.pop()
                in_flight[actor.compute.remote(unit.start, unit.stop)] = (unit, actor)
                busy += 1

    # Let the initial workers come up together (bounded), so work spreads over every node.
    ray.wait(list(starting), num_returns=len(starting), timeout=config.start_timeout)
    t_ready = time.perf_counter()
    computed = views = 0
    bar = tqdm(
        total=sum(u.size for u in units) * header.views,
        unit="view",
        unit_scale=True,
        desc=f"reinforce {len(units)} chunks",
        disable=not progress,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    try:
        while in_flight or (pending and starting and failure is None):
            ready, _ = ray.wait(list(in_flight) + list(starting), num_returns=1, timeout=None if in_flight else config.start_timeout)
            if not ready:
                raise DRError(
                    f"no teacher worker could start within {config.start_timeout:.0f}s (the cluster lacks {per_gpu} GPU / {per_cpu} CPU per worker?): add nodes or lower --cpus-per-worker"
                )
            ref = ready[0]
            if ref in starting:
                actor = starting.pop(ref)
                try:
                    info = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    log.warning("a teacher worker failed to start: %s", e)
                    continue
                actors.append(actor)
                names.append(f"{info['host']}:{info['node'][:8]}:{info['device']}")
                fill()
                continue
            unit, actor = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                retries[unit.index] = retries.get(unit.index, 0) + 1
                if retries[unit.index] > config.max_retries:
                    failure = failure or DRError(
                        f"chunk {unit.index} failed {retries[unit.index]} times: its worker died ({e}); see the Ray logs"
                    )
                    continue
                log.warning("worker for chunk %d died (%s): retrying it", unit.index, type(e).__name__)
                pending.append(unit)
                if any(a is actor for a in actors):
                    actors[:] = [a for a in actors if a is not actor]
                    replacement = new_actor()  # used once it is up; survivors go on meanwhile
                    starting[replacement.ping.remote()] = replacement
                fill()
                continue
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
                failure = failure or cause  # stop submitting; finish and write what is in flight
                continue
            writer.write_chunk(unit.index, result.arrays, result.skipped)
            if guard is not None:  # stops a build whose teachers disagree with the labels
                guard.update(unit.start, result.arrays)
            computed += 1
            views += unit.size * header.views
            bar.update(unit.size * header.views)
            if on_chunk is not None:
                on_chunk(unit.index)
            fill()
    finally:
        bar.close()
        for ref in in_flight:
            ray.cancel(ref)
        for actor in actors + list(starting.values()):
            ray.kill(actor)
    if failure is not None:
        raise failure
    return computed, views, names, time.perf_counter() - t_ready
