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


def build_in_process(src: Any, teacher: str, policy: str, out: Any, crop_scale: float | None = None, **config: Any) -> str:
    """A real store written without Ray (the worker class in-process), for fast tests: V = 3,
    k = 3, 32-px views, chunks of 32 images; ``config``: other BuildConfig fields (the layout:
    shard_images, probs_dtype, params)."""
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
        **config,
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


class TinyImages:
    """A map-style dataset of seeded random ``size x size`` RGB images and labels (a source for
    synthetic stores: ``dr.sources.TorchDatasetSource(TinyImages(...))``)."""

    def __init__(self, n: int, size: int = 8, classes: int = 10, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        self.targets = (np.arange(n) % classes).tolist()
        self.classes = [f"c{i}" for i in range(classes)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], self.targets[i]


def synthetic_store(
    out: Any, source: Any, *, views: int, topk: int, chunk_size: int, policy: str = "rrc", output_size: int = 8, **config: Any
) -> str:
    """A complete, valid store of ``source`` written without teachers: the parameters a build
    would sample (the keyed sampler), random sorted top-k targets. For tests of the readers
    at sizes a real build would take minutes for."""
    from dr.builder.config import BuildConfig
    from dr.builder.driver import make_header
    from dr.policy import Policy
    from dr.storage import StoreWriter
    from dr.storage.layout import DIGESTS, IDS, PROBS, SIZES, SKIPPED, param_path

    classes = len(source.classes)
    cfg = BuildConfig(
        source="synthetic",
        teachers=["timm:none@none.safetensors"],
        policy=policy,
        output_size=output_size,
        views=views,
        topk=topk,
        chunk_size=chunk_size,
        out=str(out),
        **config,
    )
    header = make_header(cfg, source, {"teachers": [{"spec": "synthetic"}], "temperature": 1.0}, classes)
    writer = StoreWriter.create(str(out), header, source.labels())
    pol = Policy.from_dict(writer.header.policy)
    rng = np.random.default_rng(0)
    for c in range(writer.n_chunks):
        a, b = writer.chunk_rows(c)
        sizes = np.asarray([source.read(i)[0].shape[:2] for i in range(a, b)])
        params = pol.chunk_params(0, a, sizes, np.zeros(b - a, bool), views)
        probs = np.sort(rng.random((b - a, views, topk)), axis=-1)[..., ::-1] / topk  # sorted, mass < 1
        ids = (rng.integers(0, classes, (b - a, views, 1)) + np.arange(topk)) % classes  # distinct per view
        arrays = {param_path(k): v for k, v in params.items()}
        digests = np.stack([np.frombuffer(source.read(i)[1], np.uint8) for i in range(a, b)])
        arrays.update({IDS: ids, PROBS: probs, SIZES: sizes.astype(np.uint32), DIGESTS: digests, SKIPPED: np.zeros(b - a, np.uint8)})
        writer.write_chunk(c, arrays)
    writer.finalize()
    return str(out)
