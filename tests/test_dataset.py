"""ReinforcedDataset on a real store of real JPEGs."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from dr import ChunkAwareSampler, ReinforcedDataset
from dr.errors import StoreMismatchError
from dr.loss import soft_cross_entropy
from dr.teachers import Ensemble


@pytest.fixture(scope="module")
def ds(cifar64_store: str, cifar64: Path) -> ReinforcedDataset:
    return ReinforcedDataset(cifar64_store, cifar64)


def test_items_shapes_and_targets(ds: ReinforcedDataset) -> None:
    assert len(ds) == 64 and ds.in_memory
    img, (ids, probs) = ds[5]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    assert ids.shape == (3,) and ids.dtype == torch.int64 and probs.dtype == torch.float32
    assert (probs[:-1] >= probs[1:]).all()
    batch = next(iter(DataLoader(ds, batch_size=8)))
    assert batch[0].shape == (8, 3, 32, 32) and batch[1][0].shape == (8, 3) and batch[1][1].shape == (8, 3)
    loss = soft_cross_entropy(torch.randn(8, 10), batch[1])
    assert torch.isfinite(loss)


def test_replayed_views_get_the_stored_labels_from_the_teacher(ds: ReinforcedDataset, tiny_teacher: str) -> None:
    ens = Ensemble.from_specs([tiny_teacher])
    raw = ReinforcedDataset(ds.store, ds.source, transform=lambda v: v)
    for i in (0, 21, 63):
        for e in range(4):
            raw.set_epoch(e)
            view, (ids, _) = raw[i]
            assert int(ens(view[None]).argmax()) == int(ids[0])


def test_each_view_once_per_v_epochs(ds: ReinforcedDataset) -> None:
    V = ds.views
    for i in range(len(ds)):
        used = [ds.view_index(i, e) for e in range(V)]
        assert sorted(used) == list(range(V))
        assert sorted(ds.view_index(i, e) for e in range(V, 2 * V)) == list(range(V))
    # different images use different orders (seeded per image)
    assert len({tuple(ds.view_index(i, e) for e in range(V)) for i in range(len(ds))}) > 1
    # the per-process cache of choices (blocks of images, two epochs) is view_choice exactly
    from dr.dataset import view_choice

    for e in (0, 5, 0, 9, 2):
        idx = np.arange(len(ds))
        assert [ds.view_index(int(i), e) for i in idx] == view_choice(ds.seed, idx, e, V).tolist()


def test_workers_follow_set_epoch_and_match_in_process(ds: ReinforcedDataset) -> None:
    loader = DataLoader(ds, batch_size=16, num_workers=2, persistent_workers=True)
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        got = torch.cat([b[0] for b in loader])
        expect = torch.stack([ds[i][0] for i in range(len(ds))])
        assert torch.equal(got, expect), epoch
    ds.set_epoch(0)


def test_distributed_sampler_splits_the_epoch(ds: ReinforcedDataset) -> None:
    parts = [list(DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=3)) for r in (0, 1)]
    assert sorted(parts[0] + parts[1]) == list(range(64)) and not set(parts[0]) & set(parts[1])


def test_chunked_mode_equals_in_memory_and_sampler_is_a_permutation(ds: ReinforcedDataset) -> None:
    chunked = ReinforcedDataset(ds.store, ds.source, memory_budget=0)
    assert not chunked.in_memory
    sampler = ChunkAwareSampler(chunked, window=2, seed=1)
    order = list(sampler)
    assert sorted(order) == list(range(64)) and order != list(range(64))
    # a window of 2 chunks: the first 32 indices come from exactly two chunks
    assert len({i // 16 for i in order[:32]}) == 2
    for i in order[:20]:
        a, ta = chunked[i]
        b, tb = ds[i]
        assert torch.equal(a, b) and torch.equal(ta[0], tb[0]) and torch.equal(ta[1], tb[1])
    assert len(chunked._cache) <= chunked.cache_chunks
    halves = [list(ChunkAwareSampler(chunked, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(halves[0] + halves[1]) == list(range(64))


def test_dense_targets(ds: ReinforcedDataset) -> None:
    smooth = ReinforcedDataset(ds.store, ds.source, dense="smooth")
    zeros = ReinforcedDataset(ds.store, ds.source, dense="zeros")
    _, t = smooth[7]
    _, z = zeros[7]
    _, (ids, probs) = ds[7]
    assert t.shape == (10,) and abs(float(t.sum()) - 1) < 1e-5
    torch.testing.assert_close(z[ids], probs)
    assert float(z.sum()) == pytest.approx(float(probs.sum()))


def test_p_original_rate_and_one_hot_targets(ds: ReinforcedDataset) -> None:
    mixed = ReinforcedDataset(ds.store, ds.source, p_original=0.3, seed=5)
    originals = 0
    for e in range(10):
        mixed.set_epoch(e)
        for i in range(64):
            _, (ids, probs) = mixed[i]
            if probs[0] == 1.0:
                originals += 1
                assert int(ids[0]) == int(mixed.labels[i]) and probs[1:].sum() == 0
    assert 0.2 < originals / 640 < 0.4  # binomial(640, 0.3): mean 192, sd 11.6
    custom = ReinforcedDataset(ds.store, ds.source, p_original=1.0, original_transform=lambda img: img.float() / 255)
    img, (ids, probs) = custom[3]
    assert torch.equal(img, ds.image(3).float() / 255) and probs[0] == 1.0


def test_refuses_a_different_source(ds: ReinforcedDataset, cifar64: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(cifar64, other)
    victim = sorted((other / "cat").iterdir())[0]
    Image.open(victim).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(victim, quality=90)
    with pytest.raises(StoreMismatchError, match="content of 1 of 64"):
        ReinforcedDataset(ds.store, other, verify_source="all")
    victim.unlink()
    with pytest.raises(StoreMismatchError, match="63 images vs 64"):
        ReinforcedDataset(ds.store, other)
    np.testing.assert_array_equal(ReinforcedDataset(ds.store, cifar64, verify_source="all").labels, ds.labels)


def test_view_choice_is_the_same_one_item_at_a_time_or_vectorised() -> None:
    from dr.dataset import view_choice

    idx = np.arange(300)
    for views in (1, 3, 8, 50, 100):
        for epoch in (0, 7, 151):
            batch = view_choice(3, idx, epoch, views)
            single = np.concatenate([view_choice(3, [i], epoch, views) for i in idx])
            np.testing.assert_array_equal(batch, single)
    # each view exactly once per cycle of V epochs
    seen = np.stack([view_choice(1, idx, e, 8) for e in range(8)])
    assert (np.sort(seen, axis=0) == np.arange(8)[:, None]).all()
