"""Helpers shared by test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

#: every array whose bytes must not depend on workers, chunk order or resume
STORE_ARRAYS = (
    "params/crop_box",
    "params/flip",
    "targets/ids",
    "targets/probs",
    "source/labels",
    "source/sizes",
    "source/digests",
    "source/skipped",
)


def store_bytes(url: str, arrays: tuple[str, ...] = STORE_ARRAYS, storage_options: dict[str, Any] | None = None) -> dict[str, bytes]:
    """The raw bytes of each array of a store, opened with plain zarr."""
    g = zarr.open_group(url, mode="r", storage_options=storage_options) if storage_options else zarr.open_group(url, mode="r")
    return {a: np.asarray(g[a][:]).tobytes() for a in arrays}


def rehash_store(url: str) -> None:
    """Record chunk digests for a store's current content, as a consistent but wrong writer
    would (so verify's later checks, not the digests, must catch the edit)."""
    from dr.storage import StoreReader
    from dr.storage.integrity import digest_paths, rows_digest

    g = zarr.open_group(url, mode="r+")
    h = StoreReader(url).header
    paths, cs, n = digest_paths(h), h.chunk_size, h.dataset.count
    for c in range(-(-n // cs)):
        rows = [np.frombuffer(rows_digest(np.asarray(g[p][c * cs : (c + 1) * cs]), h.digest_key()), dtype=np.uint8) for p in paths]
        g["build/digests"][c] = np.stack(rows)


def build_in_process(src: Any, teacher: str, policy: str, out: Any, crop_scale: float | None = None) -> str:
    """A real store written without Ray (the worker class in-process), for fast tests: V = 3,
    k = 3, 32-px views, chunks of 32 images."""
    from dr.builder import UnitWorker
    from dr.builder.config import BuildConfig
    from dr.builder.driver import make_header
    from dr.sources import ImageFolderSource
    from dr.storage import StoreWriter
    from dr.teachers import Ensemble

    cfg = BuildConfig(
        source=str(src),
        teachers=[teacher],
        policy=policy,
        crop_scale=crop_scale,
        output_size=32,
        views=3,
        topk=3,
        chunk_size=32,
        out=str(out),
    )
    source = ImageFolderSource(src)
    ens = Ensemble.from_specs([teacher])
    header = make_header(cfg, source, ens.describe(), 10)
    writer = StoreWriter.create(str(out), header, source.labels())
    worker = UnitWorker(source, header.policy, [teacher], temperature=1.0, views=3, topk=3, seed=0, forward_group=header.forward_group)
    for c in range(writer.n_chunks):
        a, b = writer.chunk_rows(c)
        r = worker.compute(a, b)
        writer.write_chunk(c, r.arrays, r.skipped)
    writer.finalize()
    return str(out)
