"""The KubeRay manifest under deploy/ passes its check (also run by `make lint`), and the check
catches what it is for: unknown fields, a bad pod spec, no /dev/shm in memory, no GPU, no token."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "deploy" / "kuberay" / "rayjob.yaml"

spec = importlib.util.spec_from_file_location("check_manifests", REPO / "deploy" / "check_manifests.py")
assert spec is not None and spec.loader is not None
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def test_the_manifest_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert check.main([str(MANIFEST)]) == 0, capsys.readouterr().err
    assert check.main([]) == 0  # every deploy/**/*.yaml, as `make lint` runs it


def _worker(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]


def _no_gpu(doc: dict[str, Any]) -> None:
    del _worker(doc)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]


def _shm_on_disk(doc: dict[str, Any]) -> None:
    del _worker(doc)["volumes"][0]["emptyDir"]["medium"]


def _typo_in_pod(doc: dict[str, Any]) -> None:
    _worker(doc)["containers"][0]["volumeMount"] = _worker(doc)["containers"][0].pop("volumeMounts")


def _typo_in_rayjob(doc: dict[str, Any]) -> None:
    doc["spec"]["shutdownAfterJobFinish"] = doc["spec"].pop("shutdownAfterJobFinishes")


def _no_token(doc: dict[str, Any]) -> None:
    del doc["spec"]["rayClusterSpec"]["authOptions"]


def _private_ray(doc: dict[str, Any]) -> None:
    doc["spec"]["entrypoint"] = doc["spec"]["entrypoint"].replace("--address auto", "")


@pytest.mark.parametrize(
    "edit, message",
    [
        (_no_gpu, "has no GPU limit"),
        (_shm_on_disk, "/dev/shm must be an emptyDir volume with medium: Memory"),
        (_typo_in_pod, "volumeMount"),
        (_typo_in_rayjob, "spec.shutdownAfterJobFinish: not a field"),
        (_no_token, "authOptions.mode must be token"),
        (_private_ray, "needs --address auto"),
    ],
)
def test_the_check_catches(edit, message: str, tmp_path: Path) -> None:
    doc = copy.deepcopy(yaml.safe_load(MANIFEST.read_text()))
    edit(doc)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    problems = check.check_file(bad)
    assert any(message in p for p in problems), problems
