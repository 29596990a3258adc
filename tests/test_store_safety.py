"""A store is data, never code: one test per attack that broke v0.2 (each failed on its code).

1. a teacher spec edited into the header runs nothing on `verify`;
2. sealed header fields cannot be edited without every reader naming them;
3. decompression bombs are bad images, decoded never, with PIL's global left alone;
4. `verify` and the build's guard judge collapsed labels at any store size;
5. a `python:` factory that loads nothing is random whatever `pretrained=true` says;
6. the minor items: a live lock, bf16 on a CPU, odd tar member names, wrong-depth weights.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from PIL import Image

from dr import ReinforcedDataset
from dr.audit.verify import verify_store
from dr.builder import BuildConfig, reinforce
from dr.cli.main import cli
from dr.errors import BadImageError, ConfigError, HeaderSealError, SchemaVersionError, StoreDamagedError, TeacherError
from dr.replay import DeviceReplay
from dr.sources import decode_image, max_image_pixels, set_max_image_pixels
from dr.storage import StoreHeader, StoreReader
from dr.storage.lock import StoreLock, StoreLockedError
from tests.helpers import rehash_store

REPO = Path(__file__).resolve().parents[1]
DEMO_WEIGHTS = REPO / "examples" / "assets" / "teacher" / "cifar_resnet20.safetensors"
DEMO = f"python:dr.teachers.zoo:cifar_resnet@{DEMO_WEIGHTS}?depth=20&width=16"


def _copy(store: str, tmp_path: Path, name: str = "copy.zarr") -> Path:
    out = tmp_path / name
    shutil.copytree(store, out)
    return out


def _edit_header(store: Path, edit, *, reseal: bool = False) -> None:
    """Edit the root attributes in place, as a text editor on zarr.json would; ``reseal``
    also recomputes the seal (an attacker who knows the format)."""
    g = zarr.open_group(str(store), mode="r+")
    attrs = json.loads(json.dumps(dict(g.attrs)))
    edit(attrs)
    if reseal:
        attrs.pop("seal", None)
        attrs["seal"] = StoreHeader.model_validate(attrs).compute_seal().model_dump(mode="json")
    g.attrs.put(attrs)


# 1 -- stores never run code --------------------------------------------------------------
def test_verify_never_runs_a_teacher_named_in_the_header(cifar64_store: str, cifar64: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    store = _copy(cifar64_store, tmp_path)

    def plant(attrs: dict) -> None:
        attrs["ensemble"]["teachers"][0]["spec"] = f"python:os:system?command=touch {marker}&pretrained=true"

    # even with the seal and every chunk digest rewritten to match (a careful attacker) ...
    _edit_header(store, plant, reseal=True)
    rehash_store(str(store))
    r = CliRunner().invoke(cli, ["verify", str(store), "--source", str(cifar64)])
    # ... verify runs every check that needs no teacher, says which it skipped and how to run it
    assert not marker.exists()
    assert r.exit_code == 0, r.output
    assert "SKIP  replay" in r.output and "--teacher SPEC" in r.output and "--trust-store-teachers" in r.output
    assert "PASS  chunks" in r.output and "PASS  labels" in r.output and "replay skipped" in r.output
    for args in (["info", str(store)], ["show", str(store), "--source", str(cifar64), "--index", "3", "--out", str(tmp_path / "v.png")]):
        CliRunner().invoke(cli, args)
    ReinforcedDataset(store, cifar64)[0]
    assert not marker.exists()


def test_verify_audits_with_the_users_teachers_or_trusted_store_teachers(cifar64_store: str, cifar64: Path, tiny_teacher: str) -> None:
    mine = {c.name: c for c in verify_store(cifar64_store, cifar64, teachers=[tiny_teacher], fraction=1.0)}
    assert mine["replay"].ok and not mine["replay"].skipped and mine["replay"].figures["top1_agreement"] == 1.0
    trusted = {c.name: c for c in verify_store(cifar64_store, cifar64, trust_store_teachers=True, fraction=1.0)}
    assert trusted["replay"].ok and trusted["replay"].figures["top1_agreement"] == 1.0
    skipped = {c.name: c for c in verify_store(cifar64_store, cifar64)}
    assert skipped["replay"].skipped and skipped["replay"].ok


# 2 -- a sealed header ----------------------------------------------------------------------
EDITS = {
    "policy": lambda a: a["policy"]["crop"].update(padding=a["policy"]["crop"].get("padding", 0) + 2),
    "views": lambda a: a.update(views=3),
    "topk": lambda a: a.update(topk=2),
    "seed": lambda a: a.update(seed=a["seed"] + 1),
    "output_size": lambda a: a.update(output_size=a["output_size"] + 8),
    "dataset": lambda a: a["dataset"].update(classes=list(reversed(a["dataset"]["classes"]))),
    "num_classes": lambda a: a.update(num_classes=a["num_classes"] + 1),
    "ensemble": lambda a: a["ensemble"]["teachers"][0].update(weights_sha256="0" * 64),
    "chunk_size": lambda a: a.update(chunk_size=32),
}


@pytest.mark.parametrize("field", sorted(EDITS))
def test_every_reader_names_an_edited_sealed_field(field: str, cifar64_store: str, cifar64: Path, tmp_path: Path) -> None:
    store = _copy(cifar64_store, tmp_path)
    _edit_header(store, EDITS[field])
    r = CliRunner().invoke(cli, ["info", str(store)])
    assert r.exit_code != 0 and f"header field(s) {field} changed after the build" in r.output, r.output
    for open_store in (
        lambda: ReinforcedDataset(store, cifar64),
        lambda: DeviceReplay(str(store), cifar64),
        lambda: verify_store(str(store), cifar64),
    ):
        with pytest.raises(HeaderSealError, match=field):
            open_store()


def test_a_removed_mix_is_caught_and_a_rewritten_seal_breaks_every_chunk(cifar64_store: str, cifar64: Path, tmp_path: Path) -> None:
    store = _copy(cifar64_store, tmp_path)
    _edit_header(store, lambda a: a.pop("seal"))
    with pytest.raises(HeaderSealError, match="seal is missing or altered"):
        StoreReader(str(store))
    store = _copy(cifar64_store, tmp_path, "resealed.zarr")
    _edit_header(store, EDITS["views"], reseal=True)  # field and seal edited together ...
    with pytest.raises(StoreDamagedError, match="content differs from the digest"):
        ReinforcedDataset(store, cifar64)[0]  # ... and no chunk matches its digest any more
    failed = {c.name for c in verify_store(str(store), cifar64) if not c.ok}
    assert failed & {"schema", "chunks"}, failed  # 3 views in the header, 4 in the arrays
    _edit_header(store, lambda a: a.update(schema_version=2))
    with pytest.raises(SchemaVersionError, match="seals the header"):
        StoreReader(str(store))


# 3 -- bounded decoding ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    """A 1-bit 20000 x 20000 PNG: ~50 KB on disk, 1.2 GB as RGB pixels."""
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_a_decompression_bomb_is_a_bad_image_and_memory_stays_bounded(bomb_png: bytes, tmp_path: Path) -> None:
    assert len(bomb_png) < 200_000
    # PIL's own ceiling (twice its MAX_IMAGE_PIXELS) speaks first for this one ...
    with pytest.raises(BadImageError, match=r"bomb.png.*400000000 pixels.*above the decode limit of 89,478,485 pixels"):
        decode_image(bomb_png, "bomb.png")
    # ... dr's limit for one below it, from the image's header, before decoding
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, format="PNG", optimize=True)
    with pytest.raises(BadImageError, match=r"10000x10000 = 100,000,000 pixels is above the decode limit of 89,478,485"):
        decode_image(buf.getvalue(), "b2.png")
    (tmp_path / "bomb.png").write_bytes(bomb_png)
    # in a fresh process: importing dr leaves PIL's process-wide limit alone, and refusing the bomb
    # costs no pixel memory (peak RSS far below the 1.2 GB the pixels would take; VmHWM, not
    # getrusage, whose maximum survives exec from the test process)
    code = (
        "import re, sys; from PIL import Image; before = Image.MAX_IMAGE_PIXELS; import dr.sources as s\n"
        "from dr.errors import BadImageError\n"
        "try:\n    s.decode_image(open(sys.argv[1], 'rb').read(), 'bomb')\nexcept BadImageError: pass\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"  # this process's peak, in KB
        "print(before, Image.MAX_IMAGE_PIXELS, hwm)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "bomb.png")], capture_output=True, text=True, check=True).stdout
    before, after, rss_kb = (int(v) for v in out.split())
    assert before == after == 89_478_485
    assert rss_kb < 300_000, f"peak RSS {rss_kb} KB"


def test_the_decode_limit_is_dr_s_own_setting(tmp_path: Path) -> None:
    img = np.asarray(Image.new("RGB", (40, 30)))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    assert decode_image(buf.getvalue(), "ok.png", max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(BadImageError, match="1,200 pixels is above the decode limit of 1,199"):
        decode_image(buf.getvalue(), "big.png", max_pixels=1199)
    try:
        set_max_image_pixels(1000)
        assert max_image_pixels() == 1000
        with pytest.raises(BadImageError, match="above the decode limit of 1,000"):
            decode_image(buf.getvalue())
        with pytest.raises(ConfigError, match=r"PIL.Image.MAX_IMAGE_PIXELS"):
            set_max_image_pixels(10**10)
    finally:
        set_max_image_pixels(None)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485


def test_a_memory_error_while_decoding_is_a_bad_image(monkeypatch: pytest.MonkeyPatch) -> None:
    import dr.sources.decode as sources

    def boom(img: Image.Image) -> np.ndarray:
        raise MemoryError

    monkeypatch.setattr(sources, "to_rgb_array", boom)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    with pytest.raises(BadImageError, match="x.png.*out of memory while decoding"):
        sources.decode_image(buf.getvalue(), "x.png")


def test_a_build_skips_or_names_a_bomb(cifar64: Path, bomb_png: bytes, tiny_teacher: str, ray_session, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(cifar64, src)
    (src / "cat" / "zz_bomb.png").write_bytes(bomb_png)
    cfg = dict(source=str(src), teachers=[tiny_teacher], policy="cifar", views=2, topk=2, chunk_size=16, workers=1, min_agreement=0)
    # the limit is the build's own setting: 1,023 pixels makes the first 32 x 32 image a bad one
    with pytest.raises(BadImageError, match=r"\.jpg: 32x32 = 1,024 pixels is above the decode limit of 1,023.*--on-bad-image skip"):
        reinforce(BuildConfig(**cfg, out=str(tmp_path / "fail.zarr"), max_image_pixels=1023), progress=False)
    result = reinforce(BuildConfig(**cfg, out=str(tmp_path / "skip.zarr"), on_bad_image="skip"), progress=False)
    assert result.complete and len(result.header.skipped) == 1
    assert "zz_bomb.png" in next(iter(result.header.skipped.values()))


# 4 -- verify and the guard judge small stores -----------------------------------------------
@pytest.fixture(scope="module")
def sample300(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 real CIFAR-10 JPEGs (30 per class), the size of the issue's stores."""
    from tests.conftest import copy_sample

    return copy_sample(tmp_path_factory.mktemp("s300"), 30)


