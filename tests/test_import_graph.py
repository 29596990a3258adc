"""The library's import graph has no cycle: every import counts, function-level ones too (a
cycle "broken" by importing inside a function is still a cycle a reader has to hold)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dr"


def _modules() -> dict[str, Path]:
    """Every module of ``dr`` by dotted name (teachers/, storage/ and cli/ install as dr.*)."""
    out = {}
    paths = [Path(d) / f for d, _, files in os.walk(PACKAGE, followlinks=True) for f in files if f.endswith(".py")]
    for path in sorted(paths):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["dr", *parts])] = path
    return out


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The ``dr`` modules ``name`` imports (``from pkg import mod`` counts as the module)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m in known and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    modules = _modules()
    graph = {name: _imports(path, name, set(modules)) for name, path in modules.items()}
    assert "dr.sources.decode" in graph and graph["dr.sources.wds"] >= {"dr.sources.indexed", "dr.sources.spec"}
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _functions() -> list[tuple[int, str]]:
    """(lines, module:function) of every function and method of the package."""
    out = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((node.end_lineno - node.lineno + 1, f"{name}:{node.name}"))  # type: ignore[operator]
    return out


def test_no_function_is_longer_than_80_lines() -> None:
    functions = _functions()
    assert len(functions) > 300  # the walk sees the whole package, linked folders included
    assert [f for f in functions if f[0] > 80] == []


def test_no_private_name_is_imported_across_modules() -> None:
    """A name used by another module is public (or the code moves): ``from dr.x import _y``
    nowhere in the package."""
    private = [
        f"{name}: from {node.module} import {a.name}"
        for name, path in _modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dr")
        for a in node.names
        if a.name.startswith("_") and not a.name.startswith("__")
    ]
    assert private == []
