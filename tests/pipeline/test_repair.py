"""Damaged stores: verify names every bad chunk, info reports it, --repair recomputes it; the
resume key holds the teachers' resolved math; source locations are absolute."""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from helpers import rehash_store, store_bytes

from dr.audit.summary import format_summary, store_summary
from dr.audit.verify import format_report, verify_store
from dr.builder import BuildConfig, reinforce
from dr.cli.main import cli
from dr.errors import ConfigError, StoreMismatchError

ALL_ARRAYS = ("params/crop_box", "params/flip", "targets/ids", "targets/probs", "source/labels", "source/sizes", "source/digests")


def _config(src: Path, teacher: str, out: Path, **kw) -> BuildConfig:
    base = dict(source=str(src), teachers=[teacher], policy="cifar", views=4, topk=3, out=str(out), chunk_size=16, seed=0, workers=1)
    base.update(kw)
    return BuildConfig(**base)


def _chunk_file(store: Path, array: str, chunk: int) -> Path:
    """The object holding a chunk of an unsharded store (or shard ``chunk`` of a sharded one)."""
    return store.joinpath(*array.split("/"), "c", str(chunk), "0", "0")


def test_verify_info_and_repair_of_damaged_chunks(cifar64: Path, tiny_teacher: str, ray_session, tmp_path: Path) -> None:
    """An unsharded (version-3) store: one object per chunk, each damaged on its own."""
    reference = tmp_path / "v3.zarr"
    reinforce(_config(cifar64, tiny_teacher, reference, shard_images=0), progress=False)
    assert zarr.open_group(str(reference), mode="r").attrs["schema_version"] == 3  # dr 0.2's layout, written as version 3
    broken = tmp_path / "broken.zarr"
    shutil.copytree(reference, broken)
    _chunk_file(broken, "targets/probs", 1).unlink()
    _chunk_file(broken, "targets/ids", 3).unlink()
    f = _chunk_file(broken, "targets/ids", 2)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated (ids compress to ~70 bytes)

    checks = verify_store(str(broken), cifar64)
    report = format_report(str(broken), checks)
    assert "OK" not in report and report.endswith("FAILED: see the lines marked FAIL")
    assert "FAIL  chunk     targets/probs chunk 1 (images 16-31): missing" in report
    assert "FAIL  chunk     targets/ids chunk 2 (images 32-47): unreadable (RuntimeError: Zstd decompression error" in report
    assert "FAIL  chunk     targets/ids chunk 3 (images 48-63): missing" in report
    assert "--resume --repair" in report and checks[-1].figures["damaged_chunks"] == [1, 2, 3]
    r = CliRunner().invoke(cli, ["verify", str(broken), "--source", str(cifar64), "--json"])
    assert r.exit_code == 1 and not isinstance(r.exception, RuntimeError) and json.loads(r.output)["ok"] is False

    s = store_summary(str(broken))
    assert s["chunks"]["damaged"] == [1, 2, 3] and len(s["damaged"]) == 3
    assert "3 DAMAGED: [1, 2, 3]" in format_summary(s) and "skipped      0 image(s)" in format_summary(s)

    with pytest.raises(ConfigError, match="--repair.*--resume"):
        reinforce(_config(cifar64, tiny_teacher, broken, repair=True), progress=False)
    result = reinforce(_config(cifar64, tiny_teacher, broken, resume=True, repair=True, shard_images=0), progress=False)
    assert result.complete and result.chunks_computed == 3 and result.chunks_skipped == 1
    assert store_bytes(str(broken), ALL_ARRAYS) == store_bytes(str(reference), ALL_ARRAYS)
    assert all(c.ok for c in verify_store(str(broken), cifar64)), format_report(str(broken), verify_store(str(broken), cifar64))


def test_repair_rewrites_a_damaged_shard(cifar64_store: str, cifar64: Path, tiny_teacher: str, tmp_path: Path) -> None:
    """A sharded store (chunks of 16 in shards of 32): a shard gone or torn loses its two chunks;
    verify names both, --resume --repair deletes the torn object and rewrites the shard."""
    broken = tmp_path / "broken.zarr"
    shutil.copytree(cifar64_store, broken)
    _chunk_file(broken, "targets/probs", 0).unlink()  # shard 0: chunks 0 and 1
    f = _chunk_file(broken, "targets/ids", 1)  # shard 1: chunks 2 and 3
    f.write_bytes(f.read_bytes()[:-9])  # torn: its index (and checksum) no longer read
    checks = verify_store(str(broken), cifar64)
    report = format_report(str(broken), checks)
    assert "FAIL  chunk     targets/probs chunk 0 (images 0-15): missing" in report
    assert "FAIL  chunk     targets/probs chunk 1 (images 16-31): missing" in report
    assert "FAIL  chunk     targets/ids chunk 3 (images 48-63): unreadable" in report
    assert checks[-1].figures["damaged_chunks"] == [0, 1, 2, 3]
    result = reinforce(_config(cifar64, tiny_teacher, broken, resume=True, repair=True, shard_images=32), progress=False)
    assert result.complete and result.chunks_computed == 4
    assert store_bytes(str(broken), ALL_ARRAYS) == store_bytes(cifar64_store, ALL_ARRAYS)
    assert all(c.ok for c in verify_store(str(broken), cifar64))


