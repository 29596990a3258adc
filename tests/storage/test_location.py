"""A Location: a URL and the fsspec options that reach it, passed as one object."""

import os
import pickle
from pathlib import Path

import pytest

from dr import ReinforcedDataset
from dr.errors import ConfigError
from dr.storage import StoreReader
from dr.storage.lock import LOCK_NAME, StoreLock
from dr.storage.segments import segment_location
from dr.urls import Location


def test_location_joins_keeps_its_options_and_hides_their_values() -> None:
    loc = Location.of("s3://bucket/store.zarr/", {"key": "AKIA-SECRET", "endpoint_url": "http://127.0.0.1:9000"})
    seg = segment_location(loc, 2)
    assert seg.url == "s3://bucket/store.zarr/segments/2" and dict(seg.options) == dict(loc.options)
    assert seg.remote and "AKIA-SECRET" not in repr(seg) and "key" in repr(seg)
    assert loc.zarr_options() == {"storage_options": dict(loc.options)}
    with pytest.raises(TypeError):
        loc.options["key"] = "x"  # read-only: one object, shared, never edited in place
    assert pickle.loads(pickle.dumps(loc)) == loc  # travels to DataLoader workers and Ray actors


def test_location_of_paths_and_locations(tmp_path: Path) -> None:
    assert Location.of(tmp_path).url == str(tmp_path)  # a PathLike
    local = Location.of(f"file://{tmp_path}")
    assert not local.remote and local.path == str(tmp_path) and local.zarr_options() == {}
    same = Location("memory://x", {"a": 1})
    assert Location.of(same) is same
    with pytest.raises(ConfigError, match="already carries its fsspec options"):
        Location.of(same, {"a": 2})


def test_readers_take_a_location(cifar64_store: str, cifar64: Path) -> None:
    where = Location(cifar64_store)
    assert StoreReader(where).url == cifar64_store
    ds = ReinforcedDataset(where, cifar64)
    assert ds.location == where and ds.store == cifar64_store
    a, (ia, pa) = ds[3]
    b, (ib, pb) = ReinforcedDataset(cifar64_store, cifar64)[3]
    assert (a == b).all() and (ia == ib).all() and (pa == pb).all()


def test_lock_of_a_file_url_is_inside_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the lock once went to ./file:/<path>/ for a file:// store
    store = tmp_path / "s.zarr"
    lock = StoreLock(f"file://{store}")
    lock.acquire()
    try:
        assert os.path.exists(store / LOCK_NAME)  # not in a folder named "file:"
        assert lock.holder() is not None
    finally:
        lock.release()
    assert not os.path.exists(store / LOCK_NAME) and not (tmp_path / "file:").exists()
