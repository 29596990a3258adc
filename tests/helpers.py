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
