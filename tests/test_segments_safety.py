"""Stores that grow keep their word: one test per attack of "A store never steers reads" items 3
and 4, each failing on the code before it.

3. extending a store with a copy (or symbolic links) of images it holds was accepted: now
   refused by content digest before anything is written;
4. a segment table that disagrees with the segment stores (a row set to ``building``, the
   ``segments`` group deleted, a segment header edited, a segment the table does not list)
   made the Dataset serve part of the store without a word and ``info`` exit 0: now readers
   refuse it, ``verify`` fails it and ``info`` exits 1 -- while a segment that is genuinely
   still building is left out with a WARNING naming its images.

The stores are built in-process (no Ray) except in the one test of the whole ``reinforce``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import zarr
from click.testing import CliRunner

from dr import ReinforcedDataset
from dr.audit.verify import verify_store
from dr.cli.main import cli
from dr.errors import StoreError, StoreMismatchError
from dr.storage import StoreHeader
from tests.conftest import SAMPLE
from tests.helpers import build_in_process, rehash_store


def extend_in_process(store: Path, new: Path, teacher: str, chunks: int | None = None) -> None:
    """``dr-build reinforce NEW --extend STORE`` without Ray (the driver's steps, in-process):
    plan the segment, build it (``chunks``: stop after that many), finalise and record it."""
    from dr.builder import UnitWorker
    from dr.builder.config import BuildConfig
    from dr.builder.driver import make_header
    from dr.builder.extend import extension_settings, finish_extension, plan_extension
    from dr.sources import ImageFolderSource
    from dr.storage import StoreWriter
    from dr.teachers import Ensemble

    cfg = extension_settings(BuildConfig(source=str(new), teachers=[teacher], extend=str(store)))
    source = ImageFolderSource(new)
    header = make_header(cfg, source, Ensemble.from_specs([teacher]).describe(), 10)
    ext = plan_extension(cfg, header, source)
    header = header.model_copy(update={"dataset": header.dataset.model_copy(update={"offset": ext.offset})})
    writer = StoreWriter.create(ext.url, header, source.labels())
    worker = UnitWorker(
        source,
        header.policy,
        [teacher],
        temperature=1.0,
        views=3,
        topk=3,
        seed=0,
        forward_group=header.forward_group,
        index_offset=ext.offset,
    )
    for c in range(writer.n_chunks if chunks is None else chunks):
        r = worker.compute(*writer.chunk_rows(c))
        writer.write_chunk(c, r.arrays, r.skipped)
    if chunks is None:
        writer.finalize()
        finish_extension(cfg, ext)
    else:
        writer.flush()


@pytest.fixture(scope="module")
def root(cifar64: Path, tiny_teacher: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``a`` (40 of the 64 images, 4 per class) and ``b`` (the other 24); ``base.zarr``, a store
    of ``a``, and ``grown.zarr``, the same store extended by ``b`` -- all in one folder."""
    root = tmp_path_factory.mktemp("segments")
    for cls in sorted(p for p in cifar64.iterdir() if p.is_dir()):
        for i, f in enumerate(sorted(cls.iterdir())):
            dest = root / ("a" if i < 4 else "b") / cls.name
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest / f.name)
    build_in_process(root / "a", tiny_teacher, "cifar", root / "base.zarr")
    shutil.copytree(root / "base.zarr", root / "grown.zarr")
    extend_in_process(root / "grown.zarr", root / "b", tiny_teacher)
    return root


def _copy(root: Path, name: str, tmp_path: Path) -> Path:
    """A copy of ``root/name`` in ``root`` (beside its sources), removed after the test."""
    out = root / f"{tmp_path.name}-{name}"
    shutil.copytree(root / name, out)
    return out


def _table(store: Path, edit: Callable[[list[dict]], list[dict]]) -> None:
    g = zarr.open_group(str(store / "segments"), mode="r+")
    attrs = json.loads(json.dumps(dict(g.attrs)))
    attrs["segments"] = edit(attrs["segments"])
    g.attrs.put(attrs)


def test_a_grown_store_is_whole(root: Path) -> None:
    assert len(ReinforcedDataset(root / "grown.zarr")) == 64
    checks = verify_store(str(root / "grown.zarr"))
    assert all(c.ok for c in checks) and checks[0].name == "segments" and "64 images" in checks[0].detail
    r = CliRunner().invoke(cli, ["info", str(root / "grown.zarr")])
    assert r.exit_code == 0 and "all segments 64 images served" in r.output, r.output


