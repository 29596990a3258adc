"""Issue 14 end to end: class checks and maps, pre-flight, the agreement guard, random
teachers (refused, or seeded and verifiable), per-teacher preprocessing in `info`."""

import json
import shutil
from pathlib import Path

import pytest
import zarr
from click.testing import CliRunner

from dr.audit.verify import verify_store
from dr.builder import BuildConfig, reinforce
from dr.cli.main import cli
from dr.errors import TeacherError

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "assets" / "cifar10-sample"
DEMO = f"python:dr.teachers.zoo:cifar_resnet@{REPO}/examples/assets/teacher/cifar_resnet20.safetensors?depth=20&width=16"


@pytest.fixture(scope="module")
def bird_cat_dog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issue's dataset: 3 of CIFAR-10's classes (8 real images each), a 10-class teacher."""
    root = tmp_path_factory.mktemp("bcd")
    for cls in ("bird", "cat", "dog"):
        (root / cls).mkdir()
        for f in sorted((SAMPLE / cls).iterdir())[:8]:
            shutil.copy(f, root / cls / f.name)
    return root


def _reinforce(source: Path, out: Path, *extra: str) -> object:
    args = ["reinforce", str(source), "--teacher", DEMO, "--policy", "cifar", "--views", "2", "--topk", "2"]
    return CliRunner().invoke(cli, [*args, "--chunk-size", "8", "--out", str(out), "-q", *extra])


def test_fewer_dataset_classes_than_teacher_classes_need_a_class_map(bird_cat_dog: Path, ray_session, tmp_path: Path) -> None:
    out = tmp_path / "bcd.zarr"
    r = _reinforce(bird_cat_dog, out)  # was: exit 0, ids of the 10-class space, `show` failing later
    assert r.exit_code != 0 and "(bird, cat, dog)" in r.output and "--class-map names" in r.output, r.output
    assert not out.exists()
    r = _reinforce(bird_cat_dog, out, "--class-map", "names", "--eval-on", str(bird_cat_dog))
    assert r.exit_code == 0, r.output
    assert "teachers on" in r.output and "ensemble" in r.output  # the pre-flight table
    attrs = zarr.open_group(str(out), mode="r").attrs
    assert attrs["num_classes"] == 3 and attrs["ensemble"]["teacher_classes"][2] == "bird"
    assert attrs["ensemble"]["class_map"]["teacher_to_dataset"][:6] == [-1, -1, 0, 1, -1, 2]
    assert int(zarr.open_group(str(out), mode="r")["targets/ids"][:].max()) < 3
    info = CliRunner().invoke(cli, ["info", str(out)]).output
    assert "class map    names: 10 teacher classes -> 3 dataset classes" in info
    assert "[0] input 32x32 bilinear, mean 0.4914,0.4822,0.4465 std 0.247,0.2435,0.2616 (pretrained_cfg)" in info
    assert "classes from card" in info and "WARNING" not in info
    v = CliRunner().invoke(cli, ["verify", str(out), "--source", str(bird_cat_dog)])
    assert v.exit_code == 0 and "PASS  labels" in v.output, v.output
    s = CliRunner().invoke(cli, ["show", str(out), "--source", str(bird_cat_dog), "--index", "20", "--out", str(tmp_path / "v.png")])
    assert s.exit_code == 0 and (tmp_path / "v.png").is_file(), s.output
    s = CliRunner().invoke(cli, ["show", str(out), "--index", "99", "--out", str(tmp_path / "v.png")])
    assert s.exit_code != 0 and "--index 99 is out of range" in s.output


def test_teachers_eval_prints_each_teachers_top1(bird_cat_dog: Path) -> None:
    r = CliRunner().invoke(cli, ["teachers", "eval", DEMO, DEMO + "&weight=2", "--on", str(bird_cat_dog), "--class-map", "names", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["images"] == 24 and report["classes"] == 3 and len(report["teachers"]) == 2
    assert report["ensemble_top1"] > 0.6 and report["teachers"][0]["top1"] == report["ensemble_top1"]
    r = CliRunner().invoke(cli, ["teachers", "eval", DEMO, "--on", str(bird_cat_dog)])
    assert r.exit_code != 0 and "--class-map names" in r.output


def test_a_wrong_class_map_is_stopped_by_the_preflight_the_guard_and_verify(bird_cat_dog: Path, ray_session, tmp_path: Path) -> None:
    (tmp_path / "map.json").write_text(json.dumps({"bird": "cat", "cat": "dog", "dog": "bird"}))  # permuted
    bad = ["--class-map", str(tmp_path / "map.json")]
    # the pre-flight stops it before anything is built
    r = _reinforce(bird_cat_dog, tmp_path / "never.zarr", *bad, "--eval-on", str(bird_cat_dog))
    assert r.exit_code != 0 and "pre-flight" in r.output and "class order" in r.output and not (tmp_path / "never.zarr").exists()
    # the guard stops the build after the first chunk (8 images here; 512 by default)
    out = tmp_path / "bad.zarr"
    cfg = dict(source=str(bird_cat_dog), teachers=[DEMO], policy="cifar", views=2, topk=2, chunk_size=8, workers=1, out=str(out))
    with pytest.raises(
        TeacherError, match=r"stopped: .* over the first (8|16) images.*below 66.67%.*class order.*--min-agreement 0 --resume"
    ):
        reinforce(BuildConfig(**cfg, class_map=bad[1], agreement_check_images=8), progress=False)
    assert zarr.open_group(str(out), mode="r").attrs["status"] == "building"  # chunks kept: resumable
    done = reinforce(BuildConfig(**cfg, class_map=bad[1], agreement_check_images=8, min_agreement=0, resume=True), progress=False)
    assert done.complete
    # verify fails a store whose class map collapsed agreement (min_agreement 0 only silenced the guard)
    v = CliRunner().invoke(cli, ["verify", str(out), "--source", str(bird_cat_dog)])
    assert "FAIL  labels" in v.output and "collapsed with class map file" in v.output and v.exit_code != 0, v.output
    assert "WARNING: top-1 agreement is below 66.67%" in CliRunner().invoke(cli, ["info", str(out)]).output


def test_random_teachers_are_refused_or_seeded_and_verifiable(cifar64: Path, ray_session, tmp_path: Path) -> None:
    cfg = dict(source=str(cifar64), teachers=["python:dr.teachers.zoo:tiny_cnn"], policy="cifar", views=2, topk=2, chunk_size=32, workers=1)
    with pytest.raises(TeacherError, match="has no weights.*--allow-random-teachers"):
        reinforce(BuildConfig(**cfg, out=str(tmp_path / "r.zarr")), progress=False)
    result = reinforce(BuildConfig(**cfg, out=str(tmp_path / "r.zarr"), allow_random_teachers=True, seed=7), progress=False)
    assert result.complete and result.header.ensemble["teachers"][0]["init_seed"] == 7
    checks = {
        c.name: c for c in verify_store(str(tmp_path / "r.zarr"), cifar64, trust_store_teachers=True)
    }  # was: 0.00 % agreement (unseeded rebuild)
    assert checks["replay"].ok and checks["replay"].figures["top1_agreement"] == 1.0, checks["replay"].detail
    assert checks["labels"].ok and "not judged (random teachers)" in checks["labels"].detail
    assert "RANDOM init, seed 7" in CliRunner().invoke(cli, ["info", str(tmp_path / "r.zarr")]).output
