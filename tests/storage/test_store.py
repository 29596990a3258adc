import hashlib
from pathlib import Path

import numpy as np
import pytest
import zarr

from dr.errors import SchemaVersionError, StoreError, StoreIncompleteError, StoreMismatchError
from dr.storage import SCHEMA_VERSION, DatasetInfo, ParamFieldSpec, StoreHeader, StoreLayout, StoreReader, StoreWriter, now_iso
from dr.storage.integrity import digest_paths
from dr.storage.layout import PROBS_MAX_ERROR, decode_probs, encode_probs


def _header(**kw) -> StoreHeader:
    """A version-3 store header (``layout=`` makes it version 4)."""
    if kw.get("layout") is not None:
        kw.setdefault("schema_version", SCHEMA_VERSION)
    base = dict(
        schema_version=3,
        status="building",
        tool_version="test",
        created_at=now_iso(),
        dataset=DatasetInfo(kind="image_folder", count=10, classes=("a", "b", "c"), labels_sha256="0" * 64),
        num_classes=3,
        views=2,
        topk=2,
        seed=0,
        chunk_size=4,
        forward_group=1,
        output_size=32,
        policy={"name": "cifar"},
        param_fields=(ParamFieldSpec(name="flip", dtype="uint8"),),
        ensemble={"teachers": []},
    )
    base.update(kw)
    return StoreHeader(**base)


