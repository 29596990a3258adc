from pathlib import Path

import numpy as np
import pytest
import zarr

from dr.errors import SchemaVersionError, StoreError, StoreIncompleteError, StoreMismatchError
from dr.storage import SCHEMA_VERSION, DatasetInfo, ParamFieldSpec, StoreHeader, StoreReader, StoreWriter, now_iso
from dr.storage.integrity import digest_paths


def _header(**kw) -> StoreHeader:
    base = dict(
        schema_version=SCHEMA_VERSION,
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
    assert h.status == "complete" and h.dataset.digests_sha256 is not None
    r = StoreReader(url)
    np.testing.assert_array_equal(r.load("source/labels"), labels)
    np.testing.assert_array_equal(r.load("targets/probs"), np.concatenate([chunks[c]["targets/probs"] for c in range(3)]))
    # plain zarr explains the store
    g = zarr.open_group(url, mode="r")
    assert g.attrs["format"] == "dr-store" and g.attrs["schema_version"] == SCHEMA_VERSION and g.attrs["status"] == "complete"
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
    with pytest.raises(SchemaVersionError, match="99.*version 3"):
        StoreReader(url, allow_incomplete=True)
    g.update_attributes({"schema_version": 1})  # a v0.1 store: named, with what to do
    with pytest.raises(SchemaVersionError, match=r"schema version 1; this dr reads version 3 .*views.*Rebuild it"):
        StoreReader(url, allow_incomplete=True)
    g.update_attributes({"schema_version": 2})  # a v0.2 store: unsealed
    with pytest.raises(SchemaVersionError, match=r"schema version 2; this dr reads version 3 .*seals the header.*Rebuild it"):
        StoreReader(url, allow_incomplete=True)
    g.update_attributes({"schema_version": SCHEMA_VERSION, "views": "many"})
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
