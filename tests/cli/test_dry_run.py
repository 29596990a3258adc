"""`dr-build reinforce ... --dry-run`: the plan, the projection from a timed unit, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from dr.cli.main import cli


def test_dry_run_plans_times_and_writes_nothing(cifar64: Path, tiny_teacher: str, ray_session, tmp_path: Path) -> None:
    out = tmp_path / "never.zarr"
    args = ["reinforce", str(cifar64), "--teacher", tiny_teacher, "--policy", "cifar", "--views", "4", "--topk", "3"]
    args += ["--chunk-size", "16", "--out", str(out), "--dry-run"]
    r = CliRunner().invoke(cli, args + ["--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output.strip().splitlines()[-1])
    assert (plan["images"], plan["chunks"], plan["views"], plan["topk"]) == (64, 4, 256, 3)
    # cifar policy: crop_box 4 x int16 + flip uint8 = 9 B, top-3 x (uint8 id: 10 classes + float16 prob) = 9 B
    assert plan["bytes_per_view_raw"] == 18 and plan["store_bytes_raw"] == 64 * 4 * 18 + 64 * 29
    assert plan["timed"] and plan["unit_images"] == 16 and plan["views_per_s_per_worker"] > 0
    assert 0 < plan["bytes_per_view_compressed"] < 21 and plan["projected_wall_s"] > 0
    assert plan["device"] == "cpu" and plan["projected_gpu_hours"] == 0
    assert not out.exists() and not list(tmp_path.iterdir())
    from dr.builder.dryrun import DryRun, format_dry_run

    text = format_dry_run(DryRun(**plan))  # what the command prints without --json
    assert "projected" in text and "GPU-hours" in text and "nothing was written" in text
