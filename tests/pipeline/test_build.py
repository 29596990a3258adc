"""End-to-end builds through a real local Ray on real CIFAR-10 JPEGs with a tiny teacher."""

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from dr.builder import BuildConfig, UnitWorker, reinforce
from dr.errors import ConfigError, StoreError, StoreIncompleteError
from dr.policy import Policy
from dr.sources import ImageFolderSource
from dr.storage import StoreReader

ARRAYS = ("params/crop_box", "params/flip", "targets/ids", "targets/probs", "source/labels", "source/sizes", "source/digests")


def _config(src: Path, teacher: str, out: Path, **kw) -> BuildConfig:
    base = dict(source=str(src), teachers=[teacher], policy="cifar", views=4, topk=3, out=str(out), chunk_size=16, seed=0)
    base.update(kw)
    return BuildConfig(**base)


def _arrays(url: str) -> dict[str, np.ndarray]:
    g = zarr.open_group(url, mode="r")
    return {a: np.asarray(g[a][:]) for a in ARRAYS}


@pytest.fixture(scope="module")
def reference(cifar64_store: str) -> str:
    return cifar64_store


def test_end_to_end_store_contents(reference: str, cifar64: Path) -> None:
    g = zarr.open_group(reference, mode="r")
    a = g.attrs
    assert a["format"] == "dr-store" and a["schema_version"] == 4 and a["status"] == "complete"
    assert a["layout"] == {"shard_images": 32, "probs": "float16", "params": "stored", "sampler_version": 1}
    assert a["views"] == 4 and a["topk"] == 3 and a["num_classes"] == 10 and a["dataset"]["count"] == 64
    assert a["policy"]["name"] == "cifar" and [f["name"] for f in a["param_fields"]] == ["crop_box", "flip"]
    assert a["ensemble"]["teachers"][0]["weights_sha256"]
    arr = _arrays(reference)
    ids, probs = arr["targets/ids"], arr["targets/probs"]
    assert ids.shape == (64, 4, 3) and ids.dtype == np.uint8 and (ids < 10).all()  # 10 classes: one byte per id
    assert probs.dtype == np.float16 and (probs <= 1).all() and (probs > 0).all()
    assert (np.diff(probs.astype(np.float32), axis=-1) <= 0).all()
    assert (probs.astype(np.float32).sum(-1) <= 1.001).all()
    assert (arr["source/sizes"] == 32).all()
    np.testing.assert_array_equal(arr["source/labels"], ImageFolderSource(cifar64).labels())
    assert arr["params/crop_box"].dtype == np.int16 and (arr["params/crop_box"][..., :2] >= -4).all()
    assert len({bytes(d) for d in arr["source/digests"]}) == 64


def test_same_store_for_any_worker_count_and_chunk_size(reference: str, cifar64: Path, tiny_teacher: str, tmp_path: Path) -> None:
    ref = _arrays(reference)
    for i, kw in enumerate([dict(workers=2), dict(workers=2, chunk_size=32, cpus_per_worker=0.5, units_per_worker=3)]):
        out = tmp_path / f"b{i}.zarr"
        reinforce(_config(cifar64, tiny_teacher, out, **kw), progress=False)
        got = _arrays(str(out))
        for name in ARRAYS:
            assert got[name].tobytes() == ref[name].tobytes(), (kw, name)


def test_resume_finishes_only_missing_chunks(reference: str, cifar64: Path, tiny_teacher: str, tmp_path: Path) -> None:
    out = tmp_path / "r.zarr"
    first = reinforce(_config(cifar64, tiny_teacher, out, max_chunks=1), progress=False)
    assert not first.complete and first.chunks_computed == 1
    with pytest.raises(StoreIncompleteError):
        StoreReader(str(out))
    assert StoreReader(str(out), allow_incomplete=True).done().sum() == 1
    with pytest.raises(StoreError, match="--resume"):
        reinforce(_config(cifar64, tiny_teacher, out), progress=False)
    second = reinforce(_config(cifar64, tiny_teacher, out, resume=True), progress=False)
    assert second.complete and second.chunks_computed == 3 and second.chunks_skipped == 1
    ref, got = _arrays(reference), _arrays(str(out))
    for name in ARRAYS:
        assert got[name].tobytes() == ref[name].tobytes(), name
    third = reinforce(_config(cifar64, tiny_teacher, out, resume=True), progress=False)
    assert third.chunks_computed == 0 and third.complete


def test_replaying_stored_params_reproduces_the_teachers_views(reference: str, cifar64: Path, tiny_teacher: str) -> None:
    """Views replayed one at a time from the store give the stored top-k (same kernels)."""
    r = StoreReader(reference)
    policy = Policy.from_dict(r.header.policy)
    params = r.params()
    src = ImageFolderSource(cifar64)
    worker = UnitWorker(
        src, r.header.policy, [tiny_teacher], temperature=1.0, views=4, topk=3, seed=0, forward_group=r.header.forward_group
    )
    ids = r.load("targets/ids")
    singles = []
    for i in (0, 9, 33, 63):
        img = torch.from_numpy(src.read(i)[0]).permute(2, 0, 1)[None]
        for v in range(4):
            view = policy.replay(img, {k: a[i, v : v + 1] for k, a in params.items()})
            singles.append(view)
            p = worker.ensemble(view)
            assert int(p.argmax()) == int(ids[i, v, 0])
    # and the batched replay of the same views is bit-identical
    flat = {k: np.concatenate([a[i] for i in (0, 9, 33, 63)]) for k, a in params.items()}
    imgs = torch.stack([torch.from_numpy(src.read(i)[0]).permute(2, 0, 1) for i in (0, 9, 33, 63)])
    batched = policy.replay(imgs, flat, np.repeat(np.arange(4), 4))
    assert torch.equal(batched, torch.cat(singles))


