"""The teacher pre-flight is one word, "eval": ``dr-build teachers eval``, ``--eval-on`` and
``--eval-images`` (``dr.builder.teacher_eval``). The settings' old names (``check_on``,
``check_images``; ``--check-on``, ``--check-images``) still work for one release, with a
DeprecationWarning, and no longer show in ``--help``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from dr.builder.config import BuildConfig, load_config_file
from dr.cli.main import cli
from dr.errors import ConfigError

BASE = {"source": "src", "teachers": ["timm:resnet18@w.safetensors"], "out": "o.zarr"}


def test_the_old_setting_names_still_work_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning) as warned:
        config = BuildConfig(**BASE, check_on="val", check_images=7)
    assert (config.eval_on, config.eval_images) == ("val", 7)
    assert [str(w.message).split(":")[0] for w in warned] == [
        "build setting 'check_on' is now 'eval_on' (--eval-on)",
        "build setting 'check_images' is now 'eval_images' (--eval-images)",
    ]
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump({**BASE, "check_on": "val", "check_images": 9}))
    with pytest.warns(DeprecationWarning):
        from_file = load_config_file(path, {"eval_images": 11})  # a flag beats the file's key, old name or new
    assert (from_file.eval_on, from_file.eval_images) == ("val", 11)


def test_the_old_flags_are_hidden_aliases(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import dr.builder

    seen: list = []

    def recorded(config: BuildConfig, **kwargs: object) -> None:
        seen.append(config)
        raise ConfigError("recorded: nothing is built")

    monkeypatch.setattr(dr.builder, "reinforce", recorded)
    help_text = CliRunner().invoke(cli, ["reinforce", "--help"]).output
    assert "--eval-on" in help_text and "--eval-images" in help_text and "--check-on" not in help_text
    args = ["reinforce", "src", "--teacher", "timm:resnet18@w.safetensors", "--out", str(tmp_path / "o.zarr")]
    CliRunner().invoke(cli, [*args, "--eval-on", "val", "--eval-images", "5"])
    assert (seen[-1].eval_on, seen[-1].eval_images) == ("val", 5)
    with pytest.warns(DeprecationWarning):
        CliRunner().invoke(cli, [*args, "--check-on", "val", "--check-images", "5"])
    assert (seen[-1].eval_on, seen[-1].eval_images) == ("val", 5)
    CliRunner().invoke(cli, args)
    assert (seen[-1].eval_on, seen[-1].eval_images) == (None, 1000)