def test_the_guard_stops_a_small_collapsed_build(sample300: Path, ray_session, tmp_path: Path) -> None:
    # the demo teacher given a wrong normalisation: a collapsed ensemble
    wrong = DEMO + "&mean=0.9,0.9,0.9&std=0.01,0.01,0.01"
    cfg = dict(source=str(sample300), teachers=[wrong], policy="cifar", views=2, topk=3, chunk_size=100, workers=1)
    with pytest.raises(TeacherError, match=r"stopped: .* over the first \d+ images \(at most .* at 99.95% confidence\)"):
        reinforce(BuildConfig(**cfg, out=str(tmp_path / "bad.zarr")), progress=False)


def test_the_guard_judges_once_the_sample_spans_enough_classes() -> None:
    """Sources list images class by class: a first chunk of one class says little about the
    ensemble, so the bound judges from 10 classes on (all, when the dataset has fewer)."""
    from dr.builder.guard import AgreementGuard

    labels = np.repeat(np.arange(20), 50)  # 20 classes of 50 images, in class order
    guard = AgreementGuard(labels, threshold=0.1, after_images=10**6)

    def wrong(start: int) -> dict[str, np.ndarray]:
        ids = ((labels[start : start + 100, None, None] + 1) % 20).repeat(2, 1)
        return {"targets/ids": ids, "source/skipped": np.zeros(100)}

    for start in range(0, 400, 100):  # 8 classes, every view wrong: not judged yet
        guard.update(start, wrong(start))
    with pytest.raises(TeacherError, match="over the first 500 images"):
        guard.update(400, wrong(400))  # the 10th class: a proven collapse


