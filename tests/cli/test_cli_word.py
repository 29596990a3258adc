"""The CLI keeps its word (issue 14, items 8-10): every flag the README and the documentation
(docs/) name exists, every config field is a flag, config files report every problem, exit
codes and JSON errors mean what the documentation says."""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
import zarr
from click.testing import CliRunner

from dr.cli.main import CLI_ONLY_FLAGS, EXIT_RESUMABLE, cli

REPO = Path(__file__).resolve().parents[2]
README = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))])  # what users read


def _command_path(words: list[str]) -> list[str]:
    """``dr-build teachers eval X`` -> ["teachers", "eval"]: the (sub)command a line runs."""
    import click

    group: click.Command = cli
    path: list[str] = []
    for word in words[1:]:
        if not isinstance(group, click.Group) or word not in group.commands:
            break
        group = group.commands[word]
        path.append(word)
    return path


def _help_flags(*command: str) -> set[str]:
    """The options a command's --help lists (its option column, not its prose)."""
    r = CliRunner().invoke(cli, [*command, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    return set(re.findall(r"^\s{2}(?:-\w, )?(--[a-z][a-z0-9-]*)", r.output, flags=re.M))


def _readme_commands() -> list[str]:
    """Every `dr-build ...` command line of the README (code blocks, continuations joined, and
    inline code spans)."""
    joined = re.sub(r"\\\n\s*", " ", README)
    lines = [m.group(1) for m in re.finditer(r"^\s*(?:\$ )?(dr-build [^\n`]*)", joined, flags=re.M)]
    return lines + re.findall(r"`(dr-build [^`]+)`", joined)


def test_every_flag_the_readme_names_is_in_help() -> None:
    commands = _readme_commands()
    assert len(commands) > 10
    seen: set[str] = set()
    for line in commands:
        path = _command_path(line.split())
        assert path or line.split()[1].startswith("-"), f"README: `{line}` runs no dr-build command"
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line))
        missing = flags - _help_flags(*path)
        command = " ".join(path)
        assert not missing, f"README: `{line}` names {sorted(missing)}, not in `dr-build {command} --help`"
        seen |= {f"{command} {f}" for f in flags}
    assert "reinforce --precision" in seen and "reinforce --compile" in seen


def test_the_readme_options_table_is_reinforces_help() -> None:
    section = README.split("## `dr-build reinforce` options", 1)[1].split("\n#", 1)[0]  # docs/reference/config.md
    documented = set(re.findall(r"^\| `(--[a-z][a-z0-9-]*)", section, flags=re.M))
    assert documented == _help_flags("reinforce") - {"--help"}


def test_every_config_field_is_a_flag_an_example_line_and_a_docs_row() -> None:
    """Settings are declared once (BuildConfig's fields): the flags, the example and the
    reference page are generated from them, and the page in docs/ is the generated one."""
    from dr.builder.config import EXAMPLE_CONFIG, BuildConfig, config_reference, flag_of

    flags = _help_flags("reinforce")
    helptext = " ".join(CliRunner().invoke(cli, ["reinforce", "--help"]).output.split())
    page = (REPO / "docs" / "reference" / "config.md").read_text()
    assert config_reference() in page, "docs/reference/config.md is stale: run `python -m dr.builder.config docs/reference/config.md`"
    for name, field in BuildConfig.model_fields.items():
        flag = flag_of(name)
        assert flag == "SOURCE" or flag in flags, f"BuildConfig.{name} has no flag {flag}"
        assert re.search(rf"^#? ?{name}:", EXAMPLE_CONFIG, flags=re.M), f"`dr-build config` omits {name}"
        assert f"| `{name}` |" in page, f"docs/reference/config.md has no row for {name}"
        assert field.description and (flag == "SOURCE" or " ".join(field.description.split()) in helptext), f"--help lacks {name}'s help"
    assert flags - {"--help"} == {flag_of(n) for n in BuildConfig.model_fields if flag_of(n) != "SOURCE"} | set(CLI_ONLY_FLAGS)
    # one bound per setting: the flag refuses what the config refuses, with the same numbers
    r = CliRunner().invoke(cli, ["reinforce", "src", "--teacher", "timm:x@w.safetensors", "--out", "o", "--topk", "1001"])
    assert r.exit_code == 2 and "1<=x<=1000" in r.output


