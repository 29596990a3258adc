"""Stores that grow (``dr-build reinforce NEW --extend STORE``) and continual replay: an
extended store holds what a one-shot build over all its images holds, refuses what it cannot
be, resumes, verifies and repairs per segment; readers serve its segments as one dataset."""

from __future__ import annotations

import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from dr.builder import BuildConfig, reinforce
from dr.errors import ConfigError, StoreDamagedError, StoreMismatchError

CHUNK = 16


@pytest.fixture(scope="module")
def lists(cifar64: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The 64 real CIFAR-10 JPEGs in a seeded order, as ``list:`` sources: ``a40``/``b24``
    (40 + 24, the first segment ends mid-chunk), ``a48``/``b16`` (48 + 16, on a chunk
    boundary), ``all`` (the 64 in the same order) and ``other`` (8 of them, for refusals)."""
    from dr.sources import ImageFolderSource

    src = ImageFolderSource(str(cifar64))
    rows = [(src.describe(i), int(src.labels()[i])) for i in np.random.default_rng(0).permutation(len(src))]
    out = tmp_path_factory.mktemp("lists")
    names = ",".join(src.classes)

    def write(name: str, part: list[tuple[str, int]], classes: str = names) -> str:
        path = out / f"{name}.csv"
        path.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in part))
        return f"list:{path}?classes={classes}"

    return {
        "a40": write("a40", rows[:40]),
        "b24": write("b24", rows[40:]),
        "a48": write("a48", rows[:48]),
        "b16": write("b16", rows[48:]),
        "all": write("all", rows),
        "other": write("other", rows[40:48]),
        "renamed": write("renamed", rows[40:48], ",".join(reversed(src.classes))),
    }


def _config(source: str, teacher: str, out: str, policy: str = "cifar") -> BuildConfig:
    return BuildConfig(source=source, teachers=[teacher], policy=policy, views=4, topk=3, chunk_size=CHUNK, workers=1, out=out)


def _arrays(group_url: str) -> dict[str, np.ndarray]:
    """Every data array of a store read as one (segments concatenated)."""
    from dr.storage import StoreReader
    from dr.storage.segments import SegmentedStore, has_segments

    reader = SegmentedStore(group_url) if has_segments(group_url) else StoreReader(group_url)
    paths = [p for p in StoreReader(group_url).arrays() if not p.startswith("build/")]
    rows, problems = reader.load_checked(paths)
    assert not problems
    return rows


@pytest.fixture(scope="module")
def grown(lists: dict[str, str], tiny_teacher: str, ray_session, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store of ``a40`` extended by ``b24`` (policy cifar)."""
    store = str(tmp_path_factory.mktemp("grown") / "s.zarr")
    assert reinforce(_config(lists["a40"], tiny_teacher, store), progress=False).complete
    assert reinforce(BuildConfig(source=lists["b24"], teachers=[tiny_teacher], extend=store), progress=False).complete
    return store


def _root_files(store: str) -> dict[str, bytes]:
    """Every file of segment 0 (the root store), by path."""
    root = Path(store)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and "segments" not in p.parts}


def _same_as_one_shot(store: str, one: str, first: int) -> None:
    grown, whole = _arrays(store), _arrays(one)
    assert set(grown) == set(whole) and len(grown["source/labels"]) == 64
    for path in whole:  # the same values, byte for byte, including mixing partners and targets
        np.testing.assert_array_equal(grown[path], whole[path], err_msg=path)
    table = zarr.open_group(f"{store}/segments", mode="r").attrs.asdict()["segments"]
    assert [(r["index"], r["offset"], r["count"], r["status"]) for r in table] == [(1, first, 64 - first, "complete")]

    from dr import ReinforcedDataset

    grown_ds, whole_ds = ReinforcedDataset(store, trust_store_location=True), ReinforcedDataset(one, trust_store_location=True)
    assert len(grown_ds) == len(whole_ds) == 64
    for epoch in (0, 3):
        grown_ds.set_epoch(epoch), whole_ds.set_epoch(epoch)
        for item in (0, first - 1, first, 63):
            (x1, (i1, p1)), (x2, (i2, p2)) = grown_ds[item], whole_ds[item]
            assert torch.equal(x1, x2) and torch.equal(i1, i2) and torch.equal(p1, p2)


