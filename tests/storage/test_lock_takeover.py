"""The writer lock after a crash: a lock whose holder is provably gone (this host, this boot,
its pid not running or reused) is taken over without --force, saying so; --force stays the way
to take a lock from another host or one an older dr left without a boot record; a holder alive
on this host is never taken over. Real lock files and real processes throughout."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dr.storage.lock import LOCK_NAME, StoreLock, StoreLockedError, boot_id, process_start

REPO = Path(__file__).resolve().parents[2]
LOGGER = "dr.storage.lock"

# a build's process, reduced to its lock: take it, say so, then die holding it or keep running
HOLDER = """
import os, sys, time
from dr.storage.lock import StoreLock
StoreLock(sys.argv[1]).acquire()
print(os.getpid(), flush=True)
if sys.argv[2] == "exit":
    os._exit(0)  # like a crash: the lock stays behind
time.sleep(120)
"""

needs_boot_id = pytest.mark.skipif(boot_id() is None, reason="this platform has no readable boot id (/proc/sys/kernel/random/boot_id)")
needs_start_time = pytest.mark.skipif(
    process_start(os.getpid()) is None, reason="this platform gives no process start time (/proc/<pid>/stat)"
)


def _holder(store: Path, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(store), mode], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)


def _gone_pid(tmp_path: Path) -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"], cwd=tmp_path)
    proc.wait()
    return proc.pid


def _write(store: Path, **record: object) -> dict[str, object]:
    store.mkdir(exist_ok=True)
    (store / LOCK_NAME).write_text(json.dumps(record))
    return record


def _this_host(pid: int, **extra: object) -> dict[str, object]:
    """A record as this version writes it, for ``pid`` on this host and boot."""
    me = StoreLock("unused")._record()
    return {**me, "pid": pid, "started": "2024-01-02T03:04:05+0000", "token": "old", "pid_start": process_start(pid), **extra}


def _token(store: Path) -> object:
    return json.loads((store / LOCK_NAME).read_text())["token"]


def _takeovers(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING and "taking over" in r.getMessage()]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@needs_boot_id
def test_a_lock_left_by_a_process_that_exited_is_taken_over_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "s.zarr"
    proc = _holder(store, "exit")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    pid = int(out.split()[0])
    left = json.loads((store / LOCK_NAME).read_text())
    assert left["pid"] == pid and left["host"] == socket.gethostname() and left["boot_id"] == boot_id()
    if process_start(os.getpid()) is not None:
        assert isinstance(left["pid_start"], int)

    caplog.set_level(logging.WARNING, logger=LOGGER)
    lock = StoreLock(str(store))
    lock.refuse_if_held()  # what a build does first (dr.builder.driver._open_writer), then acquire: neither needs force
    lock.acquire()
    assert lock.held and _token(store) == lock.token
    (message,) = _takeovers(caplog)
    assert f"left by pid {pid} on this host ({socket.gethostname()}, started {left['started']})" in message
    assert "no longer running (same boot)" in message and str(store) in message
    lock.release()
    assert not (store / LOCK_NAME).exists()


@needs_boot_id
def test_a_holder_alive_on_this_host_is_never_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "s.zarr"
    proc = _holder(store, "sleep")
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        left = (store / LOCK_NAME).read_text()
        with pytest.raises(StoreLockedError, match=rf"another build \(pid {pid}.*running on this host"):
            StoreLock(str(store)).refuse_if_held()
        with pytest.raises(StoreLockedError, match=rf"another build \(pid {pid}.*running on this host"):
            StoreLock(str(store)).acquire()
        with pytest.raises(StoreLockedError, match=rf"running build \(pid {pid}.*never takes over.*kill {pid}"):
            StoreLock(str(store)).acquire(force=True)
        assert (store / LOCK_NAME).read_text() == left  # untouched
    finally:
        proc.kill()
        proc.wait()
    caplog.set_level(logging.WARNING, logger=LOGGER)
    StoreLock(str(store)).acquire()  # once it is gone, it is provably gone
    assert len(_takeovers(caplog)) == 1


@needs_boot_id
def test_a_lock_from_another_host_needs_force(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "s.zarr"
    _write(store, **_this_host(_gone_pid(tmp_path), host=f"not-{socket.gethostname()}"))
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for attempt in (StoreLock(str(store)).refuse_if_held, StoreLock(str(store)).acquire):
        with pytest.raises(StoreLockedError, match=r"another build .* on another host; .*--force \(for a lock from another host"):
            attempt()
    assert _token(store) == "old"
    lock = StoreLock(str(store))
    lock.refuse_if_held(force=True)
    lock.acquire(force=True)
    assert _token(store) == lock.token and not _takeovers(caplog)


def test_an_old_record_without_boot_id_needs_force_even_when_its_process_is_gone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "s.zarr"
    pid = _gone_pid(tmp_path)
    _write(store, host=socket.gethostname(), pid=pid, started="2024-01-02T03:04:05+0000", token="old")  # a dr before boot ids
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for attempt in (StoreLock(str(store)).refuse_if_held, StoreLock(str(store)).acquire):
        with pytest.raises(StoreLockedError, match=rf"stale writer lock left by pid {pid} .* no longer running.*rerun with --force"):
            attempt()
    assert _token(store) == "old"
    lock = StoreLock(str(store))
    lock.acquire(force=True)
    assert _token(store) == lock.token and not _takeovers(caplog)


@needs_boot_id
@needs_start_time
def test_a_reused_pid_is_a_gone_holder(tmp_path: Path, sleeper: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture) -> None:
    """The recorded pid runs, but it is another process: its start time is not the recorded one."""
    store = tmp_path / "s.zarr"
    start = process_start(sleeper.pid)
    assert start is not None
    _write(store, **_this_host(sleeper.pid, pid_start=start))  # the true start time: alive, refused
    with pytest.raises(StoreLockedError, match=rf"pid {sleeper.pid}.*never takes over"):
        StoreLock(str(store)).acquire(force=True)

    caplog.set_level(logging.WARNING, logger=LOGGER)
    for pid in (sleeper.pid, os.getpid()):  # a live process of another start time, this very process
        now = process_start(pid)
        assert now is not None
        _write(store, **_this_host(pid, pid_start=now - 1))
        lock = StoreLock(str(store))
        lock.refuse_if_held()
        lock.acquire()
        assert _token(store) == lock.token
        assert f"left by pid {pid} on this host" in _takeovers(caplog)[-1] and "now belongs to another process" in _takeovers(caplog)[-1]
    assert len(_takeovers(caplog)) == 2


@needs_boot_id
def test_an_unreaped_zombie_is_a_gone_holder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "s.zarr"
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        for _ in range(200):  # until it has exited, without reaping it
            stat = Path(f"/proc/{zombie.pid}/stat")
            if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.05)
        else:
            pytest.skip("no /proc/<pid>/stat state to see a zombie by")
        _write(store, **_this_host(zombie.pid))
        caplog.set_level(logging.WARNING, logger=LOGGER)
        StoreLock(str(store)).acquire()
        assert len(_takeovers(caplog)) == 1
    finally:
        zombie.wait()


@needs_boot_id
def test_a_lock_from_another_boot_or_pid_namespace_needs_force(tmp_path: Path) -> None:
    """A pid recorded before a reboot, or in another container (pid namespace), means nothing here."""
    store = tmp_path / "s.zarr"
    gone = _gone_pid(tmp_path)
    cases = {
        "before this host last restarted": _this_host(gone, boot_id="00000000-0000-0000-0000-000000000000"),
        "in another container": _this_host(gone, pid_ns="pid:[1]"),
    }
    for says, record in cases.items():
        if record["pid_ns"] is None and says == "in another container":
            continue  # no pid namespace to compare on this platform
        _write(store, **record)
        with pytest.raises(StoreLockedError, match=rf"{says}.*--force"):
            StoreLock(str(store)).acquire()
        lock = StoreLock(str(store))
        lock.acquire(force=True)
        assert _token(store) == lock.token


@needs_boot_id
def test_two_takeovers_of_one_gone_lock_do_not_both_win(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    judged = _write(store, **_this_host(_gone_pid(tmp_path)))
    first, second = StoreLock(str(store)), StoreLock(str(store))
    first.acquire()  # takes it over while ``second`` still holds its judgement of the old record
    assert not second._replace(judged, second._record())
    assert _token(store) == first.token
    with pytest.raises(StoreLockedError, match="another build .* running on this host"):
        second.acquire()
    assert sorted(p.name for p in store.iterdir()) == [LOCK_NAME]
