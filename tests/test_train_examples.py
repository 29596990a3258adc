"""Training where users train: the training guide's snippet as written (docs/how-to/training.md), examples/train_timm.py (timm's
factories) and examples/train_ray.py (Ray Train, 2 CPU ranks, disjoint epoch parts, resume),
on a 200-image store of the bundled CIFAR-10 sample."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import copy_sample

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def store200(tiny_teacher: str, ray_session, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """200 JPEGs (20 per class) in the training guide's layout: data/cifar10/train and cifar10+.zarr."""
    from dr.builder import BuildConfig, reinforce

    root = tmp_path_factory.mktemp("readme")
    src = copy_sample(root / "data" / "cifar10" / "train", 20)
    out = root / "cifar10+.zarr"
    # the test teacher is a random network: the agreement guard would stop it (rightly)
    config = BuildConfig(
        source=str(src), teachers=[tiny_teacher], policy="cifar", views=2, topk=3, out=str(out), chunk_size=64, workers=1, min_agreement=0
    )
    assert reinforce(config, progress=False).complete
    return root, out


def test_training_guide_snippet_runs_as_written(store200: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    text = (REPO / "docs" / "how-to" / "training.md").read_text()
    section = text.split("## Plain PyTorch", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    monkeypatch.chdir(store200[0])
    scope: dict = {}
    exec(compile(block, "docs/how-to/training.md", "exec"), scope)
    assert scope["epoch"] == 1 and float(scope["loss"].detach()) > 0


def test_train_timm_example(store200: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = ["--store", str(store200[1]), "--model", "resnet10t", "--img-size", "32", "--epochs", "1", "--batch-size", "50"]
    r = _load("train_timm").main(args + ["--workers", "0", "--opt", "adamw", "--lr", "1e-3", "--warmup-epochs", "0", "--out", str(out)])
    assert r["history"][0]["images"] == 200 and r["history"][0]["loss"] > 0
    assert json.loads(out.read_text())["model"] == "resnet10t"


@pytest.mark.slow
def test_train_ray_example_splits_epochs_and_resumes(store200: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # the controller polls its workers (default every 2 s)
    mod = _load("train_ray")
    rec = tmp_path / "rec"
    rec.mkdir()
    base = ["--store", str(store200[1]), "--model", "resnet10t", "--img-size", "32", "--batch-size", "50", "--workers", "0"]
    base += ["--num-workers", "2", "--cpus-per-worker", "0.5", "--run-dir", str(tmp_path / "runs"), "--name", "t", "--record-dir", str(rec)]
    # a rank crashes after epoch 0's checkpoint: Ray Train restarts the group, which resumes from it
    r = mod.main(base + ["--epochs", "2", "--max-failures", "1", "--fail-after-epoch", "0"])
    assert r["error"] is None and r["metrics"]["epoch"] == 1 and r["metrics"]["resumed_from"] == 1 and r["checkpoint"]
    for epoch in (0, 1):
        ranks = [json.loads((rec / f"rank{k}-epoch{epoch}.json").read_text()) for k in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == 100 and sorted(ranks[0] + ranks[1]) == list(range(200))  # disjoint halves
    state = torch.load(Path(r["checkpoint"]) / "state.pt", weights_only=True)
    assert state["epoch"] == 1 and "model" in state and "optimizer" in state
