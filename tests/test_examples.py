"""The example scripts run end to end on tiny inputs."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
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


SHARED = REPO.parent / "shared" / "data" / "cifar10"


@pytest.mark.skipif(not (SHARED / "train.tar.gz").exists(), reason="needs ../shared/data/cifar10")
@pytest.mark.slow
def test_cifar10plus_quick_pipeline_and_cache(ray_session, tmp_path: Path) -> None:
    mod = _load("cifar10plus")
    work = tmp_path / "q"
    mod.main(["all", "--data", str(SHARED), "--workdir", str(work), "--quick", "--quiet"])
    runs = sorted((work / "students").glob("*.json"))
    conditions = ("plain", "plain-strong", "reinforced:cifar", "reinforced:cifar+ra/re", "kd")
    assert len(runs) == len(conditions) * 2  # five conditions x two budgets x one seed
    results = json.loads((work / "results.json").read_text())
    assert set(results["summary"]) == {f"{c}@{e}" for c in conditions for e in (1, 3)}
    assert len(results["teachers"]) == 3 and (work / "accuracy.png").stat().st_size > 1000
    rec = results["runs"][0]
    assert set(rec) == {"condition", "store_policy", "epochs", "seed", "test_top1", "ece", "train_seconds", "images_per_second"}
    assert {r["store_policy"] for r in results["runs"]} == {None, "cifar", "cifar+ra/re"}
    assert "| reinforced:cifar+ra/re |" in (work / "results.md").read_text()
    assert "students: 10 runs in the protocol, 10 to do" in (work / "timings.log").read_text()
    # the calibration study: each store's reinforced run again per variant, kept out of the main table
    variants = sorted(p.name for p in (work / "students" / "calibration").glob("*.json"))
    assert variants == sorted(f"reinforced-{s}-e1-s0-{v}.json" for s in ("cifar", "cifar+ra-re") for v in ("hard0.5", "sharpen0.5"))
    assert len(results["calibration"]) == 10 + 4  # every main run's diagnostics and the variants
    cal = results["calibration"][-1]["calibration"]
    assert 0 < cal["mean_confidence"] <= 1 and cal["temperature_fit"] > 0 and cal["ece_odd_half_at_fitted_t"] >= 0
    assert "| reinforced:cifar sharpen=0.5 E=1 seed=0 |" in (work / "results.md").read_text()
    assert (work / "students" / "kd-e3-s0.safetensors").stat().st_size > 1000
    stamps = {p: p.stat().st_mtime_ns for p in runs + sorted((work / "teachers").glob("*"))}
    mod.main(["all", "--data", str(SHARED), "--workdir", str(work), "--quick", "--quiet"])  # everything cached
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_cifar10plus_run_filters_name_the_protocols_choices(tmp_path: Path) -> None:
    mod = _load("cifar10plus")
    with pytest.raises(SystemExit, match=r"budgets \[1, 3\]"):
        mod.main(["students", "--quick", "--workdir", str(tmp_path), "--epochs", "2"])
    with pytest.raises(SystemExit, match="not a condition of protocol 'quick'"):
        mod.main(["students", "--quick", "--workdir", str(tmp_path), "--only", "distill"])
    assert not (tmp_path / "students").exists()  # nothing trained


TIN = REPO.parent / "shared" / "data" / "tinyimagenet100"


@pytest.mark.skipif(not (TIN / "train.tar.gz").exists(), reason="needs ../shared/data/tinyimagenet100")
@pytest.mark.slow
def test_families_quick_pipeline_and_cache(ray_session, tmp_path: Path) -> None:
    """The ImageNet-path protocol end to end on 400 Tiny-ImageNet-100 images: tiny teachers,
    two rrc stores at k = 3 of 100 classes and a dense one, three student families, the k study."""
    mod = _load("families")
    work = tmp_path / "q"
    mod.main(["all", "--workdir", str(work), "--quick", "--quiet"])
    log = (work / "timings.log").read_text()
    assert "students: 13 runs, 13 to do, projected" in log and "k study: 2 runs, 2 to do" in log
    results = json.loads((work / "results.json").read_text())
    assert {(r["family"], r["condition"]) for r in results["runs"] if not r.get("kstudy")} == {
        (f, c) for f in ("resnet", "mobile", "vit") for c in ("plain", "plain-strong", "reinforced:rrc", "reinforced:rrc+ra/re")
    } | {("resnet", "kd")}
    rec = next(r for r in results["runs"] if r["condition"] == "reinforced:rrc" and r["family"] == "vit")
    assert rec["k"] == 3 and rec["store_policy"] == "rrc" and len(rec["curve"]) == 1 and 0 <= rec["test_top1"] <= 1
    assert [k["k"] for k in results["kstudy"]] == [1, 100]
    assert results["kstudy"][0]["target_bytes_per_view"] < results["kstudy"][1]["target_bytes_per_view"]
    assert {(s["policy"], s["topk"]) for s in results["stores"]} == {("rrc", 3), ("rrc+ra/re", 3), ("rrc", 100)}
    assert all((work / f"accuracy-{f}.png").stat().st_size > 1000 for f in ("resnet", "mobile", "vit"))
    assert "### k study" in (work / "results.md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in sorted((work / "students").glob("*.json"))}
    mod.main(["students", "--workdir", str(work), "--quick", "--quiet"])  # everything cached
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # multi-scale variable-batch training (dr.multiscale) next to its fixed-size twins
    mod.main(
        [
            "students",
            "--workdir",
            str(work),
            "--quick",
            "--quiet",
            "--multiscale",
            "--family",
            "resnet",
            "--condition",
            "plain,reinforced:rrc",
        ]
    )
    fixed = ["students", "--workdir", str(work), "--quick", "--quiet", "--multiscale", "--ms-batch", "fixed", "--family", "resnet"]
    mod.main([*fixed, "--condition", "reinforced:rrc"])  # progressive resizing: the batch kept at every size
    mod.main(["report", "--workdir", str(work), "--quick", "--quiet"])
    msb = json.loads((work / "students" / "resnet-reinforced-rrc-msb-e1-s0.json").read_text())
    assert msb["ms_batch"] == "fixed" and msb["train_images"] == 400
    ms = json.loads((work / "students" / "resnet-reinforced-rrc-ms-e1-s0.json").read_text())
    assert ms["multiscale"] and len(ms["pixels_per_epoch"]) == 1 and ms["pixels_per_epoch"][0] != ms["train_images"] * 64 * 64
    rows = json.loads((work / "results.json").read_text())["multiscale"]
    assert {r["condition"] for r in rows} == {"plain", "reinforced:rrc"} and all(0.3 < r["pixels_ratio"] < 1.3 for r in rows)
    assert sorted(r["batch_rule"] for r in rows) == ["fixed", "pixels", "pixels"]
    assert "### multi-scale" in (work / "results.md").read_text()