def _fake_build(monkeypatch: pytest.MonkeyPatch, status: str = "complete", error: Exception | None = None) -> list:
    """Replace the build with a recorder (flag parsing and printing are what is tested)."""
    import dr.builder
    from dr.builder.driver import BuildResult

    seen: list = []

    def fake(config, **kwargs):
        seen.append(config)
        if error is not None:
            raise error
        header = type("H", (), {"status": status, "dataset": type("D", (), {"count": 64})(), "views": 2})()
        done = 4 if status == "complete" else 1
        return BuildResult(header, config.out, 4, done, 0, done * 32, 1.0, ["host:node:cpu"], 0.5)

    monkeypatch.setattr(dr.builder, "reinforce", fake)
    return seen


def test_precision_and_compile_reach_the_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = _fake_build(monkeypatch)
    args = ["reinforce", "src", "--teacher", "timm:resnet18@w.safetensors", "--out", str(tmp_path / "o.zarr")]
    r = CliRunner().invoke(cli, [*args, "--precision", "fp32", "--compile", "--max-retries", "5", "--start-timeout", "30"])
    assert r.exit_code == 0, r.output
    assert (seen[0].precision, seen[0].compile, seen[0].max_retries, seen[0].start_timeout) == ("fp32", True, 5, 30.0)
    r = CliRunner().invoke(cli, [*args, "--precision", "fp16"])
    assert r.exit_code == 2 and "fp16" in r.output


def test_config_file_reports_every_problem_with_suggestions(tmp_path: Path) -> None:
    bad = {"source": "data", "teacher": ["timm:resnet18@w.safetensors"], "veiws": 4, "topk": "many", "chunk_size": 0, "colour": "red"}
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump(bad))
    r = CliRunner().invoke(cli, ["reinforce", "--config", str(path), "--out", str(tmp_path / "o.zarr")])
    assert r.exit_code == 2  # bad usage, as the README's exit-code table says (it was 1)
    out = r.output
    assert "5 problem(s)" in out
    assert "unknown key 'teacher' (did you mean 'teachers'?)" in out
    assert "unknown key 'veiws' (did you mean 'views'?)" in out
    assert "unknown key 'colour'" in out and "'colour' (did you mean" not in out
    assert "topk:" in out and "'many'" in out and "chunk_size:" in out
    assert "teachers: missing" not in out  # the misspelt key already says so
    assert "allowed keys:" in out


def test_config_alone_prints_the_example() -> None:
    from dr.builder.config import EXAMPLE_CONFIG

    r = CliRunner().invoke(cli, ["config"])
    assert r.exit_code == 0 and r.output == EXAMPLE_CONFIG
    assert CliRunner().invoke(cli, ["config", "--example"]).output == EXAMPLE_CONFIG


def test_policy_help_lists_every_preset() -> None:
    from dr.policy import list_policies

    r = CliRunner().invoke(cli, ["reinforce", "--help"], terminal_width=400)
    line = next(x for x in r.output.splitlines() if x.strip().startswith("--policy"))
    for name in list_policies():
        assert re.search(rf"(?<![\w+/]){re.escape(name)}(?![\w+/])", line), (name, line)