def test_extension_of_a_mixing_policy_equals_one_shot_build(lists: dict[str, str], tiny_teacher: str, ray_session, tmp_path: Path) -> None:
    """48 + 16 images (the first segment ends on a chunk boundary), policy cifar+mix+ra/re."""
    store, one = str(tmp_path / "grown.zarr"), str(tmp_path / "one.zarr")
    policy = "cifar+mix+ra/re"
    assert reinforce(_config(lists["a48"], tiny_teacher, store, policy), progress=False).complete
    before = _root_files(store)
    result = reinforce(BuildConfig(source=lists["b16"], teachers=[tiny_teacher], extend=store), progress=False)
    # the extension labelled the new images only, and never rewrote a file of the store it extends
    assert result.complete and result.views_computed == 16 * 4 and result.out == store
    assert _root_files(store) == before and "offset" not in zarr.open_group(store, mode="r").attrs["dataset"]
    assert reinforce(_config(lists["all"], tiny_teacher, one, policy), progress=False).complete
    _same_as_one_shot(store, one, 48)


def test_extension_mid_chunk_equals_one_shot_build(grown: str, lists: dict[str, str], tiny_teacher: str, tmp_path: Path) -> None:
    """40 + 24 images (the first segment ends mid-chunk), policy cifar (no mixing)."""
    one = str(tmp_path / "one.zarr")
    assert reinforce(_config(lists["all"], tiny_teacher, one), progress=False).complete
    _same_as_one_shot(grown, one, 40)


def test_refusals_name_the_difference(grown: str, lists: dict[str, str], tiny_teacher: str, tmp_path: Path) -> None:
    from dr.teachers.zoo import tiny_cnn

    def extend(source: str, teacher: str = tiny_teacher, **kw: object) -> None:
        reinforce(BuildConfig(source=source, teachers=[teacher], extend=grown, **kw), progress=False)

    with pytest.raises(ConfigError, match=r"--views 5 \(the store has 4\)"):
        extend(lists["other"], views=5)
    with pytest.raises(ConfigError, match=r"--policy 'rrc' \(the store has 'cifar'\)"):
        extend(lists["other"], policy="rrc")
    with pytest.raises(StoreMismatchError, match="already in the store \\(segment 1\\)"):
        extend(lists["b24"])
    torch.manual_seed(99)  # other weights: the teachers are checked by their weights' digest
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tiny_cnn(num_classes=10).state_dict().items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(StoreMismatchError, match=r"ensemble\.teachers\[0\]\.weights_sha256"):
        extend(lists["other"], f"python:dr.teachers.zoo:tiny_cnn@{tmp_path / 'other.safetensors'}")
    with pytest.raises(StoreMismatchError, match="classes: the extension's classes must start with the store's 10 class names"):
        extend(lists["renamed"])
    # nothing was added by any refusal
    assert [r["index"] for r in zarr.open_group(f"{grown}/segments", mode="r").attrs["segments"]] == [1]

    from cli.main import cli

    res = CliRunner().invoke(cli, ["reinforce", lists["other"], "--extend", grown, "--teacher", tiny_teacher, "--topk", "2"])
    assert res.exit_code == 2 and "--topk 2 (the store has 3)" in res.output


