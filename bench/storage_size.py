#!/usr/bin/env python
"""Stored bytes per view (params + targets, as compressed) for every preset, k = 10, on real builds,
in the store layout of 0.3: shards, uint8 probabilities, and with derived parameters.

Two image sets, built in one run:

* CIFAR-10: 520 images of the bundled sample (52 per class), the demo teacher (10 classes, so k = 10 keeps
  every class), V = 32, cifar* presets;
* ImageNet-sized: 70 sample images (7 per class) upscaled to 500x375, a 1000-class timm ``test_resnet``
  (random init: its soft labels are flatter than a trained teacher's), V = 32, rrc* presets.

Every store is built with ``--probs-dtype uint8`` (default shards). Per preset the JSON gives
``bytes_per_view`` (stored parameters + targets), ``bytes_per_view_derived`` (a store with
``--params derived``: the targets alone; its parameters' digests are per chunk, a few bytes),
and ``bytes_per_view_float16`` (the same targets with float16 probabilities, compressed with the
same codec: what 0.2 stored). Printed beside ml-dr's published ImageNet+ size (about 73-104
B/view). ``--out FILE`` writes the JSON (``bench/results/storage-size.json``).

    python bench/storage_size.py --out bench/results/storage-size.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dr.builder import BuildConfig, reinforce
from dr.policy import list_policies
from dr.storage import StoreReader
from dr.storage.layout import IDS, PROBS, TARGET_ARRAYS, compressors, decode_probs, is_param, spec_of

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "assets" / "cifar10-sample"
CIFAR_TEACHER = f"python:dr.teachers.zoo:cifar_resnet@{REPO}/examples/assets/teacher/cifar_resnet20.safetensors?depth=20&width=16"
MLDR = "73-104"


def subset(dest: Path, per_class: int, size: tuple[int, int] | None) -> Path:
    from PIL import Image

    for cls in sorted(SAMPLE.iterdir()):
        (dest / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.iterdir())[:per_class]:
            img = Image.open(f).convert("RGB")
            if size:
                img = img.resize(size, Image.Resampling.BICUBIC)
            img.save(dest / cls.name / f.name, quality=90)
    return dest


def _object_bytes(store: str, array: str) -> int:
    """Bytes of an array's data objects (its shards, or chunks), without its ``zarr.json``."""
    root = Path(store) / array / "c"
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def _float16_bytes(store: str) -> int:
    """Bytes ``targets/probs`` would take as float16 under the same chunking and codec."""
    import zarr

    r = StoreReader(store)
    probs = decode_probs(r.header, r.load(PROBS)).astype(np.float16)
    spec = spec_of(r.header, PROBS)
    mem = zarr.create_array(
        zarr.storage.MemoryStore(), shape=spec.shape, chunks=spec.chunks, shards=spec.shards, dtype="float16", compressors=compressors(spec)
    )
    mem[:] = probs
    return int(mem.nbytes_stored()) - len(mem.metadata.to_buffer_dict(zarr.core.buffer.default_buffer_prototype())["zarr.json"].to_bytes())


def measure(store: str) -> dict[str, Any]:
    """Bytes per view of the per-view arrays (parameters, targets).

    Counts their data objects: what grows with the dataset. Each array's ``zarr.json`` (~0.7
    KB, fixed) is left out: for these small stores it would add ~0.3 B/view per array, for
    ImageNet's 1.28 M images x V views it rounds to 0.00.
    """
    r = StoreReader(store)
    n_views = r.header.dataset.count * r.header.views
    names = [p for p in r.arrays() if is_param(p) or p in TARGET_ARRAYS]
    data = {p: _object_bytes(store, p) for p in names}
    params = sum(b for p, b in data.items() if is_param(p))
    targets = sum(b for p, b in data.items() if p in TARGET_ARRAYS)
    f16 = _float16_bytes(store)
    return {
        "bytes_per_view": round((params + targets) / n_views, 2),
        "bytes_per_view_derived": round(targets / n_views, 2),
        "bytes_per_view_float16": round((params + targets - data[PROBS] + f16) / n_views, 2),
        "params": round(params / n_views, 2),
        "targets": round(targets / n_views, 2),
        "ids": round(data[IDS] / n_views, 2),
        "probs": round(data[PROBS] / n_views, 2),
        "probs_float16": round(f16 / n_views, 2),
        "per_array": {p: round(b / n_views, 3) for p, b in sorted(data.items())},
        "probs_dtype": str(r.array(PROBS).dtype),
        "ids_dtype": str(r.array(IDS).dtype),
        "shard_images": r.header.layout.shard_images if r.header.layout is not None else None,
        "views": int(n_views),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the JSON here")
    p.add_argument("--presets", default=",".join(list_policies()), help="comma-separated presets (default: all)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        cifar = subset(t / "cifar", 52, None)
        large = subset(t / "large", 7, (500, 375))
        inet_teacher = "timm:test_resnet"  # random init (seeded): a 1000-class label space for the byte count
        for name in args.presets.split(","):
            is_cifar = name.startswith("cifar")
            src, teacher = (cifar, CIFAR_TEACHER) if is_cifar else (large, inet_teacher)
            out = str(t / f"{name.replace('/', '_')}.zarr")
            reinforce(
                BuildConfig(
                    source=str(src),
                    teachers=[teacher],
                    policy=name,
                    views=32,
                    topk=10,
                    chunk_size=64,
                    probs_dtype="uint8",
                    out=out,
                    allow_random_teachers=not is_cifar,
                ),
                progress=False,
            )
            results[name] = measure(out)
    print(
        f"{'preset':<18}{'images':>8}{'B/view':>9}{'derived':>9}{'float16':>9}{'params':>9}{'ids':>7}{'probs':>7}   (ml-dr ImageNet+: {MLDR} B/view)"
    )
    for name, r in results.items():
        images = "CIFAR" if name.startswith("cifar") else "500x375"
        print(
            f"{name:<18}{images:>8}{r['bytes_per_view']:>9}{r['bytes_per_view_derived']:>9}{r['bytes_per_view_float16']:>9}"
            f"{r['params']:>9}{r['ids']:>7}{r['probs']:>7}"
        )
    print("B/view: stored parameters + uint8 targets; derived: --params derived (targets alone); float16: 0.2's probabilities")
    record = {"what": "stored bytes per view by preset, k = 10, V = 32 (bench/storage_size.py)", "presets": results}
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
