"""Shared fixtures: real CIFAR-10 JPEGs (the bundled sample), tiny teachers, one Ray."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "assets" / "cifar10-sample"


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


def copy_sample(dest: Path, per_class: int) -> Path:
    """Copy the first ``per_class`` JPEGs of each class of the bundled CIFAR-10 sample."""
    for cls in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
        (dest / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.iterdir())[:per_class]:
            shutil.copy(f, dest / cls.name / f.name)
    return dest


@pytest.fixture(scope="session")
def cifar64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 real CIFAR-10 JPEGs in ImageFolder layout (6-7 per class)."""
    dest = tmp_path_factory.mktemp("cifar64")
    copy_sample(dest, 7)
    # trim to exactly 64 images, deterministically (drop the last image of 6 classes)
    for cls in sorted(dest.iterdir())[:6]:
        sorted(cls.iterdir())[-1].unlink()
    return dest


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A seeded tiny CNN saved as safetensors; returns its teacher spec string."""
    from safetensors.torch import save_file

    from dr.teachers.zoo import tiny_cnn

    torch.manual_seed(1234)
    model = tiny_cnn(num_classes=10)
    path = tmp_path_factory.mktemp("teacher") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return f"python:dr.teachers.zoo:tiny_cnn@{path}"


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole suite (starting Ray costs ~5 s)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # address="local": a Ray of our own even when another program's cluster runs on this host
    # (RAY_ADDRESS, /tmp/ray/ray_current_cluster), so parallel test runs do not disturb each other
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def cifar64_store(cifar64: Path, tiny_teacher: str, ray_session, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A complete store of the 64 images: policy cifar, V=4, k=3, chunks of 16 in shards of 32
    (two objects per array), one worker."""
    from dr.builder import BuildConfig, reinforce

    out = tmp_path_factory.mktemp("store") / "cifar64.zarr"
    config = BuildConfig(
        source=str(cifar64),
        teachers=[tiny_teacher],
        policy="cifar",
        views=4,
        topk=3,
        out=str(out),
        chunk_size=16,
        shard_images=32,
        workers=1,
    )
    result = reinforce(config, progress=False)
    assert result.complete and result.chunks_computed == 4 and result.views_computed == 64 * 4
    return str(out)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n 2 --dist loadgroup`` (``make test``), every test that uses the shared
    Ray runs on one worker, so the suite still starts one Ray; the others spread over both."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ray"))
