"""Crash safety: kills and resume, dead workers, the writer lock, bad images, verify, fuzzing."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import rehash_store, store_bytes
from PIL import Image

from dr.audit.verify import verify_store
from dr.builder import BuildConfig, reinforce
from dr.errors import BadImageError, DRError, PolicyError, StoreError
from dr.policy import Policy, get_policy
from dr.storage import StoreReader, read_header
from dr.storage.lock import LOCK_NAME, StoreLockedError

REPO = Path(__file__).resolve().parents[2]


def _config(src: Path, teacher: str, out: Path, **kw) -> BuildConfig:
    base = dict(source=str(src), teachers=[teacher], policy="cifar", views=4, topk=3, out=str(out), chunk_size=16, seed=0, workers=1)
    base.update(kw)
    return BuildConfig(**base)


def test_killed_worker_is_replaced_and_the_store_is_identical(cifar64_store: str, cifar64: Path, tiny_teacher: str, tmp_path: Path) -> None:
    killed = []

    def worker_pids() -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::UnitWorker"):
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids

    def kill_a_worker(chunk: int) -> None:
        if killed:
            return
        for pid in worker_pids():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    out = tmp_path / "k.zarr"
    result = reinforce(_config(cifar64, tiny_teacher, out), progress=False, on_chunk=kill_a_worker)
    assert killed and result.complete and result.chunks_computed == 4
    assert store_bytes(str(out)) == store_bytes(cifar64_store)


def _done(url: str) -> int:
    try:
        return int(np.asarray(zarr.open_group(url, mode="r")["build/done"][:]).sum())
    except Exception:  # noqa: BLE001 - the store may not exist yet
        return 0


def test_sigkilled_builds_resume_to_identical_bytes(cifar64: Path, tiny_teacher: str, ray_session, tmp_path: Path) -> None:
    ref = tmp_path / "ref.zarr"
    reinforce(_config(cifar64, tiny_teacher, ref, chunk_size=4), progress=False)
    out = tmp_path / "killed.zarr"
    cmd = [
        sys.executable,
        "-m",
        "dr.cli.main",
        "reinforce",
        str(cifar64),
        "--teacher",
        tiny_teacher,
        "--policy",
        "cifar",
        "--views",
        "4",
        "--topk",
        "3",
        "--chunk-size",
        "4",
        "--shard-images",
        "16",  # 4 shards of 4 chunks; every chunk written at once: a kill can land while a shard is rewritten
        "--write-interval",
        "0",
        "--workers",
        "1",
        "--out",
        str(out),
        "-q",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    kills = []
    for target in (3, 9):  # 16 chunks: room to kill before the end
        args = cmd + (["--resume"] if kills else [])  # the dead build's lock is taken over: same host, same boot
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while _done(str(out)) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(_done(str(out)))
        assert StoreReader(str(out), allow_incomplete=True).header.status == "building"
    print(f"chunks done when killed: {kills} of 16")
    assert kills[0] >= 3 and kills[0] < kills[1] < 16, kills
    # the killed build left its lock on this host: --resume takes it over (a warning says so)
    final = reinforce(_config(cifar64, tiny_teacher, out, chunk_size=4, resume=True, shard_images=16), progress=False)
    assert final.complete and final.chunks_computed == 16 - kills[-1] and final.chunks_skipped == kills[-1]
    assert store_bytes(str(out)) == store_bytes(str(ref))
    assert not (out / LOCK_NAME).exists()


def test_a_live_lock_refuses_a_second_writer(cifar64_store: str, cifar64: Path, tiny_teacher: str, tmp_path: Path) -> None:
    out = tmp_path / "l.zarr"
    reinforce(_config(cifar64, tiny_teacher, out, max_chunks=1), progress=False)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"host": os.uname().nodename, "pid": sleeper.pid, "started": "now", "token": "x"}))
        with pytest.raises(StoreLockedError, match=f"pid {sleeper.pid}"):
            reinforce(_config(cifar64, tiny_teacher, out, resume=True), progress=False)
        with pytest.raises(StoreLockedError, match="another build"):
            reinforce(_config(cifar64, tiny_teacher, out, overwrite=True), progress=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert StoreReader(str(out), allow_incomplete=True).done().sum() == 1  # nothing was touched


def _bad_corpus(root: Path, cifar64: Path) -> dict[str, str]:
    """Odd and broken images next to real ones; returns file -> expected outcome."""
    good = root / "good"
    good.mkdir(parents=True)
    for f in sorted((cifar64 / "cat").iterdir())[:6]:
        (good / f.name).write_bytes(f.read_bytes())
    odd = root / "odd ünïcode"
    odd.mkdir()
    base = Image.open(sorted((cifar64 / "dog").iterdir())[0]).convert("RGB")
    jpeg = io.BytesIO()
    base.save(jpeg, "JPEG")
    (odd / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(odd / "alpha.png")
    base.convert("P", palette=Image.Palette.ADAPTIVE).save(odd / "palette.png", transparency=0)
    base.convert("L").save(odd / "gray.jpg")
    base.convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).save(odd / "sixteen.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(odd / "tiny 1x1.png")
    Image.new("RGB", (4000, 3000), (30, 60, 90)).save(odd / "large.jpg", quality=50)
    (odd / "notes.jpg").write_text("this is a text file, not a JPEG")
    return {"truncated.jpg": "skip", "notes.jpg": "skip", "tiny 1x1.png": "skip"}


def test_bad_images_fail_or_skip(cifar64: Path, tiny_teacher: str, ray_session, tmp_path: Path) -> None:
    from dr import ReinforcedDataset
    from dr.sources import ImageFolderSource

    src = tmp_path / "corpus"
    expect_skip = _bad_corpus(src, cifar64)
    folder = ImageFolderSource(src)
    assert len(folder) == 15
    cmap = tmp_path / "classes.json"  # the corpus's 2 classes are 2 of the 10-class teacher's
    cmap.write_text(json.dumps({"good": 0, "odd ünïcode": 1}))
    with pytest.raises(BadImageError, match="odd ünïcode/(notes|truncated).jpg"):
        reinforce(_config(src, tiny_teacher, tmp_path / "fail.zarr", chunk_size=16, class_map=str(cmap), topk=2), progress=False)
    out = tmp_path / "skip.zarr"
    result = reinforce(_config(src, tiny_teacher, out, chunk_size=4, on_bad_image="skip", class_map=str(cmap), topk=2), progress=False)
    assert result.complete
    r = StoreReader(str(out))
    skipped = r.load("source/skipped").astype(bool)
    names = [Path(f).name for f in folder.files]
    assert sorted(n for n, s in zip(names, skipped) if s) == sorted(expect_skip)
    assert set(r.header.skipped) == {str(i) for i in np.flatnonzero(skipped)}
    assert any("pad_crop cannot cut" in reason for reason in r.header.skipped.values())
    assert (r.load("targets/probs")[skipped] == 0).all() and (r.load("targets/probs")[~skipped] > 0).all()
    sizes = dict(zip(names, r.load("source/sizes").tolist()))
    assert sizes["large.jpg"] == [3000, 4000] and sizes["sixteen.png"] == [32, 32]
    # decoded correctly: grayscale stays gray, 16-bit keeps its high byte
    gray, _ = folder.read(names.index("gray.jpg"))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    sixteen, _ = folder.read(names.index("sixteen.png"))
    np.testing.assert_array_equal(sixteen[..., 0], (np.arange(1024).reshape(32, 32) * 60) >> 8)
    ds = ReinforcedDataset(str(out), src)
    assert len(ds) == 15 - 3 and not set(ds.indices) & set(np.flatnonzero(skipped))
    for i in range(len(ds)):
        img, (ids, probs) = ds[i]
        assert img.shape == (3, 32, 32) and probs[0] > 0
    # every check passes but `labels`: a random tiny teacher through a class map is judged (and fails) there
    failed = [c for c in verify_store(str(out), src) if not c.ok]
    assert [c.name for c in failed] == ["labels"], [c.detail for c in failed]
    # info reports the skipped images; `show --index` counts source images, skipped ones included
    from dr.audit.show import draw_views
    from dr.audit.summary import format_summary, store_summary

    summary = store_summary(str(out))
    assert summary["skipped"]["count"] == 3 and "notes.jpg" in " ".join(summary["skipped"]["first"])
    assert "skipped      3 image(s) the build could not use: #10 " in format_summary(summary)
    with pytest.raises(DRError, match="skipped this image"):
        draw_views(str(out), src, int(np.flatnonzero(skipped)[0]), tmp_path / "v.png")
    with pytest.raises(DRError, match="source index.*0 to 14.*3 of them skipped"):
        draw_views(str(out), src, 15, tmp_path / "v.png")


def test_verify_passes_on_a_sound_store_and_catches_damage(cifar64_store: str, cifar64: Path, tmp_path: Path) -> None:
    import shutil

    checks = verify_store(cifar64_store, cifar64, trust_store_teachers=True)
    assert all(c.ok for c in checks), [c.detail for c in checks]
    replay = next(c for c in checks if c.name == "replay")
    assert replay.figures["top1_agreement"] >= 0.98 and replay.figures["views"] == 64
    broken = tmp_path / "broken.zarr"
    shutil.copytree(cifar64_store, broken)
    g = zarr.open_group(str(broken), mode="r+")
    probs = np.asarray(g["targets/probs"][:])
    probs[3, 1] = probs[3, 1][::-1]  # unsorted
    g["targets/probs"][:] = probs
    ids = np.asarray(g["targets/ids"][:])
    ids[5:13] = (ids[5:13] + 1) % 10  # labels of 8 images no longer what the teacher says
    g["targets/ids"][:] = ids
    assert {c.name for c in verify_store(str(broken), cifar64) if not c.ok} == {"chunk", "chunks"}  # digests first
    rehash_store(str(broken))  # as if the build itself had written these values
    failed = {c.name for c in verify_store(str(broken), cifar64) if not c.ok}
    assert "targets" in failed
    probs[3, 1] = probs[3, 1][::-1]
    g["targets/probs"][:] = probs
    rehash_store(str(broken))
    failed = {c.name: c for c in verify_store(str(broken), cifar64, fraction=1.0, trust_store_teachers=True) if not c.ok}
    # the replay audit catches the edited ids (and so may the labels check: the test teacher is random)
    assert set(failed) - {"labels"} == {"replay"} and failed["replay"].figures["top1_agreement"] < 0.98
    from click.testing import CliRunner

    from dr.cli.main import cli

    r = CliRunner().invoke(cli, ["verify", str(broken), "--source", str(cifar64), "--fraction", "1", "--json", "--trust-store-teachers"])
    assert r.exit_code == 1 and json.loads(r.output)["ok"] is False


def test_fuzzed_headers_raise_only_typed_errors(cifar64_store: str) -> None:
    attrs = dict(zarr.open_group(cifar64_store, mode="r").attrs)
    rng = np.random.default_rng(0)
    weird = [None, -1, 2**70, 1e308, "", "../../etc/passwd", [], {}, [1, "x"], {"kind": "pad_crop", "padding": "../"}, True, "A" * 10000]

    def mutate(node, depth=0):
        if isinstance(node, dict) and node:
            node = dict(node)
            key = rng.choice(sorted(node))
            action = rng.integers(4)
            if action == 0:
                del node[key]
            elif action == 1 or depth > 3:
                node[key] = weird[rng.integers(len(weird))]
            elif action == 2:
                node[f"../{key}"] = node[key]
            else:
                node[key] = mutate(node[key], depth + 1)
            return node
        if isinstance(node, list) and node:
            node = list(node)
            node[rng.integers(len(node))] = weird[rng.integers(len(weird))]
            return node
        return weird[rng.integers(len(weird))]

    outcomes = {"ok": 0, "typed": 0}
    for _ in range(1200):
        bad = mutate(attrs)
        try:
            header = read_header(bad, "fuzz")
            Policy.from_dict(header.policy)
            outcomes["ok"] += 1
        except (StoreError, PolicyError, DRError):
            outcomes["typed"] += 1
    assert outcomes["typed"] > 900 and sum(outcomes.values()) == 1200
    assert get_policy("cifar") == Policy.from_dict(attrs["policy"])
