"""bench/imagenet_scale.py end to end in its --tiny preset (3,000 synthetic JPEGs): every stage
runs through the real CLI on a private local Ray, the report carries the issue's fields with
sane values, and a second run is served from the workdir's cache."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

REQUIRED = (
    "images",
    "views_per_s",
    "flat_ratio",
    "driver_peak_rss_mb",
    "worker_peak_rss_mb",
    "objects_per_array_max",
    "objects_total",
    "bytes_per_view",
    "resume_to_first_chunk_s",
    "info_s",
    "verify_fraction_s",
    "dataset_open_s",
    "budget_epoch_ratio",
    "machine",
    "runs",
    "goals",
    "projection_1e9",
)


def _run(workdir: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "bench/imagenet_scale.py", "all", "--workdir", str(workdir), "--tiny"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_imagenet_scale_tiny_end_to_end_then_cached(tmp_path: Path) -> None:
    w = tmp_path / "rehearsal"
    results = REPO / "bench" / "results" / "imagenet-scale-cpu.json"
    results_before = results.stat().st_mtime_ns if results.exists() else None
    r = _run(w)
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads((w / "report.json").read_text())
    assert json.loads(r.stdout.strip().splitlines()[-1]) == report  # the last line is the report
    assert (results.stat().st_mtime_ns if results.exists() else None) == results_before  # --tiny writes into W only
    missing = [k for k in REQUIRED if k not in report]
    assert not missing, missing

    assert report["images"] == 3000 and report["preset"] == "tiny"
    assert set(report["views_per_s"]) == {"1000", "3000"} and all(v > 0 for v in report["views_per_s"].values())
    assert report["flat_ratio"] > 0
    assert report["driver_peak_rss_mb"] > 100 and report["worker_peak_rss_mb"] > 100
    assert 0 < report["objects_per_array_max"] <= 16  # 12 shards of 256 images
    assert report["objects_total"] > report["objects_per_array_max"]
    assert 4 < report["bytes_per_view"] < 40
    resume = report["resume"]
    assert report["resume_to_first_chunk_s"] > 0
    assert 0 < resume["chunks_done_at_kill"] < resume["chunks_total"] == 12
    assert report["info_s"] > 0 and report["verify_fraction_s"] > 0 and report["verify_ok"] is True
    assert report["dataset_open_s"] > 0 and report["budget_epoch_ratio"] > 0
    assert report["measure"]["epoch_in_memory"]["in_memory"] is True
    assert report["measure"]["epoch_budget"]["in_memory"] is False  # the scaled budget reads by chunk
    assert report["v400"]["views"] == 400 and report["v400"]["bytes_per_view"] > 0
    assert [run["views"] for run in report["runs"]] == [10, 10, 400]
    assert all(run["load_avg_1min"]["mean"] is not None for run in report["runs"])
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"]
    proj = report["projection_1e9"]
    assert proj["by_views"]["v10"]["objects_per_array"] == -(-(10**9) // proj["by_views"]["v10"]["shard_images"])
    assert proj["by_views"]["v400"]["tb"] > proj["by_views"]["v10"]["tb"] > 0
    assert set(report["goals"]) >= {"flat_ratio", "objects_per_array_max", "resume_to_first_chunk_s", "dataset_open_s"}

    done = w / "store-3000.zarr" / "build" / "done"
    before = {f: f.stat().st_mtime_ns for f in done.rglob("*")}
    t0 = time.monotonic()
    again = _run(w)
    assert again.returncode == 0, again.stderr[-4000:]
    assert time.monotonic() - t0 < 60
    assert "build: N" not in again.stderr and "resume: N" not in again.stderr and "data: " not in again.stderr
    assert {f: f.stat().st_mtime_ns for f in done.rglob("*")} == before  # nothing rebuilt
    assert json.loads((w / "report.json").read_text())["views_per_s"] == report["views_per_s"]