def test_interrupted_extension_resumes(grown: str, lists: dict[str, str], tiny_teacher: str, tmp_path: Path) -> None:
    from dr import ReinforcedDataset

    store = str(tmp_path / "s.zarr")
    shutil.copytree(grown, store)
    shutil.rmtree(f"{store}/segments")  # the store as first built: 40 images
    first = reinforce(BuildConfig(source=lists["b24"], teachers=[tiny_teacher], extend=store, max_chunks=1), progress=False)
    assert not first.complete and first.chunks_computed == 1
    assert len(ReinforcedDataset(store, trust_store_location=True)) == 40  # an unfinished segment is not served; the store stays usable
    with pytest.raises(StoreMismatchError, match="still building: add --resume"):
        reinforce(BuildConfig(source=lists["b24"], teachers=[tiny_teacher], extend=store), progress=False)
    with pytest.raises(StoreMismatchError, match="segment 1 .* is still building; finish it first"):
        reinforce(BuildConfig(source=lists["other"], teachers=[tiny_teacher], extend=store, resume=True), progress=False)
    done = reinforce(BuildConfig(source=lists["b24"], teachers=[tiny_teacher], extend=store, resume=True), progress=False)
    assert done.complete and done.chunks_computed == 1 and done.chunks_skipped == 1
    resumed, straight = _arrays(store), _arrays(grown)
    for path in straight:
        np.testing.assert_array_equal(resumed[path], straight[path], err_msg=path)


def test_killed_extension_resumes(grown: str, lists: dict[str, str], tiny_teacher: str, tmp_path: Path, caplog) -> None:
    """SIGKILL of the build's process right after the extension's first chunk is written:
    --resume takes over the lock the dead build left on this host (saying so) and finishes the
    same segment."""
    store = str(tmp_path / "s.zarr")
    shutil.copytree(grown, store)
    shutil.rmtree(f"{store}/segments")
    program = (
        "import os, signal\n"
        "from dr.builder import BuildConfig, reinforce\n"
        f"config = BuildConfig(source={lists['b24']!r}, teachers=[{tiny_teacher!r}], extend={store!r}, workers=1, write_interval=0)\n"
        "reinforce(config, progress=False, on_chunk=lambda c: os.kill(os.getpid(), signal.SIGKILL))\n"
    )
    killed = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    table = zarr.open_group(f"{store}/segments", mode="r").attrs["segments"]
    assert [r["status"] for r in table] == ["building"]
    config = BuildConfig(source=lists["b24"], teachers=[tiny_teacher], extend=store, resume=True)
    with caplog.at_level("WARNING", logger="dr.storage.lock"):
        done = reinforce(config, progress=False)
    assert done.complete and done.chunks_skipped == 1 and done.chunks_computed == 1
    assert "taking over the writer lock" in caplog.text and "no longer running (same boot)" in caplog.text
    resumed, straight = _arrays(store), _arrays(grown)
    for path in straight:
        np.testing.assert_array_equal(resumed[path], straight[path], err_msg=path)


def test_verify_and_repair_per_segment(grown: str, lists: dict[str, str], tiny_teacher: str, tmp_path: Path) -> None:
    from dr import ReinforcedDataset
    from dr.audit.verify import verify_store

    store = str(tmp_path / "s.zarr")
    shutil.copytree(grown, store)
    checks = verify_store(store, teachers=[tiny_teacher], trust_store_location=True)
    assert all(c.ok for c in checks) and sum(c.name == "replay" for c in checks) == 2
    # damage one chunk of the extension's targets: segment 1's local chunk 0 = global images 40-55
    arr = zarr.open_array(f"{store}/segments/1/targets/probs", mode="r+")
    arr[0:4] = np.zeros((4, 4, 3), dtype=np.float16)
    failed = [c for c in verify_store(store, trust_store_location=True) if not c.ok]
    assert failed and all(c.detail.startswith("segment 1:") for c in failed)
    ds = ReinforcedDataset(store, trust_store_location=True)
    assert ds[39] is not None and ds[56] is not None  # sound chunks are served
    with pytest.raises(StoreDamagedError, match="segments/1/targets/probs chunk 3"):
        ds[45]
    spawned = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker gets
    assert spawned[56] is not None
    with pytest.raises(StoreDamagedError, match="segments/1/targets/probs chunk 3"):
        spawned[45]
    fixed = reinforce(BuildConfig(source=lists["b24"], teachers=[tiny_teacher], extend=store, resume=True, repair=True), progress=False)
    assert fixed.complete and fixed.chunks_computed == 1
    assert all(c.ok for c in verify_store(store, trust_store_location=True))


