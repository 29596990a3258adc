"""Remote stores and sources on a real S3-compatible server (moto) on 127.0.0.1."""

import json
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import store_bytes

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from dr import ReinforcedDataset
from dr.audit.summary import store_summary
from dr.audit.verify import verify_store
from dr.builder import BuildConfig, reinforce
from dr.cli.main import cli
from dr.storage.lock import LOCK_NAME, StoreLockedError
from dr.urls import Location


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 for this module; yields (filesystem, storage_options)."""
    import s3fs

    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("dr-test")
    try:
        yield fs, options
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_build_resume_read_info_verify_on_s3(s3, cifar64_store: str, cifar64: Path, tiny_teacher: str) -> None:
    fs, options = s3
    fs.put(str(cifar64) + "/", "dr-test/src/", recursive=True)
    assert len(fs.find("dr-test/src")) == 64
    base = dict(
        source="s3://dr-test/src",
        teachers=[tiny_teacher],
        policy="cifar",
        views=4,
        topk=3,
        out="s3://dr-test/c.zarr",
        chunk_size=16,
        workers=1,
        storage_options=options,
    )
    first = reinforce(BuildConfig(**base, max_chunks=2), progress=False)  # an interrupted build
    assert not first.complete and first.chunks_computed == 2
    assert not fs.exists(f"dr-test/c.zarr/{LOCK_NAME}")  # released
    second = reinforce(BuildConfig(**base, resume=True), progress=False)
    assert second.complete and second.chunks_computed == 2 and second.chunks_skipped == 2
    assert store_bytes("s3://dr-test/c.zarr", storage_options=options) == store_bytes(cifar64_store)  # identical to a local-disk build
    summary = store_summary("s3://dr-test/c.zarr", storage_options=options)
    assert summary["status"] == "complete" and summary["dataset"]["location"] == "s3://dr-test/src"
    checks = verify_store("s3://dr-test/c.zarr", "s3://dr-test/src", storage_options=options)
    assert all(c.ok for c in checks), [c.detail for c in checks if not c.ok]
    # the sharded format on S3: one object per array (64 images, one shard), not one per chunk
    arrays = [p for p in fs.ls("dr-test/c.zarr/targets") + fs.ls("dr-test/c.zarr/params") if fs.isdir(p)]
    assert arrays and all(len(fs.find(f"{a}/c")) == 1 for a in arrays), {a: fs.find(f"{a}/c") for a in arrays}
    remote = ReinforcedDataset("s3://dr-test/c.zarr", "s3://dr-test/src", storage_options=options)
    local = ReinforcedDataset(cifar64_store, cifar64)
    for i in (0, 31, 63):
        a, (ia, pa) = remote[i]
        b, (ib, pb) = local[i]
        assert torch.equal(a, b) and torch.equal(ia, ib) and torch.equal(pa, pb)
    # an epoch read by chunk through the bounded cache (one chunk per process), in its own order
    bounded = ReinforcedDataset("s3://dr-test/c.zarr", "s3://dr-test/src", storage_options=options, memory_budget=0, cache_chunks=1)
    assert not bounded.in_memory
    order = list(bounded.sampler(seed=3))
    assert sorted(order) == list(range(64))
    for i in order:
        a, (ia, pa) = bounded[i]
        b, (ib, pb) = local[i]
        assert torch.equal(a, b) and torch.equal(ia, ib) and torch.equal(pa, pb)
    assert len(bounded._cache) <= 1
    # one Location (URL + options) reaches the store and the source; it travels to spawned workers
    where = Location("s3://dr-test/c.zarr", options)
    moved = pickle.loads(pickle.dumps(ReinforcedDataset(where, "s3://dr-test/src")))
    assert moved.location == where and dict(moved.location.options) == options
    a, (ia, pa) = moved[5]
    b, (ib, pb) = local[5]
    assert torch.equal(a, b) and torch.equal(ia, ib) and torch.equal(pa, pb)
    # the metadata commands take the same options on the command line
    flags = [f"--storage-option={k}={v}" for k, v in options.items()]
    info = CliRunner().invoke(cli, ["info", "s3://dr-test/c.zarr", "--json", *flags])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["dataset"]["images"] == 64
    verify = CliRunner().invoke(cli, ["verify", "s3://dr-test/c.zarr", "--source", "s3://dr-test/src", "--content", "none", *flags])
    assert verify.exit_code == 0 and "FAIL" not in verify.output, verify.output
    bare = CliRunner().invoke(cli, ["info", "s3://dr-test/c.zarr"])  # without the endpoint: no store there, said so
    assert bare.exit_code != 0


def test_lock_on_s3_refuses_a_second_writer(s3, cifar64: Path, tiny_teacher: str) -> None:
    fs, options = s3
    base = dict(
        source=str(cifar64),
        teachers=[tiny_teacher],
        policy="cifar",
        views=2,
        topk=2,
        out="s3://dr-test/locked.zarr",
        chunk_size=32,
        workers=1,
        storage_options=options,
    )
    reinforce(BuildConfig(**base, max_chunks=1), progress=False)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fs.pipe_file(
            f"dr-test/locked.zarr/{LOCK_NAME}",
            json.dumps({"host": socket.gethostname(), "pid": sleeper.pid, "started": "now", "token": "t"}).encode(),
        )
        with pytest.raises(StoreLockedError, match="another build"):
            reinforce(BuildConfig(**base, resume=True), progress=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.raises(StoreLockedError, match="stale"):
        reinforce(BuildConfig(**base, resume=True), progress=False)
    done = reinforce(BuildConfig(**base, resume=True, force=True), progress=False)
    assert done.complete and not fs.exists(f"dr-test/locked.zarr/{LOCK_NAME}")
