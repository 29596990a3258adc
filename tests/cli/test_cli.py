import json
from pathlib import Path

from click.testing import CliRunner

from dr.cli.main import cli


def test_help_teaches() -> None:
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0 and "reinforce" in r.output and "info" in r.output
    r = CliRunner().invoke(cli, ["reinforce", "--help"])
    assert r.exit_code == 0
    for text in ("--teacher", "--resume", "--address", "Teacher specs", "Examples"):
        assert text in r.output


def test_bad_teacher_spec_names_the_value(cifar64: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["reinforce", str(cifar64), "--teacher", "keras:resnet", "--out", str(tmp_path / "o.zarr")])
    assert r.exit_code != 0 and "keras" in r.output and "unknown kind" in r.output
    assert not (tmp_path / "o.zarr").exists()


def test_missing_source_names_the_path(tiny_teacher: str, tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["reinforce", str(tmp_path / "nowhere"), "--teacher", tiny_teacher, "--out", str(tmp_path / "o.zarr")])
    assert r.exit_code != 0 and "nowhere" in r.output and "does not exist" in r.output


def test_bad_policy_and_missing_weights(cifar64: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(
        cli,
        ["reinforce", str(cifar64), "--teacher", "python:dr.teachers.zoo:tiny_cnn", "--policy", "fancy", "--out", str(tmp_path / "o.zarr")],
    )
    assert r.exit_code != 0 and "'fancy'" in r.output
    r = CliRunner().invoke(
        cli,
        [
            "reinforce",
            str(cifar64),
            "--teacher",
            f"python:dr.teachers.zoo:tiny_cnn@{tmp_path}/w.safetensors",
            "--out",
            str(tmp_path / "o.zarr"),
        ],
    )
    assert r.exit_code != 0 and "w.safetensors" in r.output and "not found" in r.output


def test_reinforce_then_info(cifar64: Path, tiny_teacher: str, ray_session, tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    args = [
        "reinforce",
        str(cifar64),
        "--teacher",
        tiny_teacher,
        "--policy",
        "cifar",
        "--views",
        "2",
        "--topk",
        "2",
        "--out",
        str(out),
        "--chunk-size",
        "32",
        "-q",
    ]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "complete" in r.output and "views/s" in r.output and "dr-build info" in r.output
    r = CliRunner().invoke(cli, ["info", str(out), "--json"])
    s = json.loads(r.output)
    assert "top-1 agreement" in CliRunner().invoke(cli, ["info", str(out)]).output
    assert s["status"] == "complete" and s["dataset"]["images"] == 64 and s["views"] == 2
    assert 0 <= s["teacher_top1_agreement"] <= 1 and s["bytes_per_view"] > 0
    r = CliRunner().invoke(cli, args)
    assert r.exit_code != 0 and "already exists" in r.output
    r = CliRunner().invoke(cli, ["info", str(tmp_path / "none.zarr")])
    assert r.exit_code != 0 and "none.zarr" in r.output


def test_policies_lists_presets() -> None:
    r = CliRunner().invoke(cli, ["policies"])
    assert r.exit_code == 0 and "rrc" in r.output and "cifar" in r.output


def test_config_file_with_overrides_and_typos(cifar64: Path, tiny_teacher: str, ray_session, tmp_path: Path) -> None:
    import yaml
    import zarr

    r = CliRunner().invoke(cli, ["config", "--example"])
    assert r.exit_code == 0 and "policy:" in r.output
    example = yaml.safe_load(r.output)
    cfg = {
        "source": str(cifar64),
        "teachers": [tiny_teacher],
        "policy": "cifar",
        "views": 3,
        "topk": 2,
        "chunk_size": 32,
        "out": str(tmp_path / "from-file.zarr"),
    }
    assert set(cfg) <= set(example)
    (tmp_path / "build.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(cli, ["reinforce", "--config", str(tmp_path / "build.yaml"), "--views", "2", "-q", "--json"])
    assert r.exit_code == 0, r.output
    attrs = zarr.open_group(str(tmp_path / "from-file.zarr"), mode="r").attrs
    assert attrs["views"] == 2 and attrs["topk"] == 2  # the flag overrides the file
    assert attrs["build"]["config"]["views"] == 2 and attrs["build"]["config"]["policy"] == "cifar"
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({**cfg, "viewz": 4}))
    r = CliRunner().invoke(cli, ["reinforce", "--config", str(tmp_path / "typo.yaml")])
    assert r.exit_code != 0 and "'viewz'" in r.output and "allowed keys" in r.output and "views" in r.output
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**cfg, "views": "many"}))
    r = CliRunner().invoke(cli, ["reinforce", "--config", str(tmp_path / "bad.yaml")])
    assert r.exit_code != 0 and "views" in r.output and "many" in r.output
    r = CliRunner().invoke(cli, ["reinforce", str(cifar64)])
    assert r.exit_code != 0 and "--teacher" in r.output and "--out" in r.output
