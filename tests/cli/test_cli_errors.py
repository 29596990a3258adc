"""Errors keep the CLI's word (issue 14, items 4, 7, 10, 11): one hierarchy, JSON under --json
even for click's own parse errors, hub failures as TeacherError, teachers recorded by absolute
paths."""

import json
import os
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dr.cli.main import cli
from dr.errors import ConfigError, DRError, PolicyError, TeacherError

REPO = Path(__file__).resolve().parents[2]
LIBRARY = [REPO / "dr", REPO / "teachers", REPO / "storage", REPO / "cli"]
TEACHER = "python:dr.teachers.zoo:cifar_resnet@examples/assets/teacher/cifar_resnet20.safetensors?depth=20&width=16"


def test_the_library_raises_only_its_own_errors() -> None:
    """Every error raised on purpose is a DRError (a builtin ValueError escaped as a traceback
    from `dr-build`); IndexError stays where Python's protocols need it (Dataset.__getitem__)."""
    bad = []
    for root in LIBRARY:
        for path in sorted(root.rglob("*.py")):
            if path.is_symlink() or any(p.is_symlink() for p in path.parents if p != REPO and REPO in p.parents):
                continue  # dr/teachers etc. are links to the top-level folders, scanned there
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"raise (ValueError|RuntimeError|TypeError|KeyError|AssertionError)\(", line):
                    bad.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not bad, "raise a dr.errors class instead:\n" + "\n".join(bad)


def test_former_builtin_errors_are_dr_errors(tmp_path: Path) -> None:
    from dr.policy import ImageBank
    from dr.policy.rng import KeyedRNG
    from dr.teachers import load_teacher
    from dr.teachers.zoo import cifar_resnet

    with pytest.raises(TeacherError, match="depth must be 6n\\+2"):
        cifar_resnet(depth=21)
    with pytest.raises(TeacherError, match=r"cifar_resnet\(depth=21\) failed|depth must be 6n\+2"):
        load_teacher(f"{TEACHER.replace('depth=20', 'depth=21')}", allow_random=True)
    with pytest.raises(TeacherError, match="bogus"):  # a factory's own TypeError names the spec's options
        load_teacher("python:dr.teachers.zoo:cifar_resnet?bogus=1", allow_random=True)
    with pytest.raises(PolicyError, match="uint8"):
        ImageBank([torch.zeros(3, 8, 8)])
    with pytest.raises(PolicyError, match="streams"):
        KeyedRNG(np.asarray([1, 2], dtype=np.uint64)).random(3)
    assert issubclass(ConfigError, ValueError)  # callers catching ValueError keep working


def test_json_for_errors_click_finds_while_parsing() -> None:
    """`--json` promised a JSON object on stdout for every error; a bad --teacher spec or a
    --precision outside its choices printed none (exit 2, empty stdout)."""
    cases = [
        (["reinforce", "x", "--teacher", "keras:x", "--out", "o.zarr", "--json"], "unknown kind 'keras'"),
        (["reinforce", "x", "--teacher", "timm:a@w", "--precision", "fp16", "--out", "o.zarr", "--json"], "'fp16' is not one of"),
    ]
    for args, text in cases:
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2, r.output
        err = json.loads(r.stdout)
        assert err["ok"] is False and err["exit_code"] == 2 and text in err["error"]
        assert text in r.stderr
    r = CliRunner().invoke(cli, ["reinforce", "x", "--teacher", "keras:x", "--out", "o.zarr"])  # without --json: text only
    assert r.exit_code == 2 and r.stdout == ""


def test_a_teacher_error_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    bad = TEACHER.replace("depth=20", "depth=21").replace("@examples", f"@{REPO}/examples")
    r = CliRunner().invoke(cli, ["teachers", "eval", bad, "--on", str(REPO / "examples/assets/cifar10-sample"), "--json"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert json.loads(r.stdout)["kind"] == "TeacherError"


def test_hub_download_failures_are_teacher_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, `torchvision:resnet18?weights=IMAGENET1K_V1` ended in a 91-line URLError traceback."""
    import timm.models._builder

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    from dr.teachers import load_teacher

    with pytest.raises(TeacherError, match=r"cannot get its hub weights \(URLError.*KIND:NAME@/path/weights"):
        load_teacher("torchvision:mobilenet_v3_small?weights=IMAGENET1K_V1")
    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(TeacherError, match=r"cannot get its hub weights \(URLError"):
        load_teacher("timm:test_resnet?pretrained=true")


def test_relative_teacher_and_class_map_files_are_recorded_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store recorded `@examples/...` as given: `verify` from another directory could not load
    the teachers (the item-7 fix covered sources only)."""
    from dr.builder import BuildConfig

    monkeypatch.chdir(REPO)
    (tmp_path / "map.json").write_text("{}")
    cfg = BuildConfig(source="data", teachers=[TEACHER], out="o.zarr", class_map=os.path.relpath(tmp_path / "map.json"))
    weights = cfg.teachers[0].split("@", 1)[1].split("?")[0]
    assert os.path.isabs(weights) and Path(weights).exists()
    assert cfg.teachers[0].endswith("?depth=20&width=16")
    assert cfg.class_map == str(tmp_path / "map.json")
    assert BuildConfig(source="d", teachers=["timm:resnet18?pretrained=true"], out="o").teachers == ("timm:resnet18?pretrained=true",)
    url = "timm:resnet18@s3://bucket/w.safetensors"
    assert BuildConfig(source="d", teachers=[url], out="o").teachers == (url,)
    prog = BuildConfig(source="d", teachers=["torchscript:m.pt?normalize=none"], out="o").teachers[0]
    assert prog == f"torchscript:{REPO / 'm.pt'}?normalize=none"
    assert isinstance(TeacherError("x"), DRError)
