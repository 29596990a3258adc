"""Every student run in a committed results JSON describes itself: no two runs of one file
share every descriptive field (family, condition, recipe, epochs, seed, k, multi-scale, store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MEASURED = {"test_top1", "ece", "train_seconds", "images_per_second", "curve", "epoch_seconds", "pixels_per_epoch", "load_average_1_5_15"}
FILES = sorted(
    p
    for p in [*(REPO / "bench" / "results").glob("*.json"), *(REPO / "examples" / "results").glob("*/results.json")]
    if any("condition" in r for r in json.loads(p.read_text()).get("runs", []) if isinstance(r, dict))
)


def test_there_are_student_results_to_check() -> None:
    assert len(FILES) >= 4, FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_two_runs_share_every_descriptive_field(path: Path) -> None:
    seen: dict[str, float] = {}
    for run in json.loads(path.read_text())["runs"]:
        key = json.dumps({k: v for k, v in run.items() if k not in MEASURED}, sort_keys=True)
        assert key not in seen, f"{path.name}: two runs no field tells apart: {key} (top-1 {seen[key]} and {run.get('test_top1')})"
        seen[key] = run.get("test_top1")