def test_verify_fails_a_small_store_whose_labels_collapsed(sample300: Path, ray_session, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    cfg = BuildConfig(source=str(sample300), teachers=[DEMO], policy="cifar", views=2, topk=3, chunk_size=100, workers=1, out=str(out))
    assert reinforce(cfg, progress=False).complete
    labels = {c.name: c for c in verify_store(str(out), sample300)}["labels"]
    assert labels.ok and labels.figures["top1_agreement"] > 0.6
    # a permuted teacher (class i labelled as i + 1), written consistently with its digests
    g = zarr.open_group(str(out), mode="r+")
    g["targets/ids"][:] = (np.asarray(g["targets/ids"][:]) + 1) % 10
    rehash_store(str(out))
    labels = {c.name: c for c in verify_store(str(out), sample300)}["labels"]
    assert not labels.ok and "collapsed" in labels.detail and "over 300 images" in labels.detail, labels.detail
    assert labels.figures["upper_bound"] < labels.figures["threshold"]


# 5 -- no random teacher by a side door ------------------------------------------------------
def test_a_factory_that_loads_nothing_is_random_whatever_pretrained_says(cifar64: Path, ray_session, tmp_path: Path) -> None:
    side_door = "python:dr.teachers.zoo:cifar_resnet?depth=8&width=4&pretrained=true"
    cfg = dict(source=str(cifar64), teachers=[side_door], policy="cifar", views=2, topk=2, chunk_size=32, workers=1)
    with pytest.raises(TeacherError, match="pretrained=true.*weights change with the random seed.*--allow-random-teachers"):
        reinforce(BuildConfig(**cfg, out=str(tmp_path / "r.zarr")), progress=False)
    result = reinforce(BuildConfig(**cfg, out=str(tmp_path / "r.zarr"), allow_random_teachers=True, seed=5), progress=False)
    assert result.header.ensemble["teachers"][0]["init_seed"] == 5  # recorded as random
    assert "RANDOM init, seed 5" in CliRunner().invoke(cli, ["info", str(tmp_path / "r.zarr")]).output


# 6 -- the minor items ----------------------------------------------------------------------
def test_force_never_takes_a_lock_whose_holder_is_alive_here(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    store.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"host": socket.gethostname(), "pid": holder.pid, "started": "now", "token": "other"}
        (store / ".dr-build.lock").write_text(json.dumps(record))
        with pytest.raises(StoreLockedError, match=rf"running build \(pid {holder.pid}.*never takes over.*kill {holder.pid}"):
            StoreLock(str(store)).acquire(force=True)
    finally:
        holder.kill()
        holder.wait()
    StoreLock(str(store)).acquire(force=True)  # the holder is gone: a stale lock, taken over


def test_bf16_teachers_on_cpu_workers_build_a_store_verify_replays_exactly(
    cifar64: Path, cifar64_store: str, tiny_teacher: str, ray_session, tmp_path: Path
) -> None:
    """``--precision bf16`` on CPU workers runs bf16 autocast (``auto`` stays fp32 there): the
    header records it, the targets differ from the fp32 store's only by bf16's rounding, the
    replay audit re-labels views in the recorded arithmetic (so it agrees to float16's rounding
    instead of bf16's tolerance), and the store is the same at another worker count."""
    fp32 = StoreReader(cifar64_store)  # the same settings, built with precision auto: fp32 on the CPU
    assert fp32.header.ensemble["precision"] == "fp32"
    common = dict(source=str(cifar64), teachers=[tiny_teacher], policy="cifar", views=4, topk=3, shard_images=32, precision="bf16")
    built = reinforce(BuildConfig(**common, chunk_size=16, workers=1, out=str(tmp_path / "a.zarr")), progress=False)
    assert built.complete and {k: built.header.ensemble[k] for k in ("precision", "device")} == {"precision": "bf16", "device": "cpu"}
    bf16 = StoreReader(str(tmp_path / "a.zarr"))
    p16, p32 = (np.asarray(r.array("targets/probs")[:], dtype=np.float32) for r in (bf16, fp32))
    assert not np.array_equal(p16, p32) and np.abs(p16 - p32).max() < 0.1  # bf16 ran, and moved little
    np.testing.assert_array_equal(bf16.array("params/flip")[:], fp32.array("params/flip")[:])  # the same views
    checks = verify_store(str(tmp_path / "a.zarr"), cifar64, fraction=1.0, trust_store_teachers=True)
    replay = next(c for c in checks if c.name == "replay")
    assert all(c.ok for c in checks) and replay.figures["top1_agreement"] == 1.0
    assert replay.figures["max_abs_prob_diff"] <= 2.0**-11  # float16 storage, not an fp32 re-run (bf16 tolerance 0.25)
    # same seed, same store at another worker count and chunk size, in bf16 too
    reinforce(BuildConfig(**common, chunk_size=32, workers=2, cpus_per_worker=0.5, out=str(tmp_path / "b.zarr")), progress=False)
    again = StoreReader(str(tmp_path / "b.zarr"))
    for path in ("targets/probs", "targets/ids"):
        assert np.asarray(again.array(path)[:]).tobytes() == np.asarray(bf16.array(path)[:]).tobytes(), path


def test_odd_tar_member_names_are_left_out_of_a_webdataset(cifar64: Path, tmp_path: Path) -> None:
    from dr.sources import WebDatasetSource

    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tf:
        for i, f in enumerate(sorted(cifar64.glob("*/*.jpg"))[:4]):
            for name, payload in ((f"s{i}.jpg", f.read_bytes()), (f"s{i}.cls", b"3")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
        for odd in ("..\\..\\x.cls", "../up.cls", "/abs.cls", ".hidden.cls"):
            info = tarfile.TarInfo(odd)
            info.size = 1
            tf.addfile(info, io.BytesIO(b"1"))
    src = WebDatasetSource(str(shard))
    assert len(src) == 4 and len(src.ignored_members) == 4
    assert any("..\\..\\x.cls" in m for m in src.ignored_members)


def test_wrong_depth_weights_name_the_keys(tmp_path: Path) -> None:
    from dr.teachers import load_teacher

    with pytest.raises(TeacherError, match=r"missing key\(s\): layers\.\d+\.bn1\.bias.*check the architecture"):
        load_teacher(f"python:dr.teachers.zoo:cifar_resnet@{DEMO_WEIGHTS}?depth=26&width=16")
    with pytest.raises(TeacherError, match=r"shape mismatch\(es\): fc\.bias \(file \[10\], model \[100\]\)"):
        load_teacher(f"python:dr.teachers.zoo:cifar_resnet@{DEMO_WEIGHTS}?depth=20&width=16&num_classes=100")


def test_no_library_module_changes_pil_globals() -> None:
    code = "from PIL import Image; a = Image.MAX_IMAGE_PIXELS; import dr, dr.sources, dr.builder; print(a == Image.MAX_IMAGE_PIXELS)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.strip() == "True"
