"""The store format, declared once (storage/layout.py) and kept three ways: version 3 (dr 0.2's),
sharded with uint8 probabilities, and with derived parameters checked against their digests."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from helpers import build_in_process

from dr import ReinforcedDataset
from dr.audit.verify import format_report, verify_store
from dr.errors import SamplerVersionError, StoreDamagedError
from dr.replay import DeviceReplay
from dr.storage.layout import PROBS_MAX_ERROR

REPO = Path(__file__).resolve().parents[1]
ARRAY_PREFIXES = ("params/", "targets/", "source/", "build/")


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def test_no_array_path_or_stored_dtype_is_spelled_outside_the_layout() -> None:
    """Changing the format means changing storage/layout.py: no other module of the package
    spells an array path, or the probabilities' dtype outside a type annotation."""
    found = []
    for root in ("dr", "teachers", "storage", "cli"):
        for path in sorted((REPO / root).rglob("*.py")):
            if path.is_symlink() or any(p.is_symlink() for p in path.parents if REPO in p.parents):
                continue
            rel = path.relative_to(REPO)
            if rel == Path("storage/layout.py"):
                continue
            tree = ast.parse(path.read_text())
            parents = _parents(tree)
            for node in ast.walk(tree):
                if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
                    continue
                text = node.value
                if text.startswith(ARRAY_PREFIXES) and "/" in text.split(" ")[0]:
                    found.append(f"{rel}:{node.lineno}: {text!r}")
                elif text == "float16" and rel.parts[:2] != ("dr", "policy"):
                    up = parents.get(node)
                    while up is not None and not isinstance(up, ast.Subscript):
                        up = parents.get(up)
                    if not (isinstance(up, ast.Subscript) and getattr(up.value, "id", "") == "Literal"):
                        found.append(f"{rel}:{node.lineno}: {text!r}")
    assert found == [], "spell these through dr.storage.layout:\n" + "\n".join(found)


@pytest.fixture(scope="module")
def twins(cifar64: Path, tiny_teacher: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One build of the mixing policy in three layouts: version 3, sharded uint8, derived."""
    root = tmp_path_factory.mktemp("twins")
    layouts = {
        "v3": dict(shard_images=0),
        "uint8": dict(shard_images=32, probs_dtype="uint8"),
        "derived": dict(shard_images=64, params="derived"),
    }
    return {name: build_in_process(cifar64, tiny_teacher, "cifar+mix", root / f"{name}.zarr", **kw) for name, kw in layouts.items()}


def test_the_layouts_serve_the_same_views_and_targets(twins: dict[str, str], cifar64: Path) -> None:
    g = {name: zarr.open_group(url, mode="r") for name, url in twins.items()}
    assert g["v3"].attrs["schema_version"] == 3 and "layout" not in g["v3"].attrs  # dr 0.2 reads it
    assert g["derived"].attrs["layout"]["params"] == "derived" and "params" not in g["derived"]  # not stored
    assert g["uint8"]["targets/probs"].dtype == np.uint8 and g["uint8"]["targets/ids"].dtype == np.uint8
    readers = {name: ReinforcedDataset(url, cifar64, transform=lambda v: v, verify_source="none") for name, url in twins.items()}
    for epoch in (0, 2):
        for ds in readers.values():
            ds.set_epoch(epoch)
        for i in (0, 17, 40, 63):
            (v3, (ids3, p3)), (u8, (ids8, p8)), (dv, (idsd, pd)) = (readers[n][i] for n in ("v3", "uint8", "derived"))
            assert torch.equal(v3, u8) and torch.equal(v3, dv)  # mixed views included: partners re-derived too
            assert torch.equal(ids3, ids8) and torch.equal(ids3, idsd) and torch.equal(p3, pd)
            assert float((p3 - p8).abs().max()) <= PROBS_MAX_ERROR["uint8"] + PROBS_MAX_ERROR["float16"]
    rep = DeviceReplay(twins["derived"], cifar64, verify_source="none")
    views, (ids, probs) = rep.batch(np.arange(64), 1)
    readers["v3"].set_epoch(1)
    assert torch.equal(views, torch.stack([readers["v3"][i][0] for i in range(64)]))
    report = format_report(twins["derived"], verify_store(twins["derived"], cifar64))
    assert report.endswith("OK: the store is complete and sound in every check that ran (replay skipped: see SKIP)")
    assert "re-derived with the keyed sampler" in report


def test_a_drifted_sampler_is_refused(twins: dict[str, str], cifar64: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dr.views.SAMPLER_VERSION", 2)  # another sampler version: refused by name on open
    with pytest.raises(SamplerVersionError, match="version 1 of dr's keyed sampler, and this dr has version 2"):
        ReinforcedDataset(twins["derived"], cifar64)
    monkeypatch.undo()
    from dr.policy import Policy

    real = Policy.chunk_params

    def drifted(self, *args, **kwargs):  # the same version number, other parameters: the digests tell
        params = real(self, *args, **kwargs)
        params["flip"] = 1 - params["flip"]
        return params

    monkeypatch.setattr(Policy, "chunk_params", drifted)
    ds = ReinforcedDataset(twins["derived"], cifar64, verify_source="none")
    with pytest.raises(StoreDamagedError, match="re-derived parameters differ from the digests"):
        ds[0]
    failed = [c for c in verify_store(twins["derived"], cifar64) if not c.ok]
    assert failed and "re-derived parameters differ" in failed[0].detail