def test_config_errors_are_clear(cifar64: Path, tiny_teacher: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--topk 11"):
        reinforce(_config(cifar64, tiny_teacher, tmp_path / "x.zarr", topk=11), progress=False)
    with pytest.raises(ConfigError, match="multiple of forward_group"):
        reinforce(_config(cifar64, tiny_teacher, tmp_path / "x.zarr", forward_group=5), progress=False)


def test_mixing_preset_builds_identically_and_dataset_replays_mixed_views(
    cifar64: Path, tiny_teacher: str, ray_session, tmp_path: Path
) -> None:
    from dr import ReinforcedDataset
    from dr.teachers import Ensemble

    a, b = tmp_path / "m1.zarr", tmp_path / "m2.zarr"
    reinforce(_config(cifar64, tiny_teacher, a, policy="cifar+mix+ra/re", workers=1), progress=False)
    reinforce(_config(cifar64, tiny_teacher, b, policy="cifar+mix+ra/re", workers=2), progress=False)
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    names = [f"params/{f['name']}" for f in ga.attrs["param_fields"]] + ["targets/ids", "targets/probs"]
    assert "params/mix_partner" in names and "params/partner_ra_ops" in names
    for name in names:
        assert np.asarray(ga[name][:]).tobytes() == np.asarray(gb[name][:]).tobytes(), name
    kind = np.asarray(ga["params/mix_kind"][:])
    partner = np.asarray(ga["params/mix_partner"][:]).astype(np.int64)
    own_chunk = (np.arange(64) // 16)[:, None]
    assert (kind > 0).any() and (partner[kind > 0] // 16 == np.broadcast_to(own_chunk, kind.shape)[kind > 0]).all()
    ds = ReinforcedDataset(str(a), cifar64, transform=lambda v: v)
    ens = Ensemble.from_specs([tiny_teacher])
    ids = np.asarray(ga["targets/ids"][:])
    checked = 0
    for i, v in zip(*np.nonzero(kind)):
        epoch = next(e for e in range(4) if ds.view_index(int(i), e) == v)
        ds.set_epoch(epoch)
        view, (tid, _) = ds[int(i)]
        assert int(tid[0]) == int(ids[i, v, 0])
        assert int(ens(view[None]).argmax()) == int(ids[i, v, 0])
        checked += 1
        if checked == 12:
            break
    assert checked == 12


def test_stored_params_equal_a_fresh_sample(reference: str, cifar64: Path) -> None:
    """Parameters round-trip through the store unchanged (dtype and values)."""
    r = StoreReader(reference)
    policy = Policy.from_dict(r.header.policy)
    params = r.params()
    cs = r.header.chunk_size
    for i in (0, 17, 63):
        start = i - i % cs
        unit = policy.sample_unit(r.header.seed, start, np.full((cs, 2), 32), r.header.views)
        one = policy.sample(r.header.seed, i, 32, 32, r.header.views, pool=np.arange(start, start + cs), pool_sizes=np.full((cs, 2), 32))
        for name, value in unit.items():
            assert params[name].dtype == value.dtype
            np.testing.assert_array_equal(params[name][i], value[i - start])
            np.testing.assert_array_equal(one[name], value[i - start])  # one image's views = its rows of the unit


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine)")
def test_cpu_and_cuda_replay_agree(cifar64: Path) -> None:
    """Device noise of the replay engine: CPU vs CUDA on the same params (every preset). The
    crop/resize, flips, erasing and CutMix are integer or exact ops: identical bytes; the
    float RandAugment kernels and MixUp may differ by at most one level on a few pixels."""
    from dr.policy import get_policy, list_policies

    src = ImageFolderSource(cifar64)
    imgs = [torch.from_numpy(src.read(i)[0]).permute(2, 0, 1) for i in range(16)]
    for name in list_policies():
        p = get_policy(name, 32)
        unit = p.sample_unit(0, 0, np.full((16, 2), 32), 8)
        params = {k: a.reshape(-1, *a.shape[2:]) for k, a in unit.items()}
        index = np.repeat(np.arange(16), 8)
        partner = params["mix_partner"].astype(np.int64) if p.mix else None
        cpu = p.replay(imgs, params, index, partner_index=partner)
        gpu = p.replay([im.cuda() for im in imgs], params, index, partner_index=partner).cpu()
        err = (cpu.int() - gpu.int()).abs()
        frac = float((err > 0).float().mean())
        print(f"{name}: max {int(err.max())} differing {100 * frac:.3f}%")
        assert int(err.max()) <= 1 and frac < 0.01, name
        if "ra/re" not in name and "mix" not in name:
            assert torch.equal(cpu, gpu), name
