#!/usr/bin/env python
"""Student training speed: reinforced batches vs plain batches through the same DeviceReplay.

Builds a small CIFAR store (the bundled 1,000-image sample, the demo teacher, policy ``cifar``)
unless ``--store`` is given, keeps the images on the device with :class:`dr.replay.DeviceReplay`
and trains the same student (CIFAR ResNet-8, width 16; channels-last, bf16 autocast on CUDA)
for the same number of steps with:

* plain: fresh pad-crop + flip views (``DeviceReplay.fresh``), one-hot targets;
* reinforced: stored views replayed (``DeviceReplay.batch``), sparse top-k soft targets.

Reports images/s of each and the ratio reinforced / plain (goal >= 0.95), one JSON line last.

    python bench/train_speed.py [--batch 512] [--steps 50] [--store S --source DIR] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dr.builder import BuildConfig, reinforce
from dr.loss import soft_cross_entropy
from dr.policy import get_policy
from dr.replay import DeviceReplay
from dr.teachers.zoo import CIFAR_MEAN, CIFAR_STD, cifar_resnet

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "assets" / "cifar10-sample"
TEACHER = f"python:dr.teachers.zoo:cifar_resnet@{REPO}/examples/assets/teacher/cifar_resnet20.safetensors?depth=20&width=16"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(rep: DeviceReplay, device: torch.device, condition: str, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = cifar_resnet(depth=8, width=16, num_classes=rep.num_classes).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1) * 255
    plain = get_policy("cifar", rep.output_size)
    order = np.random.default_rng(0).permutation(np.resize(np.arange(len(rep)), (steps + 3) * batch))
    seen, t0 = 0, 0.0
    for s in range(steps + 3):  # 3 warm-up steps
        if s == 3:
            _sync(device)
            t0, seen = time.perf_counter(), 0
        items = order[s * batch : (s + 1) * batch]
        epoch = (s * batch) // len(rep)
        if condition == "reinforced":
            views, target = rep.batch(items, epoch)
        else:
            views, target = rep.fresh(items, epoch, policy=plain)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(((views.float() - mean) / std).contiguous(memory_format=torch.channels_last))
        loss = soft_cross_entropy(logits.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(items)
    _sync(device)
    return seen / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", help="an existing store (default: build one from the bundled sample)")
    p.add_argument("--source", help="the store's source folder")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="a few steps: a pipeline check for the test suite")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.steps = 64, 3
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        store, source = args.store, args.source or str(SAMPLE)
        if store is None and args.smoke:  # 10 images per class: a quick build
            source = f"{tmp}/src"
            for d in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
                (Path(source) / d.name).mkdir(parents=True)
                for f in sorted(d.iterdir())[:10]:
                    shutil.copy(f, Path(source) / d.name / f.name)
        if store is None:
            store = f"{tmp}/sample.zarr"
            cfg = BuildConfig(source=source, teachers=[TEACHER], policy="cifar", views=4, topk=10, out=store, chunk_size=256, workers=1)
            reinforce(cfg, progress=False)
        rep = DeviceReplay(store, source, device=device)
        # plain is timed before and after reinforced: their mean cancels warm-up and drift
        first = run(rep, device, "plain", args.batch, args.steps)
        rates = {"reinforced": run(rep, device, "reinforced", args.batch, args.steps)}
        rates["plain"] = (first + run(rep, device, "plain", args.batch, args.steps)) / 2
    result = {
        "bench": "train_speed",
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU {platform.machine()} ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "batch": args.batch,
        "steps": args.steps,
        "plain_images_per_s": round(rates["plain"], 1),
        "reinforced_images_per_s": round(rates["reinforced"], 1),
        "ratio": round(rates["reinforced"] / rates["plain"], 3),
        "smoke": bool(args.smoke),
    }
    print(
        f"plain {result['plain_images_per_s']:,.0f} img/s   reinforced {result['reinforced_images_per_s']:,.0f} img/s   ratio {result['ratio']:.3f}"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
