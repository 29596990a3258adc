"""The GPU suite's pipeline, in its CPU smoke mode: every script runs and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
    # crop + resize alone is a part of every replay: never slower than the whole replay
    assert all(row["crop_only_views_per_s"] >= 0.8 * row["batched_views_per_s"] and row["ceiling_ratio"] > 0 for row in replay["rows"])
    build = json.loads((out / "build-ensemble.json").read_text())
    assert build["teachers"].count("resnet18") == 2 and build["build"] > 0 and build["cpu_baseline"] > 0
    speed = json.loads((out / "train-speed.json").read_text())
    assert speed["plain_images_per_s"] > 0 and speed["reinforced_images_per_s"] > 0
    err = json.loads((out / "device-error.json").read_text())
    assert all(row["max_levels"] == 0 for row in err["rows"])  # CPU batched == CPU native, byte for byte
    summary = (out / "summary.md").read_text()
    assert "## Replay engine" in summary and "## Student training speed" in summary and "## Replay error" in summary
