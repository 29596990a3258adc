"""The build driver: plan, fan units out to teacher actors on Ray, write, finalise.

The driver is the only writer of the store (one writer per chunk is a hard rule); actors
receive chunk ranges and return small arrays. Ray is imported here, never by ``import dr``.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dr import __version__
from dr.build.config import BuildConfig
from dr.build.plan import Unit, plan_units
from dr.build.worker import SourceRef, UnitWorker
from dr.errors import ConfigError, DRError, WorkerStartError
from dr.policy import get_policy
from dr.sources import Source, absolute_location, open_source
from dr.storage import SCHEMA_VERSION, DatasetInfo, ParamFieldSpec, StoreHeader, StoreWriter, now_iso, store_exists
from dr.storage.lock import StoreLock

__all__ = ["BuildResult", "reinforce", "make_header", "START_BACKOFF_S"]

log = logging.getLogger(__name__)


def start_errors_of_ray() -> tuple[type[BaseException], ...]:
    """What a worker's start may fail with: it died starting, or Ray cannot place it."""
    import ray

    return (ray.exceptions.RayActorError, getattr(ray.exceptions, "ActorUnschedulableError", ray.exceptions.RayActorError))


#: Seconds to wait before each new attempt to start a teacher worker whose start failed; after
#: the last one that worker is given up (the build fails if no worker is running then).
START_BACKOFF_S: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)


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


#: The private local Ray this process started for builds: its temp dir (sockets, logs) and
#: whether to keep that dir at exit (a build failed: its logs are evidence).
_PRIVATE_RAY: dict[str, Any] = {}


def _init_ray(address: str | None) -> Any:
    """Connect to Ray for a build.

    * Ray already initialised in this process (a library user's, the tests'): use it.
    * ``address`` given (``auto``: this host's cluster, ``ray://head:10001``, ``host:port``):
      join that cluster, on purpose.
    * Otherwise start a **private** local Ray: ``address="local"`` ignores ``RAY_ADDRESS``
      and ``/tmp/ray/ray_current_cluster`` (a cluster another program started is never
      joined, so its shutdown cannot cancel our workers); sockets and logs live in a temp
      dir of its own; and, unless ``RAY_AUTH_MODE=disabled``, it requires a random token
      that only this process and its Ray processes hold, so no other program can join it.
    """
    import ray

    if ray.is_initialized():
        return ray
    # ray.init installs Ray's crash-logging SIGTERM handler over the process's own: keep the
    # caller's (the CLI turns SIGTERM, e.g. `ray job stop`, into a clean resumable stop).
    sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        return _start_ray(ray, address)
    finally:
        if callable(sigterm):
            signal.signal(signal.SIGTERM, sigterm)


def _start_ray(ray: Any, address: str | None) -> Any:
    if address is not None:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, configure_logging=True)
        return ray
    temp_dir = tempfile.mkdtemp(prefix="dr-ray-")
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "disabled":
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # read by the Ray processes we start
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = auth_log.level
    auth_log.setLevel(logging.ERROR)  # "token authentication is enabled": ours, nothing to do
    try:
        ray.init(address="local", _temp_dir=temp_dir, include_dashboard=False, logging_level=logging.WARNING, configure_logging=True)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    finally:
        auth_log.setLevel(level)
        for k, v in saved.items():  # the driver keeps the token it loaded; other code sees the user's
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    _PRIVATE_RAY.update(temp_dir=temp_dir, keep=False)
    atexit.register(_stop_private_ray)
    log.info("started a private local Ray (logs in %s)", temp_dir)
    return ray


def _stop_private_ray() -> None:
    import ray

    temp_dir = _PRIVATE_RAY.pop("temp_dir", None)
    if temp_dir is None:
        return
    ray.shutdown()
    if not _PRIVATE_RAY.pop("keep", False):
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray_logs() -> str:
    """Where this build's Ray logs are (private Ray: kept after a failed build)."""
    if "temp_dir" in _PRIVATE_RAY:
        _PRIVATE_RAY["keep"] = True
        return os.path.join(_PRIVATE_RAY["temp_dir"], "session_latest", "logs")
    return "/tmp/ray/session_latest/logs on each node"


