#!/usr/bin/env python
"""Build throughput with 1 and 2 teacher actors on this host, same build, one run.

    python bench/scale.py [--views 8] [--policy cifar]

On a GPU machine each actor owns a GPU (the goal is >= 1.8x with two GPUs). On a CPU-only
machine the actors share the same cores (2 actors x 1 thread vs 1 actor x all threads), so
the ratio shows the pipeline's overhead, not scaling. Also projects an ImageNet+ build
(1,281,167 images x 50 views) from the measured per-actor rate:
``hours = images * V / (actors * views_per_s_per_actor * efficiency) / 3600``.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import ray
import torch

from dr.builder import BuildConfig, reinforce

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "assets" / "cifar10-sample"
TEACHER = f"python:dr.teachers.zoo:cifar_resnet@{REPO}/examples/assets/teacher/cifar_resnet20.safetensors?depth=20&width=16"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--policy", default="cifar")
    args = p.parse_args()
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")  # private: never another program's cluster
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = ray.cluster_resources().get("CPU", 1)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            cfg = BuildConfig(
                source=str(SAMPLE),
                teachers=[TEACHER],
                policy=args.policy,
                views=args.views,
                topk=5,
                chunk_size=64,
                workers=n,
                out=f"{tmp}/s{n}.zarr",
            )
            t0 = time.perf_counter()
            r = reinforce(cfg, progress=False)
            rates[n] = r.views_per_second
            print(
                f"{n} actor(s): {r.views_computed} views in {time.perf_counter() - t0:.1f}s -> {r.views_per_second:.0f} views/s (incl. actor start)"
            )
    ratio = rates[2] / rates[1]
    per_actor = rates[1]
    hours = {k: round(1_281_167 * 50 / (k * per_actor * 0.9) / 3600, 1) for k in (1, 8, 32)}
    device = torch.cuda.get_device_name() if gpus else f"CPU ({int(cpus)} cores shared by the actors)"
    print(f"ratio 2/1 = {ratio:.2f} on {device}")
    print(f"ImageNet+ (V=50) projection at this per-actor rate and 90% efficiency: {hours} hours for 1/8/32 actors")
    print(
        json.dumps(
            {
                "views_per_s_1": round(rates[1], 1),
                "views_per_s_2": round(rates[2], 1),
                "ratio": round(ratio, 3),
                "device": device,
                "imagenet_plus_hours": hours,
            }
        )
    )


if __name__ == "__main__":
    main()
