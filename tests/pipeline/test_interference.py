"""Builds and other Ray programs on one host (issue 16): a build never joins a cluster it did not
ask for, so other programs' clusters coming and going do not touch it; a build whose workers
cannot start fails loudly with the reason; worker starts are retried."""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from helpers import store_bytes

import dr.builder.driver as pipeline
import dr.builder.pool as pool
from dr.builder import BuildConfig, reinforce
from dr.cli.main import cli
from dr.errors import WorkerStartError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _json_line(stream) -> dict:
    """The next line of a child's output that is a JSON object (Ray may log lines before it)."""
    for line in stream:
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError("the program ended without its JSON line")


def _wait_for(path: Path, procs: list[subprocess.Popen], seconds: float) -> None:
    """Wait for ``path`` to appear while every process of ``procs`` runs."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{p.args[:4]} ended early ({p.returncode}): {p.stdout.read() if p.stdout else ''}")
        assert time.monotonic() < deadline, f"{path} did not appear in {seconds}s"
        time.sleep(0.05)


@pytest.mark.slow
def test_two_builds_at_once_while_another_programs_cluster_starts_and_stops(
    cifar64_store: str, cifar64: Path, tiny_teacher: str, tmp_path: Path
) -> None:
    """Build A (library, as dr-build starts it) runs while another program's Cluster starts,
    records itself as this host's current cluster, and stops mid-build; build B (the CLI) runs
    at the same time with RAY_ADDRESS pointing at that cluster. Both start private Rays: both
    complete with the bytes of a build that ran alone."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}
    run = dict(cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    other = subprocess.Popen([sys.executable, str(HERE / "host_programs.py"), "cluster"], stdin=subprocess.PIPE, env=env, **run)
    procs = [other]
    try:
        assert other.stdout is not None and other.stdin is not None
        started = _json_line(other.stdout)
        address = started["address"]
        a_out, b_out, paused, go = tmp_path / "a.zarr", tmp_path / "b.zarr", tmp_path / "paused", tmp_path / "go"
        build_a = subprocess.Popen(
            [sys.executable, str(HERE / "host_programs.py"), "build", "--source", str(cifar64), "--teacher", tiny_teacher]
            + ["--out", str(a_out), "--paused", str(paused), "--go", str(go)],
            env=env,
            **run,
        )
        procs.append(build_a)
        cmd_b = [sys.executable, "-m", "dr.cli.main", "reinforce", str(cifar64), "--teacher", tiny_teacher, "--policy", "cifar"]
        cmd_b += ["--views", "4", "--topk", "3", "--chunk-size", "16", "--workers", "1", "--out", str(b_out), "-q", "--json"]
        build_b = subprocess.Popen(cmd_b, env=env | {"RAY_ADDRESS": address}, **run)
        procs.append(build_b)
        _wait_for(paused, [other, build_a], 150)
        # A is mid-build, its worker up, while the other cluster runs
        other.stdin.write("stop\n")
        other.stdin.flush()
        assert _json_line(other.stdout) == {"stopped": True}
        assert other.wait(60) == 0
        go.write_text("go")
        out_a, _ = build_a.communicate(timeout=150)
        out_b, _ = build_b.communicate(timeout=150)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert build_a.returncode == 0, out_a[-3000:]
    assert build_b.returncode == 0, out_b[-3000:]
    result_a, result_b = (json.loads(out.strip().splitlines()[-1]) for out in (out_a, out_b))
    assert result_a["complete"] and result_b["status"] == "complete"
    for workers in (result_a["workers"], result_b["workers"]):  # "host:node:device", node on 8 hex digits
        assert workers and all(w.split(":")[1] != started["node"][:8] for w in workers), (workers, started)
    reference = store_bytes(cifar64_store)
    for out in (a_out, b_out):
        assert zarr.open_group(str(out), mode="r").attrs["status"] == "complete"
        assert store_bytes(str(out)) == reference


def test_a_build_whose_workers_cannot_start_exits_nonzero_with_the_reason(
    cifar64: Path, tiny_teacher: str, ray_session, tmp_path: Path
) -> None:
    def args(out: Path) -> list[str]:
        flags = ["--policy", "cifar", "--views", "2", "--topk", "2", "--chunk-size", "32", "--out", str(out)]
        return ["reinforce", str(cifar64), "--teacher", tiny_teacher, *flags, "--cpus-per-worker", "64", "--start-timeout", "2", "-q"]

    out = tmp_path / "never.zarr"
    r = CliRunner().invoke(cli, args(out))
    print(r.output)
    assert r.exit_code == 1, r.output
    assert "Error: no teacher worker started within 2s (--start-timeout): Ray scheduled none" in r.output
    assert "asks for 64 CPU and 0 GPU; the cluster has" in r.output and "of 2 CPU" in r.output
    assert "--cpus-per-worker" in r.output and "--resume" in r.output
    assert not np.asarray(zarr.open_group(str(out), mode="r")["build/done"][:]).any()
    r = CliRunner().invoke(cli, [*args(tmp_path / "never-json.zarr"), "--json"])
    assert r.exit_code == 1
    error = json.loads(r.stdout)
    assert error["ok"] is False and error["kind"] == "WorkerStartError" and "64 CPU" in error["error"]


def _config(src: Path, teacher: str, out: Path) -> BuildConfig:
    return BuildConfig(source=str(src), teachers=[teacher], policy="cifar", views=2, topk=2, out=str(out), chunk_size=32, workers=1)


def test_worker_start_is_retried_then_reported_with_rays_error(
    cifar64: Path, tiny_teacher: str, ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failed_once = tmp_path / "failed-once"

    # Defined here, so Ray ships them by value; UnitWorker (torch) is imported only to compute.
    class FlakyStart:
        def __init__(self, *args, **kwargs) -> None:
            if not failed_once.exists():
                failed_once.write_text("x")
                raise RuntimeError("simulated: the first start fails")
            from dr.builder.worker import UnitWorker

            self.worker = UnitWorker(*args, **kwargs)

        def ping(self) -> dict:
            return self.worker.ping()

        def compute(self, start: int, stop: int):
            return self.worker.compute(start, stop)

    class NeverStarts(FlakyStart):
        def __init__(self, *args, **kwargs) -> None:
            raise RuntimeError("simulated: this worker cannot start")

    monkeypatch.setattr(pool, "START_BACKOFF_S", (0.1,))
    monkeypatch.setattr(pipeline, "UnitWorker", FlakyStart)
    with caplog.at_level(logging.WARNING, logger="dr.builder.pool"):
        result = reinforce(_config(cifar64, tiny_teacher, tmp_path / "flaky.zarr"), progress=False)
    assert failed_once.exists() and result.complete and result.chunks_computed == 2 and len(result.workers) == 1
    assert "a teacher worker failed to start (attempt 1 of 2; retrying in 0.1s)" in caplog.text
    assert "RuntimeError: simulated: the first start fails" in caplog.text

    monkeypatch.setattr(pool, "START_BACKOFF_S", ())  # one attempt: each costs a worker process
    monkeypatch.setattr(pipeline, "UnitWorker", NeverStarts)
    with pytest.raises(WorkerStartError) as e:
        reinforce(_config(cifar64, tiny_teacher, tmp_path / "never.zarr"), progress=False)
    message = str(e.value)
    print(message)
    assert message.startswith("no teacher worker could start: 1 attempt(s) failed")
    assert "Ray said: The actor died because of an error raised in its creation task" in message
    assert "RuntimeError: simulated: this worker cannot start" in message
    assert "asks for" in message and "CPU" in message and "Ray's logs" in message


def test_losing_every_worker_after_some_chunks_is_resumable(
    cifar64: Path, tiny_teacher: str, ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last worker dies after one chunk and no replacement can start: the error says how
    many chunks are kept (the CLI then exits 3, resumable), and --resume finishes the store."""
    computed = tmp_path / "computed-one"

    class DiesAfterOne:
        def __init__(self, *args, **kwargs) -> None:
            if computed.exists():
                raise RuntimeError("simulated: no replacement can start")
            from dr.builder.worker import UnitWorker

            self.worker = UnitWorker(*args, **kwargs)

        def ping(self) -> dict:
            return self.worker.ping()

        def compute(self, start: int, stop: int):
            if start == 0:
                out = self.worker.compute(start, stop)
                computed.write_text("x")
                return out
            deadline = time.monotonic() + 120  # units run two at a time: die once chunk 0 is back
            while not computed.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
            os._exit(1)  # the worker process dies mid-build

    monkeypatch.setattr(pool, "START_BACKOFF_S", ())
    monkeypatch.setattr(pipeline, "UnitWorker", DiesAfterOne)
    cfg = _config(cifar64, tiny_teacher, tmp_path / "lost.zarr")
    with pytest.raises(WorkerStartError) as e:
        reinforce(cfg, progress=False)
    assert e.value.chunks_written == 1 and e.value.workers_started == 1 and "1 chunk(s) written before are kept" in str(e.value)
    monkeypatch.undo()
    done = reinforce(cfg.model_copy(update={"resume": True, "force": True}), progress=False)
    assert done.complete and done.chunks_skipped == 1 and done.chunks_computed == 1
