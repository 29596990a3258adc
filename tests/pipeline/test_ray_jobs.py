"""Ray Jobs: `ray job submit -- dr-build reinforce ... --address auto` on a head this test
starts (127.0.0.1, a private --temp-dir, fixed free ports, token auth), `ray job stop` mid-build,
a resubmitted `--resume` finishes the store with the same bytes as a one-go build.

The head is stopped by this test only: its own processes, by pid (`ray stop` would stop every
Ray on the host, including other programs' running tests)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import store_bytes

from dr.builder import BuildConfig, reinforce

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # the venv's bin: ray and dr-build


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Head:
    dashboard: str  # http://127.0.0.1:PORT, what `ray job ...` is given
    env: dict[str, str]  # the token the head requires
    temp_dir: str

    def ray(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(BIN / "ray"), "job", *args, "--address", self.dashboard] if args[0] != "submit" else None
        if cmd is None:  # `ray job submit [options] -- entrypoint`: --address goes before the --
            split = args.index("--")
            cmd = [str(BIN / "ray"), "job", *args[:split], "--address", self.dashboard, *args[split:]]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env)

    def api(self, path: str) -> bytes:
        req = urllib.request.Request(self.dashboard + path, headers={"Authorization": "Bearer " + self.env["RAY_AUTH_TOKEN"]})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    def status(self, job: str) -> str:
        return json.loads(self.api(f"/api/jobs/{job}"))["status"]

    def logs(self, job: str) -> str:
        return json.loads(self.api(f"/api/jobs/{job}/logs"))["logs"]

    def wait(self, job: str, until: tuple[str, ...] = ("SUCCEEDED", "FAILED", "STOPPED"), timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while (status := self.status(job)) not in until:
            assert time.monotonic() < deadline, f"job {job} still {status} after {timeout}s:\n{self.logs(job)[-3000:]}"
            time.sleep(0.2)
        return status


def _processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, command line) of every process we can see (Linux /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                out[int(d.name)] = (ppid, (d / "cmdline").read_bytes().decode(errors="replace").split("\0"))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _head_pids(root: int | None, temp_dir: str) -> set[int]:
    """The `ray start --block` process, its descendants, and every process whose command line
    names our temp dir (Ray's daemons and workers): this head's processes, nobody else's."""
    procs = _processes()
    pids = {pid for pid, (_, cmd) in procs.items() if any(temp_dir in a for a in cmd)} | ({root} if root else set())
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in pids} - pids
        grew = bool(more)
        pids |= more
    return (pids & set(procs)) - {os.getpid()}


