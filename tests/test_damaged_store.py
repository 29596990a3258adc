"""Readers refuse what they cannot trust: damaged chunks and the wrong source folder."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dr import ReinforcedDataset
from dr.errors import StoreDamagedError, StoreMismatchError
from dr.replay import DeviceReplay


def _damaged_copy(store: str, tmp_path: Path, how: str) -> Path:
    """A copy of the 64-image store (4 chunks of 16, shards of 32) with the second shard of
    targets/probs (chunks 2 and 3) damaged."""
    out = tmp_path / f"{how}.zarr"
    shutil.copytree(store, out)
    f = out / "targets" / "probs" / "c" / "1" / "0" / "0"
    assert sorted(p.name for p in f.parent.parent.parent.iterdir()) == ["0", "1"]  # one object per shard
    if how == "deleted":
        f.unlink()
    else:
        f.write_bytes(f.read_bytes()[:100])
    return out


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_dataset_refuses_rows_of_a_damaged_chunk(cifar64_store: str, cifar64: Path, tmp_path: Path, how: str) -> None:
    out = _damaged_copy(cifar64_store, tmp_path, how)
    for kw in ({}, {"dense": "smooth"}, {"memory_budget": 0}):
        ds = ReinforcedDataset(out, cifar64, verify_source="none", **kw)
        _, target = ds[3]  # chunk 0 is fine
        with pytest.raises(StoreDamagedError, match=r"targets/probs chunk 2 \(images 32-47\).*--resume --repair") as e:
            ds[40]
        assert ("missing" if how == "deleted" else "unreadable") in str(e.value)
        ds[20]  # chunk 1, in the first shard, is fine too
    replay = DeviceReplay(str(out), cifar64, verify_source="none")
    replay.batch(np.arange(8), 0)
    with pytest.raises(StoreDamagedError, match="targets/probs chunk 2"):
        replay.batch(np.arange(30, 40), 0)


def test_device_replay_checks_its_source(cifar64_store: str, cifar64: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(cifar64, other)
    victim = sorted((other / "dog").iterdir())[0]
    Image.open(victim).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(victim, quality=90)
    with pytest.raises(StoreMismatchError, match="content of 1 of 64 checked images differs.*dog"):
        DeviceReplay(cifar64_store, other, verify_source="all")
    victim.unlink()
    with pytest.raises(StoreMismatchError, match="63 images vs 64"):
        DeviceReplay(cifar64_store, other)


def test_incomplete_store_hint_names_what_the_dataset_accepts(cifar64_store: str, cifar64: Path, tmp_path: Path) -> None:
    import zarr

    from dr.errors import StoreIncompleteError

    out = tmp_path / "building.zarr"
    shutil.copytree(cifar64_store, out)
    zarr.open_group(str(out), mode="r+").update_attributes({"status": "building"})
    with pytest.raises(StoreIncompleteError, match="--resume") as e:
        ReinforcedDataset(out, cifar64)
    assert "allow_incomplete" not in str(e.value)