def _chunk(w: StoreWriter, c: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    a, b = w.chunk_rows(c)
    n = b - a
    probs = np.sort(rng.random((n, 2, 2)), axis=-1)[..., ::-1].astype(np.float16)
    return {
        "params/flip": rng.integers(0, 2, (n, 2)).astype(np.uint8),
        "targets/ids": rng.integers(0, 3, (n, 2, 2)).astype(np.uint16),
        "targets/probs": probs,
        "source/sizes": np.full((n, 2), 32, dtype=np.uint32),
        "source/digests": rng.integers(0, 256, (n, 16)).astype(np.uint8),
        "source/skipped": np.zeros(n, dtype=np.uint8),
    }


def test_write_finalize_read_round_trip(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    labels = np.arange(10) % 3
    w = StoreWriter.create(url, _header(), labels)
    rng = np.random.default_rng(0)
    chunks = {c: _chunk(w, c, rng) for c in range(3)}
    for c in (2, 0):
        w.write_chunk(c, chunks[c])
    with pytest.raises(StoreError, match="1 of 3 chunks are not written"):
        w.finalize()
    with pytest.raises(StoreIncompleteError, match="--resume"):
        StoreReader(url)
    assert StoreReader(url, allow_incomplete=True).done().tolist() == [True, False, True]
    w.write_chunk(1, chunks[1])
    h = w.finalize()
    whole = np.concatenate([chunks[c]["source/digests"] for c in range(3)])
    assert h.status == "complete" and h.dataset.digests_sha256 == hashlib.sha256(whole.tobytes()).hexdigest()
    r = StoreReader(url)
    np.testing.assert_array_equal(r.load("source/labels"), labels)
    np.testing.assert_array_equal(r.load("targets/probs"), np.concatenate([chunks[c]["targets/probs"] for c in range(3)]))
    # plain zarr explains the store
    g = zarr.open_group(url, mode="r")
    assert g.attrs["format"] == "dr-store" and g.attrs["schema_version"] == 3 and g.attrs["status"] == "complete"
    assert "layout" not in g.attrs  # version 3's attributes, as dr 0.2 writes them
    assert g["targets/ids"].shape == (10, 2, 2) and g["targets/ids"].chunks == (4, 2, 2)


def test_refuses_existing_store_and_wrong_shapes(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    w = StoreWriter.create(url, _header(), np.zeros(10, dtype=int))
    with pytest.raises(StoreError, match="already exists"):
        StoreWriter.create(url, _header(), np.zeros(10, dtype=int))
    bad = _chunk(w, 0, np.random.default_rng(0))
    bad["targets/ids"] = bad["targets/ids"][:, :1]
    with pytest.raises(StoreError, match="targets/ids has shape"):
        w.write_chunk(0, bad)
    del bad["params/flip"]
    with pytest.raises(StoreError, match="do not match the schema"):
        w.write_chunk(0, bad)


def test_resume_requires_same_config(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    StoreWriter.create(url, _header(), np.zeros(10, dtype=int))
    StoreWriter.resume(url, _header(created_at="2000-01-01T00:00:00+00:00"))  # timestamps don't matter
    with pytest.raises(StoreMismatchError, match="seed"):
        StoreWriter.resume(url, _header(seed=1))


def test_version_and_format_checks(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    StoreWriter.create(url, _header(), np.zeros(10, dtype=int))
    g = zarr.open_group(url, mode="r+")
    g.update_attributes({"schema_version": 99})
    with pytest.raises(SchemaVersionError, match="99.*versions 3, 4.*newer dr wrote it: upgrade"):
        StoreReader(url, allow_incomplete=True)
    g.update_attributes({"schema_version": 1})  # a v0.1 store: named, with what to do
    with pytest.raises(SchemaVersionError, match=r"schema version 1; this dr reads versions 3, 4 .*views.*Rebuild it"):
        StoreReader(url, allow_incomplete=True)
    g.update_attributes({"schema_version": 2})  # a v0.2 store: unsealed
    with pytest.raises(SchemaVersionError, match=r"schema version 2; this dr reads versions 3, 4 .*seals the header.*Rebuild it"):
        StoreReader(url, allow_incomplete=True)
    g.update_attributes({"schema_version": 4})  # a version-3 header claiming version 4: no layout
    with pytest.raises(StoreError, match="malformed header.*needs its layout"):
        StoreReader(url, allow_incomplete=True)
    g.update_attributes({"schema_version": 3, "views": "many"})
    with pytest.raises(StoreError, match="views"):
        StoreReader(url, allow_incomplete=True)
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a dr store"):
        StoreReader(str(tmp_path / "other.zarr"))
    with pytest.raises(StoreError, match="no store"):
        StoreReader(str(tmp_path / "missing.zarr"))


def test_never_overwrites_something_that_is_not_a_store(tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(StoreError, match="not a Zarr store"):
        StoreWriter.create(str(precious), _header(), np.zeros(10, dtype=int), overwrite=True)
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").update_attributes({"mine": 1})
    with pytest.raises(StoreError, match="not a dr store"):
        StoreWriter.create(str(tmp_path / "other.zarr"), _header(), np.zeros(10, dtype=int), overwrite=True)
    assert (precious / "thesis.tex").read_text() == "years of work"
    assert zarr.open_group(str(tmp_path / "other.zarr")).attrs["mine"] == 1


def _complete_store(tmp_path: Path) -> tuple[str, dict[int, dict[str, np.ndarray]]]:
    url = str(tmp_path / "s.zarr")
    w = StoreWriter.create(url, _header(), np.arange(10) % 3)
    rng = np.random.default_rng(0)
    chunks = {c: _chunk(w, c, rng) for c in range(3)}
    for c in range(3):
        w.write_chunk(c, chunks[c])
    w.finalize()
    return url, chunks


def test_chunk_digests_catch_deleted_truncated_and_altered_chunks(tmp_path: Path) -> None:
    url, chunks = _complete_store(tmp_path)
    r = StoreReader(url)
    paths = digest_paths(r.header)
    assert r.array("build/digests").shape == (3, len(paths), 16) and r.array("build/digests").attrs["arrays"] == list(paths)
    data, problems = r.load_checked(paths)
    assert problems == [] and np.array_equal(data["targets/probs"][4:8], chunks[1]["targets/probs"])
    # a deleted chunk file reads as fill values that can never pass for a target
    (Path(url) / "targets" / "probs" / "c" / "1" / "0" / "0").unlink()
    (Path(url) / "targets" / "ids" / "c" / "2" / "0" / "0").unlink()
    probs, ids = r.load("targets/probs"), r.load("targets/ids")
    assert np.isnan(probs[4:8]).all() and (ids[8:] == 65535).all()
    # a truncated one is reported, not raised
    f = Path(url) / "params" / "flip" / "c" / "0" / "0"
    f.write_bytes(f.read_bytes()[:5])
    data, problems = r.load_checked(paths)
    got = {(p.path, p.chunk): p.problem for p in problems}
    assert set(got) == {("targets/probs", 1), ("targets/ids", 2), ("params/flip", 0)}, got
    assert "missing" in got[("targets/probs", 1)] and "unreadable (RuntimeError" in got[("params/flip", 0)]
    assert str(problems[0]).startswith("params/flip chunk 0 (images 0-3): unreadable")
    # an altered value (same file present) differs from its digest
    g = zarr.open_group(url, mode="r+")
    g["source/sizes"][9, 0] = 31
    assert any(p.path == "source/sizes" and p.chunk == 2 and "differs" in p.problem for p in r.load_checked(paths)[1])
    # one chunk alone
    one, problems = r.load_checked(["targets/probs"], chunks=[1])
    assert one["targets/probs"].shape == (4, 2, 2) and [p.chunk for p in problems] == [1]
    # the writer finds them and reopens just those chunks for a repair
    w = StoreWriter.resume(url, _header())
    bad = sorted({p.chunk for p in w.damaged()})
    assert bad == [0, 1, 2]
    w.reopen([1], np.arange(10) % 3)
    assert StoreReader(url, allow_incomplete=True).header.status == "building" and w.done().tolist() == [True, False, True]
    with pytest.raises(StoreIncompleteError, match="still building"):
        StoreReader(url)


# -- version 4: shards, uint8 probabilities -------------------------------------------------------
SHARDED = StoreLayout(shard_images=8, probs="uint8", sampler_version=1)


def test_a_sharded_store_keeps_one_object_per_shard_and_writes_chunks_together(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    labels = np.arange(10) % 3
    w = StoreWriter.create(url, _header(layout=SHARDED), labels, write_interval=3600)
    rng = np.random.default_rng(0)
    chunks = {c: _chunk(w, c, rng) for c in range(3)}
    assert w.write_chunk(0, chunks[0]) == []  # waits: its shard (chunks 0-1) is not whole yet
    assert StoreReader(url, allow_incomplete=True).done().tolist() == [False, False, False]
    assert w.write_chunk(2, chunks[2]) == [0, 2]  # chunk 2's shard is whole: every waiting chunk is written
    assert w.write_chunk(1, chunks[1]) == [1]
    w.finalize()
    r = StoreReader(url)
    assert r.header.schema_version == 4 and r.header.layout == SHARDED
    data, problems = r.load_checked(digest_paths(r.header))
    assert problems == []
    want = np.concatenate([chunks[c]["targets/probs"] for c in range(3)]).astype(np.float32)
    assert data["targets/probs"].dtype == np.uint8
    assert np.abs(decode_probs(r.header, data["targets/probs"]) - want).max() <= PROBS_MAX_ERROR["uint8"] + 1e-7
    assert data["targets/ids"].dtype == np.uint8  # 3 classes: the smallest id type
    for path in ("targets/probs", "params/flip", "source/labels"):  # 10 images in shards of 8: two objects per array
        assert sorted(p.name for p in (Path(url) / path / "c").iterdir()) == ["0", "1"]
    assert sorted(p.name for p in (Path(url) / "build" / "done" / "c").iterdir()) == ["0", "1"]
    # the header's digest of source/digests, hashed shard by shard, is the whole array's
    whole = np.concatenate([chunks[c]["source/digests"] for c in range(3)])
    assert r.header.dataset.digests_sha256 == hashlib.sha256(whole.tobytes()).hexdigest()


def test_uint8_probabilities_round_trip_within_the_stated_bound() -> None:
    h = _header(layout=SHARDED)
    p = np.sort(np.random.default_rng(1).dirichlet(np.ones(100) * 0.1, size=5000), axis=1)[:, ::-1][:, :10]
    q = encode_probs(h, p)
    back = decode_probs(h, q)
    assert q.dtype == np.uint8 and np.abs(back - p).max() <= PROBS_MAX_ERROR["uint8"] + 1e-7 <= 0.002
    assert (np.diff(back, axis=1) <= 0).all()  # monotone: sorted probabilities stay sorted
    assert np.abs((1 - back.sum(1)) - (1 - p.sum(1))).max() <= 10 * PROBS_MAX_ERROR["uint8"]  # the left-out mass
    f16 = _header()
    assert np.abs(decode_probs(f16, encode_probs(f16, p)) - p).max() <= PROBS_MAX_ERROR["float16"]


def test_an_unreadable_shard_is_dropped_and_its_chunks_reopened(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    w = StoreWriter.create(url, _header(layout=SHARDED), np.arange(10) % 3)
    rng = np.random.default_rng(0)
    chunks = {c: _chunk(w, c, rng) for c in range(3)}
    for c in range(3):
        w.write_chunk(c, chunks[c])
    w.finalize()
    shard = Path(url) / "targets" / "probs" / "c" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:-7])  # a torn shard: its index no longer checks
    w = StoreWriter.resume(url, _header(layout=SHARDED))
    problems = w.damaged()
    assert {(p.path, p.chunk) for p in problems} == {("targets/probs", 0), ("targets/probs", 1)}
    assert all(p.problem.startswith("unreadable") for p in problems)
    assert w.drop_unreadable_shards(problems) == [0, 1] and not shard.exists()
    w.reopen([0, 1], np.arange(10) % 3)
    for c in (0, 1):
        w.write_chunk(c, chunks[c])
    w.finalize()
    r = StoreReader(url)
    data, problems = r.load_checked(digest_paths(r.header))
    assert (
        problems == []
        and np.abs(
            decode_probs(r.header, data["targets/probs"][:8])
            - np.concatenate([chunks[0]["targets/probs"], chunks[1]["targets/probs"]]).astype(np.float32)
        ).max()
        < 0.002
    )