def test_segment_selection(grown: str, lists: dict[str, str]) -> None:
    from dr import ReinforcedDataset
    from dr.replay import DeviceReplay

    new = ReinforcedDataset(grown, segments=[1], trust_store_location=True)
    assert len(new) == 24 and set(new.segment_ids.tolist()) == {1} and new.indices.min() == 40
    every = ReinforcedDataset(grown, trust_store_location=True)
    assert every.segment_ids.tolist() == [0] * 40 + [1] * 24
    replay = DeviceReplay(grown, segments=[1], trust_store_location=True)
    views, (ids, probs) = replay.batch(np.arange(24), 2)
    for item in (0, 23):  # the same views and targets as the Dataset's, at the same global index
        new.set_epoch(2)
        x, (i, p) = new[item]
        assert torch.allclose(views[item].float() / 255, x) and torch.equal(ids[item], i) and torch.allclose(probs[item], p)
    with pytest.raises(ConfigError, match="complete segments \\[0, 1\\]"):
        ReinforcedDataset(grown, segments=[2], trust_store_location=True)
    with pytest.raises(ConfigError, match="one source per segment"):
        ReinforcedDataset(grown, lists["a40"])
    # one source per segment, given explicitly (here: the recorded ones)
    assert len(ReinforcedDataset(grown, [lists["a40"], None], trust_store_location=True)) == 64


def test_replay_mix_sampler() -> None:
    from dr import RehearsalSampler

    seg = np.asarray([0] * 100 + [1] * 30)
    s = RehearsalSampler(seg, new_fraction=0.25, seed=3)
    assert len(s) == 120  # every new item once per epoch: 30 new / 0.25
    seen_old: list[int] = []
    for epoch in range(3):
        s.set_epoch(epoch)
        items = np.asarray(list(s))
        new, old = items[items >= 100], items[items < 100]
        assert sorted(new.tolist()) == list(range(100, 130)) and len(old) == 90
        seen_old += old.tolist()
        again = RehearsalSampler(seg, new_fraction=0.25, seed=3)
        again.set_epoch(epoch)
        assert list(again) == items.tolist()  # a pure function of (seed, epoch)
    # old items cycle through passes: every old item once per pass of 100 draws (90 per epoch)
    for epoch in range(3, 10):
        s.set_epoch(epoch)
        seen_old += [i for i in s if i < 100]
    assert np.bincount(seen_old, minlength=100).tolist() == [9] * 100
    ranks = [RehearsalSampler(seg, new_fraction=0.25, seed=3, num_replicas=4, rank=r) for r in range(4)]
    split = [list(r) for r in ranks]
    assert all(len(x) == 30 for x in split) and sorted(sum(split, [])) == sorted(ranks[0].epoch_items().tolist())
    with pytest.raises(ConfigError, match="new_fraction=0"):
        RehearsalSampler(seg, new_fraction=0)
    with pytest.raises(ConfigError, match="every item is in"):
        RehearsalSampler(np.ones(5, dtype=np.int64), new_fraction=0.5)
    # dr 0.2's name still works for a release, and says what to use
    from dr.continual import ReplayMixSampler

    with pytest.warns(DeprecationWarning, match="RehearsalSampler"):
        old = ReplayMixSampler(seg, new_fraction=0.25, seed=3)
    assert list(old) == list(RehearsalSampler(seg, new_fraction=0.25, seed=3))
