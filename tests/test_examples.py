"""The example scripts run end to end on tiny inputs."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("baseline", [False, True])
def test_train_student_runs_a_few_steps(cifar64_store: str, cifar64: Path, tmp_path: Path, baseline: bool) -> None:
    out = tmp_path / "r.json"
    args = [
        "--store",
        cifar64_store,
        "--source",
        str(cifar64),
        "--test",
        str(cifar64),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--max-steps",
        "5",
        "--out",
        str(out),
    ]
    _load("train_student").main(args + (["--baseline"] if baseline else ["--ema", "0.9"]))
    r = json.loads(out.read_text())
    assert r["mode"] == ("baseline" if baseline else "reinforced") and r["steps"] == 5
    assert 0.0 <= r["test_top1"] <= 1.0 and r["images_per_second"] > 0
