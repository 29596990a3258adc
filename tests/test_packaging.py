"""The distribution installs one top-level package, ``dr`` (issue 14, item 12)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_installs_only_the_dr_namespace(tmp_path: Path) -> None:
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)], check=True
    )
    (wheel,) = wheels.glob("*.whl")
    assert wheel.name.startswith("dr_reinforce-")
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"dr", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, tops
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True)
    # imported from the installed copy only (run outside the checkout, the target first on the path)
    code = "import dr, dr.teachers, dr.storage, dr.cli.main, dr.teachers.zoo; print(dr.teachers.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith(str(target))
    for name in ("teachers", "storage", "cli"):
        gone = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True)
        assert gone.returncode != 0, f"a top-level {name!r} package is installed"


def test_v01_specs_naming_top_level_helpers_still_load() -> None:
    from dr.teachers import Ensemble

    spec = f"python:teachers.zoo:cifar_resnet@{REPO}/examples/assets/teacher/cifar_resnet20.safetensors?depth=20&width=16"
    assert len(Ensemble.from_specs([spec]).members) == 1


def _third_party_imports() -> set[str]:
    """Top-level modules the installed package imports (dr/ and the folders it links in)."""
    import ast
    import sys

    found: set[str] = set()
    for folder in ("dr", "teachers", "storage", "cli"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                found.update(n.split(".")[0] for n in names)
    return {m for m in found if m != "dr" and m not in sys.stdlib_module_names}


def test_setup_cfg_requirements_are_the_imports() -> None:
    """Every third-party import has a requirement (fsspec: the ``remote`` extra, imported only
    for URLs), and every requirement is imported -- but safetensors, which timm's checkpoint
    reader needs for the ``.safetensors`` weights dr's teachers load."""
    import configparser
    import re

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    name = lambda line: re.split(r"[\[<>=!~ ]", line.strip(), maxsplit=1)[0].lower()  # noqa: E731
    required = {name(x) for x in cfg["options"]["install_requires"].splitlines() if x.strip()}
    remote = {name(x) for x in cfg["options.extras_require"]["remote"].splitlines() if x.strip()}
    module_of = {"pillow": "PIL", "pyyaml": "yaml"}
    imported = _third_party_imports()
    assert imported - {module_of.get(r, r) for r in required | remote} == set()
    assert {module_of.get(r, r) for r in required} - imported == {"safetensors"}
    assert "ray[default]" in cfg["options"]["install_requires"]  # the job server; Ray Data is not used
    assert not any("matplotlib" in v for k, v in cfg["options.extras_require"].items())  # a core dependency, once
