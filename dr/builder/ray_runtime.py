"""Ray for a build: connect (a private local Ray unless told otherwise), size the teacher
workers from the cluster's resources, and say Ray's errors in one line.

Ray is imported here (and in the modules that run a build), never by ``import dr``.
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
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

from dr.builder.config import BuildConfig
from dr.errors import ConfigError

__all__ = ["WorkerShape", "connect", "error_text", "logs_location", "start_errors", "worker_shape"]

log = logging.getLogger(__name__)

#: The private local Ray this process started for builds: its temp dir (sockets, logs) and
#: whether to keep that dir at exit (a build failed: its logs are evidence).
_PRIVATE_RAY: dict[str, Any] = {}


def connect(address: str | None) -> Any:
    """Connect to Ray for a build; returns the ``ray`` module.

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
        return _start(ray, address)
    finally:
        if callable(sigterm):
            signal.signal(signal.SIGTERM, sigterm)


def _start(ray: Any, address: str | None) -> Any:
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
    atexit.register(_stop_private)
    log.info("started a private local Ray (logs in %s)", temp_dir)
    return ray


def _stop_private() -> None:
    import ray

    temp_dir = _PRIVATE_RAY.pop("temp_dir", None)
    if temp_dir is None:
        return
    ray.shutdown()
    if not _PRIVATE_RAY.pop("keep", False):
        shutil.rmtree(temp_dir, ignore_errors=True)


def logs_location() -> str:
    """Where this build's Ray logs are (a private Ray's are kept after a failed build)."""
    if "temp_dir" in _PRIVATE_RAY:
        _PRIVATE_RAY["keep"] = True
        return os.path.join(_PRIVATE_RAY["temp_dir"], "session_latest", "logs")
    return "/tmp/ray/session_latest/logs on each node"


def start_errors() -> tuple[type[BaseException], ...]:
    """What a worker's start may fail with: it died starting, or Ray cannot place it."""
    import ray

    return (ray.exceptions.RayActorError, getattr(ray.exceptions, "ActorUnschedulableError", ray.exceptions.RayActorError))


@dataclass(frozen=True)
class WorkerShape:
    """How many teacher workers a build starts and what each asks Ray for."""

    workers: int
    cpus: float
    gpus: float
    device: str  # "cuda" or "cpu": where the teachers run

    def capped(self, units: int) -> WorkerShape:
        """No more workers than work units."""
        return WorkerShape(min(self.workers, units), self.cpus, self.gpus, self.device)


def worker_shape(ray: Any, config: BuildConfig) -> WorkerShape:
    """The workers for ``config`` on the connected cluster: one per GPU (``--device auto`` or
    ``cuda``) sharing the CPUs, else ``--workers`` (default 1) sharing the CPUs."""
    cluster = ray.cluster_resources()
    cpus = float(cluster.get("CPU", 1))
    gpus = int(cluster.get("GPU", 0)) if config.device != "cpu" else 0
    if config.device == "cuda" and gpus == 0:
        raise ConfigError("--device cuda but the Ray cluster has no GPUs: use --device auto or cpu, or join GPU workers")
    if gpus:
        workers = config.workers or gpus
        return WorkerShape(workers, config.cpus_per_worker or max(1.0, math.floor(cpus / workers)), 1.0, "cuda")
    workers = config.workers or 1
    return WorkerShape(workers, config.cpus_per_worker or max(0.01, cpus / workers), 0.0, "cpu")


def error_text(e: BaseException) -> str:
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
