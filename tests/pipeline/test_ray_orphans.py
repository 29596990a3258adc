"""A killed build takes its private Ray down: no Ray process of it outlives the driver by more
than a few seconds (Ray leaves the raylet's agents running ~60 s on their own), and the
watchdog that stops them signals only processes it proves are of that build's Ray."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from dr.builder import ray_runtime

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watchdog finds Ray's processes in /proc")


def _live_in_session(sid: int) -> dict[int, bytes]:
    """pid -> command line of every process of session ``sid`` that is not a zombie."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit():
                fields = (proc / "stat").read_bytes().rpartition(b")")[2].split()  # state ppid pgrp session
                if int(fields[3]) == sid and fields[0] != b"Z":
                    found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").strip()
        except (OSError, ValueError, IndexError):
            continue
    return found


def _done(out: Path) -> int:
    try:
        return int(np.asarray(zarr.open_group(str(out), mode="r")["build/done"][:]).sum())
    except Exception:  # noqa: BLE001 - the store may not exist yet
        return 0


def test_a_sigkilled_build_leaves_no_ray_process(cifar64: Path, tiny_teacher: str, tmp_path: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dro-", dir="/tmp"))  # the build's TMPDIR: short, Ray's socket paths must fit
    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "dr.cli.main", "reinforce", str(cifar64), "--teacher", tiny_teacher, "--policy", "cifar"]
    cmd += ["--views", "16", "--topk", "3", "--chunk-size", "4", "--write-interval", "0", "--workers", "1", "--out", str(out), "-q"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp)}
    # a session of its own: every process the build starts (Ray's included) is in it, nothing else is
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    left: dict[int, bytes] = {}
    said = ""
    try:
        deadline = time.monotonic() + 120
        while _done(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0].decode()
        before = _live_in_session(proc.pid)
        assert {b"ray::DashboardAgent", b"ray::RuntimeEnvAgent"} <= set(before.values()), before  # what Ray would leave
        assert len(list(tmp.glob("dr-ray-*"))) == 1  # the private Ray's temp dir
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        left = _live_in_session(proc.pid)
        while left and time.monotonic() - killed < 10:
            time.sleep(0.1)
            left = _live_in_session(proc.pid)
        gone_after = time.monotonic() - killed
        said = proc.communicate(timeout=30)[0].decode()  # EOF: the watchdog (which holds stderr) has exited too
    finally:
        for pid in _live_in_session(proc.pid):  # a failed test leaks nothing either
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ray_dirs = list(tmp.glob("dr-ray-*"))
        shutil.rmtree(tmp, ignore_errors=True)
    assert left == {}, f"still running 10 s after the driver was killed: {left}; the build said:\n{said}"
    print(f"{len(before) - 1} Ray processes, all gone {gone_after:.1f} s after the kill; the build said:\n{said}")
    assert "died without stopping its private Ray: stopped" in said
    assert ray_dirs == []  # the private Ray's temp dir is removed too


def test_the_watchdog_stops_only_processes_it_proves_are_of_its_ray() -> None:
    temp_dir = tempfile.mkdtemp(prefix="dr-ray-")
    other_dir = tempfile.mkdtemp(prefix="dr-ray-")
    sid = os.getsid(0)

    def holder(path: str, mode: str, new_session: bool = False) -> subprocess.Popen[bytes]:
        """A process that holds ``path`` open in ``mode`` (and names it on its command line)."""
        code = "import sys, time; f = open(sys.argv[1], sys.argv[2]); print('open', flush=True); time.sleep(60)"
        proc = subprocess.Popen([sys.executable, "-c", code, path, mode], stdout=subprocess.PIPE, start_new_session=new_session)
        assert proc.stdout is not None and proc.stdout.readline() == b"open\n"
        return proc

    log = os.path.join(temp_dir, "session", "raylet.out")
    os.makedirs(os.path.dirname(log))
    Path(log).write_text("x")
    ours = holder(log, "a")  # like a Ray process: in the driver's session, writing its log there
    strangers = {
        "reads the log (tail -f)": holder(log, "r"),
        "another session": holder(log, "a", new_session=True),
        "another dir": holder(os.path.join(other_dir, "raylet.out"), "a"),
    }
    try:
        assert ray_runtime._ray_processes(sid, temp_dir) == [ours.pid]
        assert ray_runtime._stop_ray_processes(sid, temp_dir) == [ours.pid]
        assert ours.wait(timeout=5) == -signal.SIGTERM
        assert all(p.poll() is None for p in strangers.values()), {k: p.poll() for k, p in strangers.items()}
    finally:
        for p in [ours, *strangers.values()]:
            p.kill()
            p.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(other_dir, ignore_errors=True)
