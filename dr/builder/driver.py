"""The build job: plan -> run the units on a pool of teacher workers -> finalise.

:func:`reinforce` plans the units (the chunks not yet done), hands them to a
:class:`UnitRunner` -- the one object that holds a running build's state: pending units, the
units in flight, retries, the first failure -- and finalises the store once every chunk is
written and verified. The driver is the only writer of the store (one writer per chunk is a
hard rule); workers receive chunk ranges and return small arrays. Ray is imported by the
modules that run a build, never by ``import dr``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dr import __version__
from dr.builder import ray_runtime
from dr.builder.config import BuildConfig
from dr.builder.extend import Extension, extension_settings, finish_extension, plan_extension
from dr.builder.pool import WorkerPool
from dr.builder.progress import BuildProgress
from dr.builder.ray_runtime import WorkerShape
from dr.builder.units import Unit, plan_units
from dr.builder.worker import SourceRef, UnitWorker
from dr.errors import ConfigError, DRError
from dr.policy import SAMPLER_VERSION, get_policy
from dr.sources import Source, absolute_location, open_source
from dr.storage import SCHEMA_VERSION, DatasetInfo, ParamFieldSpec, StoreHeader, StoreLayout, StoreWriter, now_iso, store_exists
from dr.storage.layout import array_specs, default_shard_images
from dr.storage.lock import StoreLock

__all__ = ["BuildResult", "UnitRunner", "make_header", "reinforce", "teacher_math", "worker_options"]

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
    policy = get_policy(config.policy, config.output_size, config.crop_scale)
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
    header = StoreHeader(
        schema_version=3,
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
    return with_layout(header, config)


def with_layout(header: StoreHeader, config: BuildConfig) -> StoreHeader:
    """``header`` with the store layout ``config`` asks for: a version-3 header when that is
    version 3's layout (unsharded, float16, stored parameters), else version 4 with its layout
    (the default shard size from the largest array's row bytes)."""
    shard = config.shard_images
    if shard is None:
        row_bytes = max(int(np.prod(s.shape[1:], dtype=np.int64)) * np.dtype(s.dtype).itemsize for s in array_specs(header))
        n, cs = header.dataset.count, header.chunk_size
        shard = min(default_shard_images(cs, row_bytes), -(-n // cs) * cs)
    layout = StoreLayout(shard_images=shard or None, probs=config.probs_dtype, params=config.params, sampler_version=SAMPLER_VERSION)
    if layout.is_version_3:
        return header
    return header.model_copy(update={"schema_version": SCHEMA_VERSION, "layout": layout})


def _open_writer(config: BuildConfig, header: StoreHeader, labels: np.ndarray, lock: StoreLock) -> StoreWriter:
    out = config.location(config.out)
    exists = store_exists(out)
    if exists:
        lock.refuse_if_held(force=config.force)  # never touch a store another build is writing
    if config.resume and not config.overwrite and exists:
        lock.acquire(force=config.force)
        return StoreWriter.resume(out, header, write_interval=config.write_interval)
    writer = StoreWriter.create(out, header, labels, overwrite=config.overwrite, write_interval=config.write_interval)
    lock.acquire(force=True)  # the store was just created by us
    return writer


def teacher_math(config: BuildConfig) -> dict[str, Any]:
    """The teachers' resolved arithmetic, recorded in the header's ensemble record (so part of
    the resume key): a resume with another --precision or --compile, or ``auto`` on another
    device kind, would mix differently computed chunks in one store."""
    from dr.teachers.precision import resolved_precision

    device = ray_runtime.worker_shape(ray_runtime.connect(config.address), config).device
    return {"precision": resolved_precision(config.precision, device), "device": device, "compile": config.compile}


def _repair(writer: StoreWriter, labels: np.ndarray) -> list[int]:
    """``--repair``: check every done chunk of every array against its recorded digest and
    mark the damaged chunks not done (the store goes back to ``building``), so the build
    recomputes exactly those. Returns the chunks reopened."""
    problems = writer.damaged()
    chunks = sorted({p.chunk for p in problems} | set(writer.drop_unreadable_shards(problems)))
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
        progress: show a tqdm bar (views/s and ETA); without a terminal (a job log, a pipe),
            a plain `progress: ...` line on stderr for the first and last chunk and every 10 s.
        on_chunk: called with each chunk index after it is written (monitoring, tests).
        echo: called with messages for the user (the ``eval_on`` pre-flight table).
    """
    from dr.builder.guard import guard_for
    from dr.builder.teacher_eval import format_evaluation, probe_ensemble, run_eval_on

    if config.repair and (not config.resume or config.overwrite):
        raise ConfigError("--repair recomputes the damaged chunks of an existing store: use it with --resume (and without --overwrite)")
    t0 = time.perf_counter()
    if config.extend is not None:
        config = extension_settings(config)
    src = open_source(source if source is not None else config.source, config.storage_options)
    ensemble, ensemble_desc, num_classes = probe_ensemble(config, src.classes)  # teachers vs dataset classes
    if config.eval_on:  # pre-flight: measure the teachers on labelled data before building
        report = run_eval_on(config, ensemble, src.classes, get_policy(config.policy, config.output_size, config.crop_scale).output_size)
        if echo is not None:
            echo(format_evaluation(report))
    del ensemble
    ensemble_desc = {**ensemble_desc, **teacher_math(config)}
    src, src_ref = _shared(config, src)
    header = make_header(config, src, ensemble_desc, num_classes)
    base_lock, ext = None, None
    if config.extend is not None:  # the new images go to a segment of the store: lock the store, record the segment
        base_lock = StoreLock(config.location(config.extend))
        base_lock.acquire(force=config.force)
        try:
            config, header, ext = _segment_build(config, header, src)
        except BaseException:
            base_lock.release()
            raise
    lock = StoreLock(config.location(config.out))
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
            runner = UnitRunner(config, header, src_ref, writer, guard=guard, on_chunk=on_chunk)
            runner.run(units, progress=progress)
            computed, views_done, worker_names, working = runner.computed, runner.views, runner.pool_names, runner.working_seconds
        if writer.done().all():
            header = writer.finalize()
            if ext is not None:
                finish_extension(config, ext)
        else:
            header = writer.header
    finally:
        lock.release()
        if base_lock is not None:
            base_lock.release()
    result = BuildResult(
        header, config.extend or config.out, total_chunks, computed, skipped, views_done, time.perf_counter() - t0, worker_names, working
    )
    log.info("build %s: %s", config.out, result.to_dict())
    return result


def _shared(config: BuildConfig, src: Source) -> tuple[Source, SourceRef]:
    """The source put in Ray's object store for the workers, and the object store's copy for the
    driver to go on with: its arrays are views of the shared memory the workers read, so the
    driver holds one copy of a large index (a WebDataset's: ~30 B/image), not two."""
    ref = SourceRef(ray_runtime.connect(config.address).put(src))
    return ref.get(), ref


def _segment_build(config: BuildConfig, header: StoreHeader, src: Source) -> tuple[BuildConfig, StoreHeader, Extension]:
    """An extension's build: the config writing segment ``i`` of the store, the segment's
    header (``dataset.offset`` set) and where it goes (the table row is recorded; images the
    store already holds are refused first)."""
    ext = plan_extension(config, header, src)
    header = header.model_copy(update={"dataset": header.dataset.model_copy(update={"offset": ext.offset})})
    resume = config.resume and store_exists(config.location(ext.url))
    return config.model_copy(update={"out": ext.url, "resume": resume, "overwrite": config.overwrite and not resume}), header, ext


def worker_options(config: BuildConfig, header: StoreHeader, device: str, per_cpu: float, views: int | None = None) -> dict[str, Any]:
    """The keyword arguments of a :class:`UnitWorker` for this build (one place: the build and
    ``--dry-run`` start identical workers)."""
    return dict(
        temperature=config.temperature,
        views=views or header.views,
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
        max_image_pixels=config.max_image_pixels,
        index_offset=header.dataset.offset,
        max_image_bytes=config.max_image_bytes,
    )


def worker_pool(config: BuildConfig, header: StoreHeader, src: Source | SourceRef, shape: WorkerShape, concurrency: int = 2) -> WorkerPool:
    """A pool of this build's teacher workers (none started yet). Restarts are ours, not Ray's:
    a dead worker is replaced and its units resubmitted. ``concurrency`` 2: one unit decodes and
    samples on CPU threads while the other's views run through the teachers."""
    ray = ray_runtime.connect(config.address)
    actor_cls = ray.remote(UnitWorker).options(
        num_cpus=shape.cpus, num_gpus=shape.gpus, max_restarts=0, max_task_retries=0, max_concurrency=concurrency
    )
    source_ref = src if isinstance(src, SourceRef) else SourceRef(ray.put(src))
    options = worker_options(config, header, shape.device, shape.cpus)

    def new_actor() -> Any:
        return actor_cls.remote(source_ref, header.policy, list(config.teachers), **options)

    return WorkerPool(ray, shape, new_actor, config.start_timeout)


class UnitRunner:
    """Runs a build's units on its worker pool and writes each result; the state of a running
    build lives here (pending units, the units in flight, retries per unit, the first failure).

    Every live worker holds up to ``units_per_worker`` units (two run at once); a unit whose worker died goes back to the pending
    list (up to ``max_retries`` times); a unit that raised stops new submissions while the
    units in flight finish and are written. The agreement guard judges each written chunk.
    """

    def __init__(
        self,
        config: BuildConfig,
        header: StoreHeader,
        src: Source | SourceRef,
        writer: StoreWriter,
        *,
        guard: Any = None,
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        self.config, self.header, self.src, self.writer = config, header, src, writer
        self.guard, self.on_chunk = guard, on_chunk
        self.pending: list[Unit] = []
        self.in_flight: dict[Any, tuple[Unit, Any]] = {}  # result ref -> (unit, worker)
        self.retries: dict[int, int] = {}
        self.failure: BaseException | None = None
        self.computed = self.views = 0
        self.working_seconds = 0.0
        self.pool_names: list[str] = []

    def run(self, units: list[Unit], progress: bool = True) -> None:
        """Compute and write ``units``; raises the first failure after the rest is written."""
        ray = ray_runtime.connect(self.config.address)
        shape = ray_runtime.worker_shape(ray, self.config).capped(len(units))
        pool = worker_pool(self.config, self.header, self.src, shape)
        self.pending = list(reversed(units))
        pool.start_all()
        t_ready = time.perf_counter()
        bar = BuildProgress(len(units), sum(u.size for u in units) * self.header.views, progress)
        try:
            while self.in_flight or (self.pending and self.failure is None and pool.can_grow()):
                pool.retry_due()
                if pool.timed_out(busy=bool(self.in_flight)):
                    raise pool.diagnose(self.computed)
                self._step(ray, pool, bar)
            if self.failure is None and self.pending:
                raise pool.diagnose(self.computed)  # every worker's start attempts are spent
        finally:
            bar.close()
            for ref in self.in_flight:
                ray.cancel(ref)
            pool.stop()
            self.pool_names = pool.names
            self._written(self.writer.flush())  # chunks finished before a stop are kept
        if self.failure is not None:
            raise self.failure
        self.working_seconds = time.perf_counter() - t_ready

    def _step(self, ray: Any, pool: WorkerPool, bar: BuildProgress) -> None:
        """Wait for one reply (a worker up, a unit back) or the pool's next deadline."""
        timeout = pool.next_wake(busy=bool(self.in_flight))
        waitables = list(self.in_flight) + list(pool.starting)
        if not waitables:
            time.sleep(timeout or 0.0)
            return
        ready, _ = ray.wait(waitables, num_returns=1, timeout=timeout)
        if not ready:
            return
        if ready[0] in pool.starting:
            if pool.started(ready[0]) is not None:
                self._fill(pool)
            return
        unit, worker = self.in_flight.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayActorError as e:
            self._worker_died(pool, unit, worker, e)
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
            self.failure = self.failure or cause  # stop submitting; finish and write what is in flight
        else:
            self._write(unit, result, bar)
        self._fill(pool)

    def _fill(self, pool: WorkerPool) -> None:
        """Give every live worker up to ``units_per_worker`` units (queued on it, so the next is
        ready when one returns, and while the driver writes)."""
        for worker in pool.actors:
            busy = sum(1 for _, w in self.in_flight.values() if w is worker)
            while busy < self.config.units_per_worker and self.pending and self.failure is None:
                unit = self.pending.pop()
                self.in_flight[worker.compute.remote(unit.start, unit.stop)] = (unit, worker)
                busy += 1

    def _worker_died(self, pool: WorkerPool, unit: Unit, worker: Any, e: BaseException) -> None:
        self.retries[unit.index] = self.retries.get(unit.index, 0) + 1
        if self.retries[unit.index] > self.config.max_retries:
            self.failure = self.failure or DRError(
                f"chunk {unit.index} failed {self.retries[unit.index]} times: its worker died ({e}); see the Ray logs"
            )
            return
        log.warning("worker for chunk %d died (%s): retrying it", unit.index, type(e).__name__)
        self.pending.append(unit)
        pool.lost(worker)  # the replacement is used once it is up; survivors go on meanwhile

    def _write(self, unit: Unit, result: Any, bar: BuildProgress) -> None:
        written = self.writer.write_chunk(unit.index, result.arrays, result.skipped)
        if self.guard is not None:  # stops a build whose teachers disagree with the labels
            self.guard.update(unit.start, result.arrays)
        self.computed += 1
        self.views += unit.size * self.header.views
        bar.update(self.computed, self.views, unit.size * self.header.views)
        self._written(written)

    def _written(self, chunks: list[int]) -> None:
        """Tell ``on_chunk`` about chunks now written and marked done."""
        if self.on_chunk is not None:
            for c in chunks:
                self.on_chunk(c)
