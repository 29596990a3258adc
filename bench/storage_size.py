#!/usr/bin/env python
"""Stored bytes per view (params + targets, as compressed) for every preset, k = 10, on real builds.

Two image sets, built in one run:

* CIFAR-10: 512 images of the bundled sample, the demo teacher (10 classes, so k = 10 keeps
  every class), V = 32, cifar* presets;
* ImageNet-sized: 64 sample images upscaled to 500x375, a 1000-class timm ``test_resnet``
  (random init: its soft labels are flatter than a trained teacher's), V = 32, rrc* presets.

Printed beside ml-dr's published ImageNet+ size (about 73-104 B/view). The last line is JSON:
``{"cifar+mix+ra/re": {"bytes_per_view": ..., "params": ..., "targets": ...}, ...}``.

    python bench/storage_size.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from dr.builder import BuildConfig, reinforce
from dr.policy import list_policies
from dr.storage import StoreReader

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


def _chunk_bytes(store: str, array: str) -> int:
    """Bytes of an array's chunk files (its data), without its ``zarr.json`` (metadata)."""
    root = Path(store) / array / "c"
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def measure(store: str) -> dict[str, float | str]:
    """Bytes per view of the per-view arrays (params/*, targets/*).

    ``bytes_per_view`` counts their chunk files: what grows with the dataset. Each array's
    ``zarr.json`` (~0.7 KB, fixed) is reported apart, as ``metadata_bytes``: for these small
    stores it adds ~0.3 B/view per array (``on_disk_bytes_per_view``), for ImageNet's 1.28 M
    images x V views it rounds to 0.00.
    """
    r = StoreReader(store)
    n_views = r.header.dataset.count * r.header.views
    names = [p for p in r.arrays() if p.startswith(("params/", "targets/"))]
    data = {p: _chunk_bytes(store, p) for p in names}
    meta = sum(r.arrays()[p].nbytes_stored() - data[p] for p in names)
    params = sum(b for p, b in data.items() if p.startswith("params/"))
    targets = sum(b for p, b in data.items() if p.startswith("targets/"))
    return {
        "bytes_per_view": round((params + targets) / n_views, 2),
        "params": round(params / n_views, 2),
        "targets": round(targets / n_views, 2),
        "largest": max(data, key=lambda p: data[p]),
        "per_array": {p: round(b / n_views, 3) for p, b in sorted(data.items())},
        "metadata_bytes": int(meta),
        "on_disk_bytes_per_view": round((params + targets + meta) / n_views, 2),
        "views": int(n_views),
    }


def main() -> None:
    torch.manual_seed(0)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        cifar = subset(t / "cifar", 52, None)
        large = subset(t / "large", 7, (500, 375))
        inet_teacher = "timm:test_resnet"  # random init (seeded): a 1000-class label space for the byte count
        for name in list_policies():
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
                    out=out,
                    allow_random_teachers=not is_cifar,
                ),
                progress=False,
            )
            results[name] = measure(out)
    print(
        f"{'preset':<18}{'images':>8}{'B/view':>9}{'params':>9}{'targets':>9}{'on disk':>9}  largest array"
        f"      (ml-dr ImageNet+: {MLDR} B/view)"
    )
    for name, r in results.items():
        images = "CIFAR" if name.startswith("cifar") else "500x375"
        print(
            f"{name:<18}{images:>8}{r['bytes_per_view']:>9}{r['params']:>9}{r['targets']:>9}"
            f"{r['on_disk_bytes_per_view']:>9}  {r['largest']}"
        )
    print("B/view: chunk data of the per-view arrays (grows with the dataset); on disk: plus each array's zarr.json,")
    print("a fixed ~0.7 KB that these small stores spread over few views (for ImageNet it rounds to 0.00 B/view)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
