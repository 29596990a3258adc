"""The GPU suite's pipeline, in its CPU smoke mode: every script runs and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_gpu_suite_runs_chosen_steps_and_reports_a_timed_out_one(tmp_path: Path) -> None:
    """A step over its time limit is named in the summary and fails the suite at the end;
    an unknown step name is refused before anything runs."""
    out = tmp_path / "suite"
    env = {**os.environ, "PY": sys.executable, "STEP_TIMEOUT": "1"}
    r = subprocess.run(
        ["bash", "bench/gpu_suite.sh", "--cpu-smoke", str(out), "replay"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 1, r.stderr[-2000:]
    assert "replay failed (exit 124, over 1 s)" in r.stderr and "failed steps: replay" in r.stderr
    assert not (out / "replay.json").exists() and not (out / "train-speed.log").exists()  # only the chosen step ran
    assert "**Failed steps:** replay" in (out / "summary.md").read_text()
    r = subprocess.run(
        ["bash", "bench/gpu_suite.sh", "--cpu-smoke", str(out), "replay", "bogus"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "unknown step 'bogus'" in r.stderr


@pytest.mark.slow
def test_gpu_suite_cpu_smoke(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    env = {**os.environ, "PY": sys.executable, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        ["bash", "bench/gpu_suite.sh", "--cpu-smoke", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    replay = json.loads((out / "replay.json").read_text())
    assert {row["preset"] for row in replay["rows"]} >= {"rrc+mix+ra/re", "cifar+mix+ra/re"}
    assert all(row["batched_views_per_s"] > 0 and row["aten_ops_per_batch"] > 0 for row in replay["rows"])
    # the ceiling is the per-view time over the crop-only time (no timing asserts: smoke sizes are noise)
    for row in replay["rows"]:
        assert row["crop_only_views_per_s"] > 0
        assert abs(row["ceiling_ratio"] - row["crop_only_views_per_s"] / row["per_view_views_per_s"]) < 0.01, row
    build = json.loads((out / "build-ensemble.json").read_text())
    assert build["teachers"].count("resnet18") == 2 and build["build"] > 0 and build["cpu_baseline"] > 0
    speed = json.loads((out / "train-speed.json").read_text())
    assert speed["plain_images_per_s"] > 0 and speed["reinforced_images_per_s"] > 0
    err = json.loads((out / "device-error.json").read_text())
    assert all(row["max_levels"] == 0 for row in err["rows"])  # CPU batched == CPU native, byte for byte
    summary = (out / "summary.md").read_text()
    assert "## Replay engine" in summary and "## Student training speed" in summary and "## Replay error" in summary
