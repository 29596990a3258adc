#!/usr/bin/env python
"""Replay error across devices: the same stored parameters replayed on two devices.

For every preset it samples views of the bundled CIFAR-10 sample (32 px; ``rrc`` presets crop
the 32x32 images and resize back) and of the same images upscaled to ~500x375 (224 px, ``rrc``
presets), replays them on a reference (CPU, torch's native uint8 resize) and on a second
device (CUDA when present, else the CPU's batched kernels), and reports the pixel error (max
and mean |delta| in levels, % of pixels that differ) and, on the 32-px views, what the demo
teacher says about both (top-1 agreement, mean |delta p|). One JSON line last.

    python bench/device_error.py [--views 1000] [--smoke]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dr.policy import ImageBank, get_policy, list_policies
from dr.sources import ImageFolderSource
from dr.teachers import Ensemble

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "assets" / "cifar10-sample"
TEACHER = f"python:dr.teachers.zoo:cifar_resnet@{REPO}/examples/assets/teacher/cifar_resnet20.safetensors?depth=20&width=16"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--views", type=int, default=1000, help="views per preset and size")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.views = 40
    other = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    other_method = "batched"
    src = ImageFolderSource(SAMPLE)
    n_img = max(args.views // 8, 2)
    small = [torch.from_numpy(src.read(i)[0]).permute(2, 0, 1) for i in range(n_img)]
    big = [
        F.interpolate(t[None].float(), size=(375, 500), mode="bicubic")[0].round().clamp(0, 255).to(torch.uint8)
        for t in small[: max(n_img // 4, 2)]
    ]
    ens = Ensemble.from_specs([TEACHER], precision="fp32")
    rows = []
    for kind, imgs, size in (("32", small, 32), ("224", big, 224)):
        ref_bank, dev_bank = ImageBank(imgs), ImageBank(imgs, device=other)
        for name in list_policies():
            if kind == "224" and not name.startswith("rrc"):
                continue
            policy = get_policy(name, size)
            v = max(args.views // len(imgs), 1)
            unit = policy.sample_unit(0, 0, ref_bank.sizes, v)
            flat = {k: a.reshape(-1, *a.shape[2:]) for k, a in unit.items()}
            index = np.repeat(np.arange(len(imgs)), v)
            partner = flat["mix_partner"].astype(np.int64) if "mix_partner" in flat else None
            a = policy.replay(ref_bank, flat, index, partner_index=partner, method="native")
            b = policy.replay(dev_bank, flat, index, partner_index=partner, method=other_method).cpu()
            d = (a.int() - b.int()).abs()
            row: dict[str, Any] = {
                "size": size,
                "preset": name,
                "views": len(index),
                "max_levels": int(d.max()),
                "mean_levels": float(d.float().mean()),
                "pixels_differing_pct": 100.0 * float((d > 0).float().mean()),
            }
            if size == 32:
                with torch.inference_mode():
                    pa, pb = ens(a), ens(b)
                row["teacher_top1_agreement_pct"] = 100.0 * float((pa.argmax(1) == pb.argmax(1)).float().mean())
                row["teacher_mean_abs_dp"] = float((pa - pb).abs().mean())
            rows.append(row)
            print(
                f"{size:4}px {name:16} max {row['max_levels']} levels, mean {row['mean_levels']:.5f}, "
                f"{row['pixels_differing_pct']:.4f}% pixels differ"
                + (f", teacher top-1 agreement {row['teacher_top1_agreement_pct']:.2f}%" if "teacher_top1_agreement_pct" in row else ""),
                flush=True,
            )
    result = {
        "bench": "device_error",
        "reference": "cpu (native uint8 resize)",
        "other": f"{other.type} ({other_method} kernels)" + (f", {torch.cuda.get_device_name()}" if other.type == "cuda" else ""),
        "torch": torch.__version__,
        "rows": rows,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
