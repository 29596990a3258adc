"""Ray for a build: connect (a private local Ray unless told otherwise), size the teacher
workers from the cluster's resources, and say Ray's errors in one line.

Ray is imported here (and in the modules that run a build), never by ``import dr``.

A private Ray does not go down with a killed driver by itself: Ray fate-shares the processes
the driver starts (gcs_server, raylet, ...: ``PR_SET_PDEATHSIG``), but the raylet's agents
(``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) notice the raylet's death and then wait
up to 60 s to report it to the dead GCS. So on Linux a small watchdog (this file run as a
script: it imports nothing but the standard library at module level, so it runs with
``python -I -S``) waits for the driver to die and stops what its private Ray left, see
:func:`_watch`.
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
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dr.builder.config import BuildConfig

__all__ = ["WorkerShape", "connect", "error_text", "logs_location", "start_errors", "worker_shape"]

log = logging.getLogger(__name__)

#: The private local Ray this process started for builds: its temp dir (sockets, logs),
#: whether to keep that dir at exit (a build failed: its logs are evidence) and its watchdog.
_PRIVATE_RAY: dict[str, Any] = {}
#: A file in a private Ray's temp dir that tells the watchdog to keep the dir (its logs).
_KEEP_MARK = "dr-keep-logs"


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
    watchdog = _start_watchdog(temp_dir)  # before Ray starts: a kill during ray.init counts too
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
        _end_watchdog(watchdog)
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    finally:
        auth_log.setLevel(level)
        for k, v in saved.items():  # the driver keeps the token it loaded; other code sees the user's
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    _PRIVATE_RAY.update(temp_dir=temp_dir, keep=False, watchdog=watchdog)
    atexit.register(_stop_private)
    log.info("started a private local Ray (logs in %s)", temp_dir)
    return ray


def _stop_private() -> None:
    import ray

    temp_dir = _PRIVATE_RAY.pop("temp_dir", None)
    if temp_dir is None:
        return
    ray.shutdown()
    _end_watchdog(_PRIVATE_RAY.pop("watchdog", None))  # Ray is down: nothing is left for it to stop
    if not _PRIVATE_RAY.pop("keep", False):
        shutil.rmtree(temp_dir, ignore_errors=True)


def _start_watchdog(temp_dir: str) -> subprocess.Popen[bytes] | None:
    """Start the process that stops this private Ray if the driver dies without stopping it
    (Linux: it finds Ray's processes in ``/proc``). It runs in a session of its own, so the
    terminal's Ctrl-C or a signal to the driver's process group does not reach it."""
    if not sys.platform.startswith("linux"):
        return None
    # this file as a script, isolated (-I -S: no site-packages, no PYTHON* variables, no dr package)
    where = os.path.realpath(temp_dir)  # as /proc/PID/fd names the files in it
    args = [sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid()), str(os.getsid(0)), where]
    try:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    except OSError as e:
        log.warning("cannot start the watchdog of the private Ray (%s): if this build is killed, its Ray may outlive it", e)
        return None


def _end_watchdog(watchdog: subprocess.Popen[bytes] | None) -> None:
    if watchdog is not None:
        watchdog.kill()
        watchdog.wait()


def _watch(driver: int, session: int, temp_dir: str) -> None:
    """The watchdog: wait until the driver (this process's parent) is gone, then stop the
    processes of its private Ray that are still running and remove its temp dir (unless the
    build kept its logs). It never signals a process it cannot prove is of that Ray."""
    while os.getppid() == driver:  # a dead parent's children are adopted: the ppid changes
        time.sleep(0.2)
    stopped = _stop_ray_processes(session, temp_dir)
    if not os.path.exists(os.path.join(temp_dir, _KEEP_MARK)):
        shutil.rmtree(temp_dir, ignore_errors=True)
    if stopped:
        signal.alarm(5)  # never hang on a full stderr pipe nobody reads
        said = f"dr: the build's driver (pid {driver}) died without stopping its private Ray: "
        said += f"stopped {len(stopped)} Ray process(es) it left (pids {', '.join(map(str, stopped))})\n"
        os.write(2, said.encode())


def _stop_ray_processes(session: int, temp_dir: str) -> list[int]:
    """SIGTERM the private Ray's processes, SIGKILL those left after a grace; every signal
    goes to a process proved (again) to be of that Ray. Returns the pids signalled."""
    stopped: set[int] = set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _ray_processes(session, temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:  # gone already
                continue
        stopped.update(pids)
        deadline = time.monotonic() + 1.5
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = _ray_processes(session, temp_dir)
        if not pids:
            break
    return sorted(stopped)


def _ray_processes(session: int, temp_dir: str) -> list[int]:
    """The live processes provably of the private Ray in ``temp_dir``: in the driver's session
    and writing a file under ``temp_dir`` (its logs: every Ray process does; the dir is the
    driver's ``mkdtemp``, no other program's). Not by environment or command line: Ray's agents
    overwrite both with their process titles. A zombie has no open files."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    return [pid for pid in pids if _in_session(pid, session) and _writes_under(pid, temp_dir)]


def _in_session(pid: int, session: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[3]) == session  # state ppid pgrp session
    except (OSError, ValueError, IndexError):  # gone
        return False


def _writes_under(pid: int, temp_dir: str) -> bool:
    """Whether ``pid`` holds a file under ``temp_dir`` open for writing."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or not ours to read
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(temp_dir + "/"):
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
                if flags & os.O_ACCMODE != os.O_RDONLY:
                    return True
        except (OSError, ValueError, StopIteration):  # closed meanwhile
            continue
    return False


def logs_location() -> str:
    """Where this build's Ray logs are (a private Ray's are kept after a failed build)."""
    if "temp_dir" in _PRIVATE_RAY:
        _PRIVATE_RAY["keep"] = True
        with open(os.path.join(_PRIVATE_RAY["temp_dir"], _KEEP_MARK), "w"):  # for the watchdog too
            pass
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
    from dr.errors import ConfigError  # here: the module imports no dr module when run as the watchdog

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


if __name__ == "__main__":  # the watchdog of a private Ray: DRIVER_PID SESSION_ID TEMP_DIR
    _watch(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