def _teacher_math(config: BuildConfig) -> dict[str, Any]:
    """The teachers' resolved arithmetic, recorded in the header's ensemble record (so part of
    the resume key): a resume with another --precision or --compile, or ``auto`` on another
    device kind, would mix differently computed chunks in one store."""
    from dr.teachers.precision import resolved_precision

    device = _worker_resources(_init_ray(config.address), config)[3]
    if config.precision == "bf16" and device != "cuda":
        raise ConfigError(
            f"--precision bf16 needs CUDA workers, but this build's teachers run on {device}: dr runs bf16 autocast on "
            "CUDA only. Use --precision fp32 (or auto: bf16 on CUDA, fp32 elsewhere)"
        )
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
        progress: show a tqdm bar (views/s and ETA); without a terminal (a job log, a pipe),
            a plain `progress: ...` line on stderr for the first and last chunk and every 10 s.
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
    )


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
        return actor_cls.remote(source_ref, header.policy, list(config.teachers), **worker_options(config, header, device, per_cpu))

    actors: list[Any] = []
    starting: dict[Any, tuple[Any, int]] = {}  # ping ref -> (actor, start attempt)
    retry_at: list[tuple[float, int]] = []  # (monotonic time, attempt) of worker starts to retry
    start_errors: list[str] = []  # Ray's reason for each failed start
    t_start = time.monotonic()
    waiting_since: float | None = t_start  # since when no worker has been running

    def start(attempt: int) -> None:
        actor = new_actor()
        starting[actor.ping.remote()] = (actor, attempt)

    for _ in range(workers):
        start(1)
    names: list[str] = []
    pending = list(reversed(units))
    in_flight: dict[Any, tuple[Unit, Any]] = {}
    retries: dict[int, int] = {}
    failure: BaseException | None = None
    computed = views = 0

    def fill() -> None:
        """Give every live actor up to two units (the next is ready when one returns)."""
        for actor in actors:
            busy = sum(1 for _, a in in_flight.values() if a is actor)
            while busy < 2 and pending and failure is None:
                unit = pending.pop()
                in_flight[actor.compute.remote(unit.start, unit.stop)] = (unit, actor)
                busy += 1

    def no_worker() -> WorkerStartError:
        """Why no worker is running: Ray's error, what each worker asks for, what is free."""
        total, free = ray.cluster_resources(), ray.available_resources()
        settle = time.monotonic() + 2.0  # a worker that just died frees its share a moment later
        while start_errors and free.get("CPU", 0.0) < per_cpu <= total.get("CPU", 0.0) and time.monotonic() < settle:
            time.sleep(0.2)
            free = ray.available_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        waited = time.monotonic() - t_start
        if start_errors:
            backoff = f" (retried after {', '.join(f'{d:g}' for d in START_BACKOFF_S)}s)" if len(start_errors) > 1 else ""
            head = f"no teacher worker could start: {len(start_errors)} attempt(s) failed in {waited:.0f}s{backoff}. Ray said: {start_errors[-1]}"
            fix = "fix the cause Ray names (see its logs), then run the same command with --resume"
        else:
            head = f"no teacher worker started within {config.start_timeout:g}s (--start-timeout): Ray scheduled none"
            fix = "lower --cpus-per-worker or --workers, add nodes, or free the cluster; then run the same command with --resume"
        asked = (
            f"each of {workers} worker(s) asks for {per_cpu:g} CPU and {per_gpu:g} GPU; the cluster has "
            f"{free.get('CPU', 0.0):g} of {total.get('CPU', 0.0):g} CPU and {free.get('GPU', 0.0):g} of {total.get('GPU', 0.0):g} GPU free "
            f"on {nodes} node(s)"
        )
        kept = f"; {computed} chunk(s) written before are kept" if computed else ""
        err = WorkerStartError(f"{head}\n  {asked}\n  {fix}{kept}\n  Ray's logs: {_ray_logs()}")
        err.chunks_written = computed
        err.workers_started = len(names)
        return err

    # Let the initial workers come up together (bounded), so work spreads over every node.
    ray.wait(list(starting), num_returns=len(starting), timeout=config.start_timeout)
    t_ready = time.perf_counter()
    total_views = sum(u.size for u in units) * header.views
    lines = progress and not _is_tty(sys.stderr)  # a job log, a file, a pipe: plain lines, not \r bars
    bar = tqdm(
        total=total_views,
        unit="view",
        unit_scale=True,
        desc=f"reinforce {len(units)} chunks",
        disable=not progress or lines,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    line = _ProgressLines(len(units), total_views) if lines else None
    try:
        while in_flight or (pending and failure is None and (starting or retry_at)):
            now = time.monotonic()
            for due in [r for r in retry_at if r[0] <= now]:
                retry_at.remove(due)
                start(due[1])
            if waiting_since is not None and not in_flight and now - waiting_since >= config.start_timeout:
                raise no_worker()
            # Wake up for the next retry, and (while nothing computes) for the start deadline.
            wakes = [t - now for t, _ in retry_at]
            if not in_flight and waiting_since is not None:
                wakes.append(waiting_since + config.start_timeout - now)
            timeout = max(0.0, min(wakes)) if wakes else None
            waitables = list(in_flight) + list(starting)
            if not waitables:
                time.sleep(timeout or 0.0)
                continue
            ready, _ = ray.wait(waitables, num_returns=1, timeout=timeout)
            if not ready:
                continue
            ref = ready[0]
            if ref in starting:
                actor, attempt = starting.pop(ref)
                try:
                    info = ray.get(ref)
                except start_errors_of_ray() as e:
                    start_errors.append(_ray_error_text(e))
                    if attempt <= len(START_BACKOFF_S):
                        delay = START_BACKOFF_S[attempt - 1]
                        log.warning(
                            "a teacher worker failed to start (attempt %d of %d; retrying in %gs): %s",
                            attempt,
                            len(START_BACKOFF_S) + 1,
                            delay,
                            start_errors[-1],
                        )
                        retry_at.append((time.monotonic() + delay, attempt + 1))
                    else:
                        log.warning("a teacher worker failed to start %d times: giving it up", attempt)
                    continue
                actors.append(actor)
                waiting_since = None
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
                    if not actors:
                        waiting_since = time.monotonic()
                    start(1)  # the replacement is used once it is up; survivors go on meanwhile
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
            if line is not None:
                line.update(computed, views)
            if on_chunk is not None:
                on_chunk(unit.index)
            fill()
        if failure is None and pending:
            raise no_worker()  # every worker's start attempts are spent
    finally:
        bar.close()
        for ref in in_flight:
            ray.cancel(ref)
        for actor in actors + [a for a, _ in starting.values()]:
            ray.kill(actor)
    if failure is not None:
        raise failure
    return computed, views, names, time.perf_counter() - t_ready


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


#: Seconds between two plain progress lines (the first and the last chunk always get one).
PROGRESS_LINE_EVERY_S = 10.0


class _ProgressLines:
    """Progress as whole lines on stderr for logs without a terminal (``ray job logs``, CI,
    ``> build.log``): tqdm's bar redraws one line with carriage returns there."""

    def __init__(self, chunks: int, views: int) -> None:
        self.chunks, self.views = chunks, views
        self.t0 = self.last = time.monotonic()

    def update(self, chunks_done: int, views_done: int) -> None:
        now = time.monotonic()
        if chunks_done not in (1, self.chunks) and now - self.last < PROGRESS_LINE_EVERY_S:
            return
        self.last = now
        rate = views_done / max(now - self.t0, 1e-9)
        eta = (self.views - views_done) / rate if rate > 0 else 0.0
        print(
            f"progress: {chunks_done}/{self.chunks} chunks, {views_done:,}/{self.views:,} views "
            f"({100 * views_done / max(self.views, 1):.0f}%), {rate:,.0f} views/s, ETA {eta:.0f}s",
            file=sys.stderr,
            flush=True,
        )


def _ray_error_text(e: BaseException) -> str:
    """Ray's error in one line: its message without colour codes, ids and traceback frames."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    text = re.sub(r" ?\((pid|actor_id)=[^)]*\)", "", text)
    lines, skip = [], False
    for line in (raw.strip() for raw in text.splitlines()):
        if skip or not line or line.startswith(("^", "Traceback", "class_name:", "actor_id:", "pid:", "name:", "namespace:", "ip:")):
            skip = False
            continue
        skip = line.startswith("File ")  # a frame: drop it and its source line
        if not skip:
            lines.append(line)
    one = " ".join(lines)
    return one if len(one) <= 600 else one[:300] + " ... " + one[-300:]
