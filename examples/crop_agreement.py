#!/usr/bin/env python
"""How much of an image's label survives a random resized crop: the teachers' top-1 agreement
with the labels of ``rrc`` views, per smallest crop area (``--crop-scale``).

A view whose crop lost the object is labelled by the teachers with whatever is left in it --
the soft label is right about the view, but the view is a poor training example for the
class. At 64 px a crop of 8 % of the image is 18 x 18 source pixels. This script samples views
of a seeded subset of a labelled folder at several crop ranges, with the same sampler and
replay kernels a build uses, runs the teacher ensemble on them and reports, per range, the
share of views whose top-1 is the image's label and the mean top-1 probability::

    python examples/crop_agreement.py --data runs/tin100-v2/data/train \\
        --teachers-dir examples/assets/teachers-tin100-v2 --out examples/results/crop-agreement-tin100.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proof_common import machine, shipped_cards

from dr.policy import ImageBank, get_policy
from dr.sources import ImageFolderSource
from dr.teachers import Ensemble


def measure(
    source: ImageFolderSource, ensemble: Ensemble, scales: list[float], images: int, views: int, size: int, seed: int
) -> list[dict]:
    """Per crop range: views, top-1 agreement with the labels, mean top-1 probability."""
    pick = np.sort(np.random.default_rng(seed).choice(len(source), size=min(images, len(source)), replace=False))
    decoded = [source.read(int(i))[0] for i in pick]
    labels = torch.from_numpy(source.labels()[pick].astype(np.int64))
    bank = ImageBank([torch.from_numpy(img).permute(2, 0, 1) for img in decoded])
    sizes = np.asarray([img.shape[:2] for img in decoded])
    out = []
    for scale in scales:
        policy = get_policy("rrc", size, crop_scale=scale)
        params = policy.sample_unit(seed, 0, sizes, views)  # the build's keyed sampler, image i = position i
        hits, top1, n = 0, 0.0, 0
        t0 = time.perf_counter()
        for g0 in range(0, len(pick), 64):
            g1 = min(g0 + 64, len(pick))
            flat = {k: a[g0:g1].reshape(-1, *a.shape[2:]) for k, a in params.items()}
            index = np.repeat(np.arange(g0, g1), views)
            with torch.inference_mode():
                probs = ensemble(policy.replay(bank, flat, index))
            p1, c1 = probs.max(1)
            hits += int((c1 == labels[index]).sum())
            top1 += float(p1.sum())
            n += len(index)
        out.append(
            {
                "crop_scale": scale,
                "views": n,
                "top1_agreement": round(hits / n, 4),
                "mean_top1_prob": round(top1 / n, 4),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(f"crop scale {scale:g}-1: agreement {100 * hits / n:.2f}% of {n} views, mean top-1 prob {top1 / n:.3f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a labelled ImageFolder (the build's train folder)")
    p.add_argument("--teachers-dir", required=True, help="a folder of teacher cards (examples/assets/teachers-*)")
    p.add_argument("--scales", default="0.08,0.15,0.25,0.35,0.5,0.7,1.0", help="smallest crop areas to measure")
    p.add_argument("--images", type=int, default=5000, help="images sampled (seeded)")
    p.add_argument("--views", type=int, default=2, help="views per image and range")
    p.add_argument("--size", type=int, default=64, help="view size in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="the teachers' arithmetic (as the store's --precision)")
    p.add_argument("--out", default=None, help="write the JSON record here")
    args = p.parse_args(argv)
    cards = shipped_cards(Path(args.teachers_dir), 1, "the teacher training script")
    ensemble = Ensemble.from_specs([c["teacher_spec"] for c in cards], precision=args.precision)
    ensemble.optimize(channels_last=True)
    scales = [float(x) for x in args.scales.split(",")]
    rows = measure(ImageFolderSource(args.data), ensemble, scales, args.images, args.views, args.size, args.seed)
    record = {
        "what": "teacher ensemble top-1 agreement with the labels of rrc views, per smallest crop area",
        "data": str(args.data),
        "teachers": [Path(c["teacher_spec"].split("@")[1].split("?")[0]).name for c in cards],
        "images": args.images,
        "views_per_image": args.views,
        "size": args.size,
        "seed": args.seed,
        "precision": args.precision,
        "machine": machine("cpu"),
        "rows": rows,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
