"""A complete store opened read-only reads its done map and chunk digests once (at ImageNet
scale each is thousands of small inner chunks); the copies it hands out are the caller's, and a
store being written is always read afresh."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import TinyImages, synthetic_store

from dr.sources import TorchDatasetSource
from dr.storage import StoreReader
from dr.storage.layout import CHUNK_DIGESTS, DIGESTS, DONE, LABELS


def test_done_and_digests_are_read_once_and_checked_alike(tmp_path: Path, monkeypatch) -> None:
    source = TorchDatasetSource(TinyImages(96, classes=4))
    store = synthetic_store(tmp_path / "s.zarr", source, views=2, topk=2, chunk_size=32)
    reads: list[str] = []
    reader = StoreReader(store)
    real_array = reader.array

    def counting(path: str):  # type: ignore[no-untyped-def]
        reads.append(path)
        return real_array(path)

    monkeypatch.setattr(reader, "array", counting)
    first = reader.done()
    first[:] = False  # the caller's copy
    assert reader.done().all() and reads.count(DONE) == 1
    a, problems_a = reader.load_checked([LABELS])
    b, problems_b = reader.load_checked([DIGESTS])
    assert not problems_a and not problems_b and len(a[LABELS]) == 96 and len(b[DIGESTS]) == 96
    assert reads.count(DONE) == 1 and CHUNK_DIGESTS in reader._memo

    # a damaged row is still found through the memoised digests
    fresh = StoreReader(store)
    fresh.load_checked([LABELS])  # memoises
    writer = StoreReader(store, writable=True)
    labels = np.asarray(writer.group[LABELS][:])
    labels[40] = (labels[40] + 1) % 4
    writer.group[LABELS][:] = labels
    _, problems = fresh.load_checked([LABELS])
    assert [(p.path, p.chunk) for p in problems] == [(LABELS, 1)]
    assert not writer._frozen and not StoreReader(store, allow_incomplete=True)._frozen