def test_incomplete_build_exits_resumable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_build(monkeypatch, status="building")
    args = ["reinforce", "src", "--teacher", "timm:resnet18@w.safetensors", "--out", str(tmp_path / "o.zarr"), "--max-chunks", "1"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == EXIT_RESUMABLE == 3
    assert "building:" in r.stdout and "3 of 4 chunk(s) left" in r.stderr and "--resume" in r.stderr
    r = CliRunner().invoke(cli, [*args, "--json"])
    assert r.exit_code == EXIT_RESUMABLE and json.loads(r.stdout)["status"] == "building"


def test_json_errors_are_json_on_stdout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dr.errors import SourceError

    _fake_build(monkeypatch, error=SourceError("source 'nowhere' does not exist"))
    r = CliRunner().invoke(cli, ["reinforce", "nowhere", "--teacher", "timm:resnet18@w.safetensors", "--out", "o.zarr", "--json"])
    assert r.exit_code == 1
    assert json.loads(r.stdout) == {"ok": False, "error": "source 'nowhere' does not exist", "kind": "SourceError", "exit_code": 1}
    assert "Error: source 'nowhere' does not exist" in r.stderr
    r = CliRunner().invoke(cli, ["reinforce", "--json"])  # usage errors too
    assert r.exit_code == 2 and json.loads(r.stdout)["ok"] is False and "missing SOURCE" in r.stdout
    r = CliRunner().invoke(cli, ["info", str(tmp_path / "none.zarr"), "--json"])
    assert r.exit_code == 1 and json.loads(r.stdout)["ok"] is False


def test_info_on_a_building_store_names_the_flag(cifar64_store: str, tmp_path: Path) -> None:
    building = tmp_path / "building.zarr"
    shutil.copytree(cifar64_store, building)
    zarr.open_group(str(building), mode="r+").attrs["status"] = "building"  # what --max-chunks leaves
    r = CliRunner().invoke(cli, ["info", str(building)])
    assert r.exit_code == 1 and "--allow-incomplete" in r.output and "allow_incomplete=True" not in r.output
    assert CliRunner().invoke(cli, ["info", str(building), "--allow-incomplete"]).exit_code == 0


def test_verify_never_prints_a_negative_kl(cifar64_store: str, cifar64: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-computed probabilities a hair above the stored ones on the top-k (what float16 rounding
    the stored ones down does): the KL over the top-k alone went negative (-3.17e-06 was
    printed); over the top-k plus the rest it is a true divergence, >= 0."""
    from dr.audit.verify import format_report, verify_store
    from dr.teachers import Ensemble

    forward = Ensemble.forward
    monkeypatch.setattr(Ensemble, "forward", lambda self, views: forward(self, views) * 1.001)
    checks = verify_store(cifar64_store, cifar64, fraction=1.0, content="none", trust_store_teachers=True)
    replay = next((c for c in checks if c.name == "replay"), None)
    assert replay is not None, [(c.name, c.ok, c.detail) for c in checks]
    assert replay.figures["mean_kl"] >= 0 and "mean KL -" not in format_report(cifar64_store, checks)


def test_show_title_and_tiles_agree(cifar64_store: str, cifar64: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from dr.audit.show import draw_views

    titles: list[str] = []
    tiles: list[str] = []
    monkeypatch.setattr(Figure, "suptitle", lambda self, t, **kw: titles.append(t))
    real_set_title = Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda self, t, *a, **kw: (tiles.append(t), real_set_title(self, t, *a, **kw))[1])
    for topn in (2, 3):  # fewer labels than the store's top-k too (the title said top-5 over top-3 tiles)
        titles.clear()
        tiles.clear()
        draw_views(cifar64_store, cifar64, 0, tmp_path / "v.png", max_views=2, topn=topn)
        shown = int(re.search(r"top-(\d+) labels shown", titles[0]).group(1))
        views = [t for t in tiles if t.startswith("view ")]
        assert shown == topn
        assert views and all(len(t.splitlines()) - 1 == shown for t in views), (titles, views)


def test_workers_lost_after_chunks_exit_resumable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dr.errors import WorkerStartError

    lost = WorkerStartError("no teacher worker could start: 1 attempt(s) failed; 3 chunk(s) written before are kept")
    lost.chunks_written, lost.workers_started = 3, 1
    _fake_build(monkeypatch, error=lost)
    args = ["reinforce", "src", "--teacher", "timm:resnet18@w.safetensors", "--out", str(tmp_path / "o.zarr")]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == EXIT_RESUMABLE and "3 chunk(s) written before are kept" in r.output and "exit code 3" in r.output
    r = CliRunner().invoke(cli, [*args, "--json"])
    assert r.exit_code == EXIT_RESUMABLE and json.loads(r.stdout)["kind"] == "WorkerStartError"
    never = WorkerStartError("no teacher worker started within 2s")
    _fake_build(monkeypatch, error=never)
    assert CliRunner().invoke(cli, args).exit_code == 1  # nothing written: an error
