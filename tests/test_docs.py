"""The documentation keeps its word: the README's quickstart (and the getting-started page's)
runs as written on a store of the bundled sample; every public name of ``dr``,
``dr.teachers`` and ``dr.storage`` has a Google-style docstring naming its arguments (what
the API reference renders); the README stays short."""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = ("dr", "dr.teachers", "dr.storage", "dr.storage.segments", "dr.continual")
DEMO_STORE = "runs/demo.zarr"  # what `make demo` builds and the quickstart names
DEMO_SOURCE = "examples/assets/cifar10-sample"  # the images it is built from


def _section(text: str, heading: str) -> str:
    """The Markdown under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    body = text.split(heading + "\n", 1)[1]
    stop = re.search(rf"^#{{1,{len(level)}}} ", body, flags=re.M)
    return body[: stop.start()] if stop else body


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_readme_is_short() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines: move detail to docs/"


def _quickstart(page: str, heading: str) -> str:
    blocks = _python_blocks(_section((REPO / page).read_text(), heading))
    assert len(blocks) == 1 and DEMO_STORE in blocks[0], f"{page}: one Python block naming {DEMO_STORE} under {heading!r}"
    return blocks[0]


def test_quickstart_runs_as_written(cifar64_store: str, cifar64: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python, with only the demo store's path and its source replaced by a store
    built the same way (policy ``cifar``, the bundled CIFAR-10 JPEGs; 64 images, V = 4, k = 3)."""
    code = _quickstart("README.md", "## Quickstart")
    assert DEMO_SOURCE in code  # the source is named: a store never steers a reader
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code.replace(DEMO_STORE, cifar64_store).replace(DEMO_SOURCE, str(cifar64)), "README.md", "exec"), scope)
    loss = float(scope["loss"].detach())
    assert scope["epoch"] == 1 and math.isfinite(loss) and loss > 0


def test_getting_started_trains_as_the_readme_does() -> None:
    """The getting-started page's step 3 is the README's quickstart, so the run above covers it."""
    assert _quickstart("docs/getting-started.md", "## 3. Train a student") == _quickstart("README.md", "## Quickstart")


def _public_names() -> list[tuple[str, str]]:
    return [(m, name) for m in PUBLIC_MODULES for name in importlib.import_module(m).__all__]


def _documented_names(doc: str, sections: tuple[str, ...]) -> set[str]:
    """Names listed in the Google-style ``sections`` of ``doc`` (``name: ...`` or
    ``name (type): ...`` entries, indented under the section's title)."""
    names: set[str] = set()
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() not in {f"{s}:" for s in sections}:
            continue
        indent = len(line) - len(line.lstrip())
        for entry in lines[i + 1 :]:
            if entry.strip() and len(entry) - len(entry.lstrip()) <= indent:
                break
            m = re.match(r"\s*\**(\w+)(?: \([^)]*\))?:", entry)
            if m and len(entry) - len(entry.lstrip()) == indent + 4:
                names.add(m.group(1))
    return names


def _parameters(obj: object) -> list[str]:
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in sig.parameters.values() if p.name not in ("self", "cls") and p.kind not in skip]


@functools.cache
def _griffe_module(module: str) -> Any:  # a griffe Module
    import griffe

    return griffe.load(module)


def _attribute_docstring(module: str, name: str) -> str | None:
    """A constant's docstring (the string literal after its assignment), found as the API
    reference (mkdocstrings, through griffe) finds it."""
    docstring = _griffe_module(module)[name].docstring
    return docstring.value if docstring is not None and docstring.value.strip() else None


@pytest.mark.parametrize(("module", "name"), _public_names())
def test_public_name_has_a_google_docstring(module: str, name: str) -> None:
    obj = getattr(importlib.import_module(module), name)
    where = f"{module}.{name}"
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        assert _attribute_docstring(module, name), f"{where}: add a docstring (a string literal after the assignment)"
        return
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"{where} has no docstring"
    params = _parameters(obj)
    if inspect.isclass(obj):
        init_doc = inspect.getdoc(obj.__init__) if "__init__" in vars(obj) else ""
        documented = _documented_names(doc, ("Args", "Attributes")) | _documented_names(init_doc or "", ("Args",))
    else:
        documented = _documented_names(doc, ("Args",))
        returns = inspect.signature(obj).return_annotation
        if returns not in (None, "None", inspect.Signature.empty):
            assert re.search(r"^Returns:$", doc, flags=re.M), f"{where}: its docstring needs a Returns: section"
    missing = [p for p in params if p not in documented]
    assert not missing, f"{where}: the docstring's Args: section does not name {missing}"