# 3 -- the same images twice ---------------------------------------------------------------
def test_extending_with_a_copy_or_links_of_held_images_is_refused(root: Path, tiny_teacher: str, tmp_path: Path) -> None:
    store = _copy(root, "grown.zarr", tmp_path)
    try:
        copy = tmp_path / "copy"
        shutil.copytree(root / "a", copy)  # segment 0's images, copied
        with pytest.raises(StoreMismatchError, match=r"40 of the 40 new images are already in the store .* is image \d+ of segment 0"):
            extend_in_process(store, copy, tiny_teacher)
        links = tmp_path / "links"  # 10 new images and one symbolic link to an image of segment 1
        for cls in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
            (links / cls.name).mkdir(parents=True)
            shutil.copy(sorted(cls.iterdir())[20], links / cls.name / "new.jpg")
        held = sorted((root / "b" / "cat").iterdir())[0]
        (links / "cat" / "zz.jpg").symlink_to(held)
        with pytest.raises(StoreMismatchError, match=r"1 of the 11 new images are already in the store.*zz\.jpg is image \d+ of segment 1"):
            extend_in_process(store, links, tiny_teacher)
        # refused before anything was written: no row, no segment store
        assert [r["index"] for r in zarr.open_group(str(store / "segments"), mode="r").attrs["segments"]] == [1]
        assert not (store / "segments" / "2").exists() and len(ReinforcedDataset(store)) == 64
        (links / "cat" / "zz.jpg").unlink()  # new images only: accepted
        extend_in_process(store, links, tiny_teacher)
        assert len(ReinforcedDataset(store, [None, None, str(links)])) == 74  # (links lies outside the store's folder)
    finally:
        shutil.rmtree(store)


def test_reinforce_extend_refuses_a_copy(cifar64: Path, tiny_teacher: str, ray_session, tmp_path: Path) -> None:
    """The same through ``dr-build reinforce --extend`` (the driver opens the new source)."""
    src, copy = tmp_path / "src", tmp_path / "copy"
    shutil.copytree(cifar64, src)
    shutil.copytree(cifar64, copy)
    store = str(tmp_path / "s.zarr")
    args = ["--teacher", tiny_teacher, "-q"]
    r = CliRunner().invoke(cli, ["reinforce", str(src), *args, "--policy", "cifar", "--views", "2", "--topk", "2", "--out", store])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["reinforce", str(copy), *args, "--extend", store])
    assert r.exit_code == 1 and "64 of the 64 new images are already in the store" in r.output, r.output
    assert not (tmp_path / "s.zarr" / "segments").exists()


# 4 -- a segment table that disagrees with the segment stores ----------------------------------
def _building(store: Path) -> None:
    _table(store, lambda rows: [{**rows[0], "status": "building", "completed_at": None}])


def _no_table(store: Path) -> None:
    (store / "segments" / "zarr.json").unlink()


def _no_rows(store: Path) -> None:
    _table(store, lambda rows: [])


def _count(store: Path) -> None:
    _table(store, lambda rows: [{**rows[0], "count": rows[0]["count"] - 8}])


def _resealed(store: Path) -> None:
    """The segment's seed edited, with its seal and chunk digests rewritten to match."""
    seg = store / "segments" / "1"
    g = zarr.open_group(str(seg), mode="r+")
    attrs = json.loads(json.dumps(dict(g.attrs)))
    attrs["seed"] += 1
    attrs.pop("seal")
    attrs["seal"] = StoreHeader.model_validate(attrs).compute_seal().model_dump(mode="json")
    g.attrs.put(attrs)
    rehash_store(str(seg))


DISAGREEMENTS = {
    "row set to building": (_building, "marked building in the segment table but its store is complete"),
    "segments group deleted": (_no_table, "holds segment stores .* but no segment table"),
    "table emptied": (_no_rows, "segments/1 holds a complete segment store that the segment table does not list"),
    "table count edited": (_count, "count or labels hash differs from the segment's sealed header"),
    "segment header edited and resealed": (_resealed, r"segment 1 does not extend it: seed"),
}


@pytest.mark.parametrize("case", sorted(DISAGREEMENTS))
def test_a_table_that_disagrees_with_the_segments_is_refused(root: Path, case: str, tmp_path: Path) -> None:
    edit, message = DISAGREEMENTS[case]
    store = _copy(root, "grown.zarr", tmp_path)
    try:
        edit(store)
        with pytest.raises(StoreError, match=message):  # was: 40 of the 64 images served, without a word
            ReinforcedDataset(store)
        failed = [c for c in verify_store(str(store)) if not c.ok]
        assert failed and failed[0].name == "segments" and any(re.search(message, c.detail) for c in failed)
        r = CliRunner().invoke(cli, ["verify", str(store)])
        assert r.exit_code == 1 and "FAIL  segments" in r.output, r.output
        r = CliRunner().invoke(cli, ["info", str(store)])  # was: exit 0, "64 images served"
        assert r.exit_code == 1 and "images served" not in r.output, r.output
    finally:
        shutil.rmtree(store)


def test_a_segment_still_building_is_left_out_with_a_warning(root: Path, tiny_teacher: str, tmp_path: Path, caplog) -> None:
    store = _copy(root, "base.zarr", tmp_path)
    try:
        extend_in_process(store, root / "b", tiny_teacher, chunks=0)  # planned, its store created, nothing labelled yet
        with caplog.at_level(logging.WARNING, logger="dr.storage.segments"):
            assert len(ReinforcedDataset(store)) == 40  # training goes on while the new images are labelled ...
        assert "segment 1 (24 images from" in caplog.text and "images 40-63) is still building" in caplog.text  # ... said loudly
        assert CliRunner().invoke(cli, ["info", str(store)]).exit_code == 0
    finally:
        shutil.rmtree(store)
