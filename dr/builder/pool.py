"""The teacher workers of a build: Ray actors started with back-off, replaced when they die,
and a diagnosis (Ray's error, what each worker asks for, what the cluster has free) when none
runs. The build (:mod:`dr.builder.driver`) and ``--dry-run`` (:mod:`dr.builder.dryrun`) start
their workers through it, so both start identical workers and explain a failure alike."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from dr.builder import ray_runtime
from dr.builder.ray_runtime import WorkerShape
from dr.errors import WorkerStartError

__all__ = ["START_BACKOFF_S", "WorkerPool"]

log = logging.getLogger(__name__)

#: Seconds to wait before each new attempt to start a teacher worker whose start failed; after
#: the last one that worker is given up (the build fails if no worker is running then).
START_BACKOFF_S: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)


class WorkerPool:
    """Teacher workers on the connected Ray cluster.

    Each worker is an actor made by ``new_actor`` (no Ray restarts: a dead worker is replaced
    here and its work resubmitted by the caller). A start is a ``ping`` call: :meth:`started`
    takes its reply and returns the live actor, or schedules a retry after
    ``START_BACKOFF_S[attempt - 1]`` seconds. :meth:`diagnose` says why no worker is running.
    """

    def __init__(self, ray: Any, shape: WorkerShape, new_actor: Callable[[], Any], start_timeout: float) -> None:
        self.ray, self.shape, self.start_timeout = ray, shape, start_timeout
        self._new_actor = new_actor
        self.actors: list[Any] = []  # live workers
        self.names: list[str] = []  # host:node:device of every worker that came up
        self.starting: dict[Any, tuple[Any, int]] = {}  # ping ref -> (actor, start attempt)
        self._retry_at: list[tuple[float, int]] = []  # (monotonic time, attempt) of starts to retry
        self._errors: list[str] = []  # Ray's reason for each failed start
        self.t_start = time.monotonic()
        self.idle_since: float | None = self.t_start  # since when no worker has been running

    # -- starting ------------------------------------------------------------------------------
    def start(self, attempt: int = 1) -> None:
        """Start one worker (asynchronously: its ping is in :attr:`starting`)."""
        actor = self._new_actor()
        self.starting[actor.ping.remote()] = (actor, attempt)

    def start_all(self) -> None:
        """Start the shape's workers and let them come up together (bounded by the start
        timeout), so the first units spread over every node."""
        for _ in range(self.shape.workers):
            self.start(1)
        self.ray.wait(list(self.starting), num_returns=len(self.starting), timeout=self.start_timeout)

    def start_one(self) -> tuple[Any, float]:
        """Start a single worker and wait for it (``--dry-run``); returns (actor, seconds).
        Raises :class:`WorkerStartError` with the diagnosis when it does not come up."""
        t0 = time.perf_counter()
        self.start(1)
        ref = next(iter(self.starting))
        try:
            self.ray.get(ref, timeout=self.start_timeout)
        except (self.ray.exceptions.GetTimeoutError, *ray_runtime.start_errors()) as e:
            if not isinstance(e, self.ray.exceptions.GetTimeoutError):
                self._errors.append(ray_runtime.error_text(e))
            self.stop()
            raise self.diagnose() from e
        actor, _ = self.starting.pop(ref)
        self.actors.append(actor)
        return actor, time.perf_counter() - t0

    def started(self, ref: Any) -> Any | None:
        """Take a start's reply: the live actor, or None when its start failed (a retry is
        scheduled while back-off steps remain)."""
        actor, attempt = self.starting.pop(ref)
        try:
            info = self.ray.get(ref)
        except ray_runtime.start_errors() as e:
            self._errors.append(ray_runtime.error_text(e))
            if attempt <= len(START_BACKOFF_S):
                delay = START_BACKOFF_S[attempt - 1]
                log.warning(
                    "a teacher worker failed to start (attempt %d of %d; retrying in %gs): %s",
                    attempt,
                    len(START_BACKOFF_S) + 1,
                    delay,
                    self._errors[-1],
                )
                self._retry_at.append((time.monotonic() + delay, attempt + 1))
            else:
                log.warning("a teacher worker failed to start %d times: giving it up", attempt)
            return None
        self.actors.append(actor)
        self.idle_since = None
        self.names.append(f"{info['host']}:{info['node'][:8]}:{info['device']}")
        return actor

    def retry_due(self) -> None:
        """Start the retries whose back-off has passed."""
        now = time.monotonic()
        for due in [r for r in self._retry_at if r[0] <= now]:
            self._retry_at.remove(due)
            self.start(due[1])

    def can_grow(self) -> bool:
        """A worker is starting or will be retried."""
        return bool(self.starting or self._retry_at)

    def lost(self, actor: Any) -> None:
        """``actor`` died: drop it and start a replacement (used once it is up)."""
        if any(a is actor for a in self.actors):
            self.actors[:] = [a for a in self.actors if a is not actor]
            if not self.actors:
                self.idle_since = time.monotonic()
            self.start(1)

    # -- waiting -------------------------------------------------------------------------------
    def timed_out(self, busy: bool) -> bool:
        """No worker has run for the whole start timeout, and nothing is computing."""
        return self.idle_since is not None and not busy and time.monotonic() - self.idle_since >= self.start_timeout

    def next_wake(self, busy: bool) -> float | None:
        """Seconds until the pool next needs attention (a retry, or the start deadline while
        nothing computes); None: only when a reply comes."""
        now = time.monotonic()
        wakes = [t - now for t, _ in self._retry_at]
        if not busy and self.idle_since is not None:
            wakes.append(self.idle_since + self.start_timeout - now)
        return max(0.0, min(wakes)) if wakes else None

    # -- ending --------------------------------------------------------------------------------
    def diagnose(self, chunks_written: int = 0) -> WorkerStartError:
        """Why no worker is running: Ray's error, what each worker asks for, what is free."""
        ray, per_cpu = self.ray, self.shape.cpus
        total, free = ray.cluster_resources(), ray.available_resources()
        settle = time.monotonic() + 2.0  # a worker that just died frees its share a moment later
        while self._errors and free.get("CPU", 0.0) < per_cpu <= total.get("CPU", 0.0) and time.monotonic() < settle:
            time.sleep(0.2)
            free = ray.available_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        waited = time.monotonic() - self.t_start
        if self._errors:
            backoff = f" (retried after {', '.join(f'{d:g}' for d in START_BACKOFF_S)}s)" if len(self._errors) > 1 else ""
            head = f"no teacher worker could start: {len(self._errors)} attempt(s) failed in {waited:.0f}s{backoff}. Ray said: {self._errors[-1]}"
            fix = "fix the cause Ray names (see its logs), then run the same command with --resume"
        else:
            head = f"no teacher worker started within {self.start_timeout:g}s (--start-timeout): Ray scheduled none"
            fix = "lower --cpus-per-worker or --workers, add nodes, or free the cluster; then run the same command with --resume"
        asked = (
            f"each of {self.shape.workers} worker(s) asks for {per_cpu:g} CPU and {self.shape.gpus:g} GPU; the cluster has "
            f"{free.get('CPU', 0.0):g} of {total.get('CPU', 0.0):g} CPU and {free.get('GPU', 0.0):g} of {total.get('GPU', 0.0):g} GPU free "
            f"on {nodes} node(s)"
        )
        kept = f"; {chunks_written} chunk(s) written before are kept" if chunks_written else ""
        err = WorkerStartError(f"{head}\n  {asked}\n  {fix}{kept}\n  Ray's logs: {ray_runtime.logs_location()}")
        err.chunks_written = chunks_written
        err.workers_started = len(self.names)
        return err

    def stop(self) -> None:
        """Kill every worker, live or starting."""
        for actor in self.actors + [a for a, _ in self.starting.values()]:
            self.ray.kill(actor)
        self.actors, self.starting = [], {}
