#!/usr/bin/env python
"""Loader throughput: ReinforcedDataset vs torchvision ImageFolder, same images, same workers.

Two image sets: the bundled CIFAR-10 sample (1,000 JPEGs, 32x32, views at 32 px) and an
ImageNet-sized set (the first 300 sample images upscaled to 500x375 JPEGs, views at 224 px).
For each it builds an `rrc` store with the demo teacher, then iterates, in one run and with
the same DataLoader settings:

* baseline: ``torchvision.datasets.ImageFolder`` + v2 ``RandomResizedCrop`` + flip + ToDtype;
* ours: ``ReinforcedDataset`` replaying stored RRC + flip views, with soft targets.

Also times one image's metadata record (params + top-k) in both modes: in memory and read by
chunk (``memory_budget=0``, chunk-aware order). Prints a table, then one JSON line.

    python bench/loader.py [--workers 2] [--epochs 2] [--epochs-32 10] [--repeats 3] [--views 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from dr import ChunkAwareSampler, ReinforcedDataset
from dr.builder import BuildConfig, reinforce

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "assets" / "cifar10-sample"
TEACHER = f"python:dr.teachers.zoo:cifar_resnet@{REPO}/examples/assets/teacher/cifar_resnet20.safetensors?depth=20&width=16"


def rate(loader: DataLoader, epochs: int, set_epoch=None) -> float:
    n, t0 = 0, None
    for e in range(epochs + 1):  # epoch 0 warms the workers up
        if set_epoch:
            set_epoch(e)
        if e == 1:
            t0 = time.perf_counter()
        for batch in loader:
            if e >= 1:
                n += len(batch[0])
    return n / (time.perf_counter() - t0)


def latency(ds: ReinforcedDataset, order: list[int], reps: int) -> tuple[float, float]:
    times = []
    for i in order[:reps]:
        t = time.perf_counter()
        ds.record(i, ds.view_index(i))
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 99))


def make_imagenet_sized(dest: Path, count: int) -> Path:
    """Upscale the first ``count`` sample images to 500x375 JPEGs (realistic decode cost)."""
    from PIL import Image

    files = sorted(SAMPLE.glob("*/*.jpg"))
    step = max(1, len(files) // count)
    for f in files[::step][:count]:
        (dest / f.parent.name).mkdir(parents=True, exist_ok=True)
        Image.open(f).convert("RGB").resize((500, 375), Image.Resampling.BICUBIC).save(dest / f.parent.name / f.name, quality=90)
    return dest


def measure(folder: Path, size: int, store: str, args: argparse.Namespace) -> dict[str, float]:
    reinforce(
        BuildConfig(
            source=str(folder),
            teachers=[TEACHER],
            policy="rrc",
            output_size=size,
            views=args.views,
            topk=9,
            chunk_size=100,
            out=store,
            class_map="names",  # a subset may miss some of the teacher's classes
        ),
        progress=False,
    )
    kw = dict(batch_size=args.batch_size, num_workers=args.workers, persistent_workers=args.workers > 0, shuffle=True)
    base_tf = v2.Compose(
        [v2.PILToTensor(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True)]
    )
    base = torchvision.datasets.ImageFolder(str(folder), transform=base_tf)
    ours = ReinforcedDataset(store, folder)
    # alternate the two loaders (ABAB...) and take each one's median: a short run on a shared
    # machine is noisy, and whatever load drifts over the run falls on both alike
    epochs = args.epochs_32 if size <= 64 else args.epochs
    base_rates, our_rates = [], []
    for _ in range(args.repeats):
        base_rates.append(rate(DataLoader(base, **kw), epochs))
        our_rates.append(rate(DataLoader(ours, **kw), epochs, ours.set_epoch))
    r_base, r_ours = float(np.median(base_rates)), float(np.median(our_rates))
    order = list(np.random.default_rng(0).permutation(len(ours)))
    med, p99 = latency(ours, order, 1000)
    chunked = ReinforcedDataset(store, folder, memory_budget=0)
    med_c, p99_c = latency(chunked, list(ChunkAwareSampler(chunked, window=2)), 1000)
    return {
        "ours": r_ours,
        "base": r_base,
        "ratio": r_ours / r_base,
        "med": med,
        "p99": p99,
        "med_c": med_c,
        "p99_c": p99_c,
        "images": len(ours),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement at 224 px")
    p.add_argument(
        "--epochs-32", type=int, default=10, help="timed epochs per measurement at 32 px (1,000 tiny images: an epoch is ~0.2 s)"
    )
    p.add_argument("--repeats", type=int, default=3, help="alternating measurements of each loader (the median is reported)")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--large-images", type=int, default=300)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        small = measure(SAMPLE, 32, f"{tmp}/c.zarr", args)
        large = measure(make_imagenet_sized(Path(tmp) / "large", args.large_images), 224, f"{tmp}/l.zarr", args)
    print(f"{'images':<30}{'ImageFolder+v2 RRC':>20}{'ReinforcedDataset':>20}{'ratio':>8}{'record median/p99 ms (memory | chunked)':>44}")
    for name, r in (("CIFAR-10 32x32 -> 32", small), ("500x375 JPEG -> 224", large)):
        lat = f"{r['med']:.4f}/{r['p99']:.4f} | {r['med_c']:.4f}/{r['p99_c']:.4f}"
        print(f"{name:<30}{r['base']:>20.0f}{r['ours']:>20.0f}{r['ratio']:>8.3f}{lat:>44}")
    print(
        f"samples/s with {args.workers} DataLoader workers, batch {args.batch_size}: median of {args.repeats} alternating "
        f"measurements of {args.epochs} (224 px) / {args.epochs_32} (32 px) epochs after a warm-up epoch"
    )
    out = {
        "ratio": round(large["ratio"], 3),
        "ratio_imagenet_size": round(large["ratio"], 3),
        "ratio_cifar32": round(small["ratio"], 3),
        "read_median_ms": round(large["med"], 4),
        "read_p99_ms": round(large["p99"], 4),
        "chunked_read_median_ms": round(large["med_c"], 4),
        "chunked_read_p99_ms": round(large["p99_c"], 4),
        "samples_per_s": {
            "imagenet_size": [round(large["base"], 1), round(large["ours"], 1)],
            "cifar32": [round(small["base"], 1), round(small["ours"], 1)],
        },
        "workers": args.workers,
        "repeats": args.repeats,
        "epochs": {"imagenet_size": args.epochs, "cifar32": args.epochs_32},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