def _stop_head(proc: subprocess.Popen[bytes], temp_dir: str) -> None:
    """Stop this head by pid: SIGTERM, then SIGKILL what is left after 2 s. Never `ray stop`,
    which stops every Ray process on the host (other programs' running tests included)."""
    pids = _head_pids(proc.pid if proc.poll() is None else None, temp_dir)
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap ours
            pids = {pid for pid in pids if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"}
            if not pids:
                break
            time.sleep(0.1)
        pids |= _head_pids(proc.pid if proc.poll() is None else None, temp_dir)
    proc.wait(timeout=5)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


@contextlib.contextmanager
def started_head() -> Iterator[Head]:
    """A Ray head on 127.0.0.1 with its dashboard (the Jobs API), stopped on exit."""
    # A short path: Ray's unix sockets live under it (107-byte limit).
    temp_dir = tempfile.mkdtemp(prefix="drjob-", dir="/tmp")
    gcs, dash, client, agent, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = _free_ports(9)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    cmd = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        f"--temp-dir={temp_dir}", "--num-cpus=2", "--num-gpus=0", "--object-store-memory=100000000",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={env_agent}",
        f"--metrics-export-port={metrics}", f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
        "--disable-usage-stats",
    ]  # fmt: skip
    log = open(os.path.join(temp_dir, "ray-start.log"), "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    h = Head(f"http://127.0.0.1:{dash}", env, temp_dir)
    try:
        deadline = time.monotonic() + 60
        while True:  # the job API answers once the dashboard and its agent are up
            try:
                json.loads(h.api("/api/jobs/"))
                break
            except OSError:
                assert proc.poll() is None, Path(log.name).read_text()[-3000:]
                assert time.monotonic() < deadline, "the head's dashboard did not come up in 60 s"
                time.sleep(0.3)
        yield h
    finally:
        _stop_head(proc, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    with started_head() as h:
        yield h


@pytest.mark.slow
def test_ray_job_stop_then_resubmitted_resume_gives_the_same_bytes(
    head: Head, cifar64: Path, tiny_teacher: str, ray_session, tmp_path: Path
) -> None:
    weights = tiny_teacher.split("@", 1)[1]
    args = ["--policy", "cifar", "--views", "4", "--topk", "3", "--chunk-size", "4", "--workers", "1"]
    reference = tmp_path / "ref.zarr"
    reinforce(BuildConfig(source=str(cifar64), teachers=[tiny_teacher], policy="cifar", views=4, topk=3, out=str(reference), chunk_size=4, workers=1), progress=False)  # fmt: skip

    out = tmp_path / "job.zarr"
    # Same weights, same outputs; the first job's teacher sleeps 1 s per batch (one per chunk of 16),
    # so it is still running when it is stopped. The spec is the same for both jobs.
    slow = f"python:slow_teacher:slow_tiny_cnn@{weights}"
    build = [str(BIN / "dr-build"), "reinforce", str(cifar64), "--teacher", slow, *args, "--address", "auto", "--out", str(out)]
    env_vars = {"PYTHONPATH": str(HERE)}
    runtime_env = json.dumps({"env_vars": {**env_vars, "DR_TEST_TEACHER_DELAY": "1"}})
    first = head.ray("submit", "--no-wait", "--submission-id", "dr-1", "--runtime-env-json", runtime_env, "--", *build)
    assert first.returncode == 0, first.stdout + first.stderr
    deadline = time.monotonic() + 60
    while "progress: 1/" not in (logs := head.logs("dr-1")):  # a plain line per chunk in the job log
        assert head.status("dr-1") in ("PENDING", "RUNNING"), logs[-3000:]
        assert time.monotonic() < deadline, logs[-3000:]
        time.sleep(0.2)
    stop = head.ray("stop", "dr-1")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert head.wait("dr-1") == "STOPPED"
    logs = head.logs("dr-1")
    assert "interrupted" in logs and "--resume" in logs, logs[-3000:]

    # --resume without --force: the stopped build released its writer lock on SIGTERM.
    second = head.ray(
        "submit", "--submission-id", "dr-2", "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--", *build, "--resume"
    )
    logs = head.logs("dr-2")
    assert second.returncode == 0 and head.status("dr-2") == "SUCCEEDED", second.stdout + second.stderr + logs
    assert "complete:" in logs and "progress: " in logs, logs[-3000:]
    skipped = int(logs.split("skipped ")[1].split()[0])
    assert 1 <= skipped < 16, logs[-3000:]  # the stopped job's chunks were kept, not recomputed
    assert store_bytes(str(out)) == store_bytes(str(reference))


def test_progress_lines_without_a_terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Whole lines (no carriage returns) for the first and last chunk and every interval."""
    from dr.builder import progress

    clock = iter([0.0, 1.0, 2.0, 13.0, 14.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    lines = progress.ProgressLines(chunks=4, views=400)
    for done in range(1, 5):
        lines.update(done, done * 100)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines() == [
        "progress: 1/4 chunks, 100/400 views (25%), 100 views/s, ETA 3s",
        "progress: 3/4 chunks, 300/400 views (75%), 23 views/s, ETA 4s",
        "progress: 4/4 chunks, 400/400 views (100%), 29 views/s, ETA 0s",
    ]
