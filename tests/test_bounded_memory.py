"""Readers with bounded memory: a store whose metadata exceeds the budget is read by chunk (each
DataLoader worker's memory stays near the budget), and metadata held in memory is shared with
the workers, forked or spawned, instead of copied into each."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyImages, synthetic_store
from torch.utils.data import DataLoader

from dr import ReinforcedDataset
from dr.sources import TorchDatasetSource

MB = 1 << 20


def _memory() -> tuple[int, int]:
    """This process's resident and private (not shared) bytes, from /proc/self/smaps_rollup."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) * 1024
    return fields["Rss"], fields["Private_Clean"] + fields["Private_Dirty"]


class Measured(ReinforcedDataset):
    """Items that carry the memory of the process that made them (a DataLoader worker): its
    private bytes, the bytes its Python and NumPy allocations hold now (``tracemalloc``, which
    counts what the reader keeps and not the parent's pages a forked worker copies on write), its
    pid and the chunks its cache holds."""

    trace = False  # tracemalloc on: what the reader holds (private bytes are not read then: /proc is slow)

    def __getitem__(self, item: int) -> tuple:  # type: ignore[override]
        if self.trace and not tracemalloc.is_tracing():
            tracemalloc.start()
        view, _ = super().__getitem__(item)
        held, private = (tracemalloc.get_traced_memory()[0], 0) if self.trace else (0, _memory()[1])
        return view.shape[-1], torch.tensor([held, private, os.getpid(), len(self._cache)], dtype=torch.int64)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, TorchDatasetSource]:
    """4,096 images, V = 64, k = 16: 15 MB of metadata (parameters and targets)."""
    source = TorchDatasetSource(TinyImages(4096, classes=100))
    store = synthetic_store(tmp_path_factory.mktemp("big") / "big.zarr", source, views=64, topk=16, chunk_size=256)
    return store, source


@pytest.fixture(scope="module")
def chunked(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, TorchDatasetSource]:
    """1,024 images in 16 chunks of 64, V = 64, k = 16: 3.7 MB of metadata."""
    source = TorchDatasetSource(TinyImages(1024, classes=100))
    store = synthetic_store(tmp_path_factory.mktemp("chunked") / "c.zarr", source, views=64, topk=16, chunk_size=64)
    return store, source


def _epoch(ds: ReinforcedDataset, context: str, items: int | None = None, batch: int = 64) -> np.ndarray:
    """Memory readings of the workers while they serve ``items`` items (default: an epoch) in
    the dataset's own sampler's order: one row per item, (held, private, pid, cached chunks)."""
    sampler = list(ds.sampler(seed=1))[:items]
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=2, multiprocessing_context=context)
    return torch.cat([b[1] for b in loader]).numpy()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_store_over_budget_is_read_by_chunk_within_the_budget(chunked, context: str) -> None:
    store, source = chunked
    ds = Measured(store, source, verify_source="none", memory_budget=MB, cache_chunks=2)
    ds.trace = True
    assert not ds.in_memory and ds.metadata_bytes > 3 * MB  # 16 chunks of ~0.23 MB
    readings = _epoch(ds, context, batch=16)  # 4 batches a chunk: both workers read every chunk
    assert readings[:, 3].max() <= 2  # each worker's cache never holds more than its 2 chunks
    for pid in np.unique(readings[:, 2]):  # each worker reads every chunk; once warm, what it holds stays put
        held = readings[readings[:, 2] == pid, 0]
        grown = int(held.max() - held[len(held) // 8])
        print(f"{context} worker {pid}: grew {grown / MB:.2f} MB of {ds.metadata_bytes / MB:.2f} MB")
        # a reader that kept what it read would grow by the 14 chunks after the first two: ~3.2 MB
        assert grown < ds.metadata_bytes / 4, (
            f"a {context} worker's allocations grew {grown / MB:.1f} MB reading 16 chunks through a 2-chunk cache"
        )


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_metadata_in_memory_is_shared_with_the_workers(big, context: str) -> None:
    store, source = big
    held = Measured(store, source, verify_source="none")
    assert held.in_memory and held.metadata_bytes > 12 * MB
    by_chunk = Measured(store, source, verify_source="none", memory_budget=0, cache_chunks=2)
    # a worker that held its own copy of the metadata would hold ~15 MB more private memory than a
    # worker that reads by chunk; shared pages count in RSS, not in private memory
    extra = int(_epoch(held, context, 512)[:, 1].max() - _epoch(by_chunk, context, 512)[:, 1].max())
    assert extra < held.metadata_bytes / 2, f"{context} workers hold {extra / MB:.0f} MB more privately: the metadata was copied"