def test_replay_check_fails_beyond_its_tolerance(cifar64_store: str, cifar64: Path, tmp_path: Path) -> None:
    scaled = tmp_path / "scaled.zarr"
    shutil.copytree(cifar64_store, scaled)
    g = zarr.open_group(str(scaled), mode="r+")
    probs = np.asarray(g["targets/probs"][:])
    probs[5, 2] = (probs[5, 2].astype(np.float32) * 0.5).astype(np.float16)  # one view's label halved
    g["targets/probs"][:] = probs
    failed = {c.name for c in verify_store(str(scaled), cifar64) if not c.ok}
    assert failed == {"chunk", "chunks"}  # the digests catch an edit first
    rehash_store(str(scaled))
    # still sorted and in range, same top-1, a small mean KL over 256 views: only |dp| tells
    replay = next(c for c in verify_store(str(scaled), cifar64, fraction=1.0, trust_store_teachers=True) if c.name == "replay")
    assert not replay.ok and replay.figures["top1_agreement"] == 1.0 and replay.figures["mean_kl"] <= 0.01
    assert replay.figures["max_dp_tolerance"] == 0.01 and replay.figures["max_abs_prob_diff"] > 0.03
    assert "(<= 0.01)" in replay.detail
    assert all(c.ok for c in verify_store(str(scaled), cifar64, fraction=1.0, max_dp=0.9, trust_store_teachers=True))


def test_resume_key_holds_the_teachers_math_and_locations_are_absolute(
    cifar64: Path, tiny_teacher: str, ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dr import ReinforcedDataset
    from dr.builder import ray_runtime

    monkeypatch.chdir(cifar64.parent)
    out = tmp_path / "rel.zarr"
    result = reinforce(_config(Path(cifar64.name), tiny_teacher, out, chunk_size=32), progress=False)
    h = result.header
    assert h.dataset.location == str(cifar64) and os.path.isabs(h.dataset.location)  # given as a relative path
    assert {k: h.ensemble[k] for k in ("precision", "device", "compile")} == {"precision": "fp32", "device": "cpu", "compile": False}
    with pytest.raises(StoreMismatchError, match="ensemble"):
        reinforce(_config(cifar64, tiny_teacher, out, chunk_size=32, resume=True, compile=True), progress=False)
    # `auto` resumed where the workers would run on CUDA (bf16): refused, not mixed
    real = ray_runtime.worker_shape
    monkeypatch.setattr(ray_runtime, "worker_shape", lambda ray, config: dataclasses.replace(real(ray, config), device="cuda"))
    with pytest.raises(StoreMismatchError, match="ensemble"):
        reinforce(_config(cifar64, tiny_teacher, out, chunk_size=32, resume=True), progress=False)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)  # the recorded (absolute) location works from anywhere, for a reader told to follow it
    assert len(ReinforcedDataset(str(out), trust_store_location=True)) == 64
    assert all(c.ok for c in verify_store(str(out), fraction=0.0, min_views=8, trust_store_location=True))
    # the key holds the weights' digest, not where the file lies: the same weights elsewhere
    # (another checkout, a relative spelling) resume; other weights do not
    weights = tiny_teacher.split("@", 1)[1].split("?")[0]
    moved = tmp_path / "elsewhere" / "tiny.safetensors"
    moved.parent.mkdir()
    shutil.copy(weights, moved)
    again = reinforce(_config(cifar64, tiny_teacher.replace(weights, str(moved)), out, chunk_size=32, resume=True), progress=False)
    assert again.complete and again.chunks_computed == 0
    from safetensors.torch import load_file, save_file

    state = load_file(str(moved))
    first = next(iter(state))
    state[first] = state[first] + 1
    save_file(state, str(moved))
    with pytest.raises(StoreMismatchError, match="ensemble"):
        reinforce(_config(cifar64, tiny_teacher.replace(weights, str(moved)), out, chunk_size=32, resume=True), progress=False)
