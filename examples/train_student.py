#!/usr/bin/env python
"""Train a student on a reinforced store (soft targets) or, with --baseline, on the plain
source (fresh augmentation, hard labels), then evaluate on a held-out split.

    python examples/train_student.py --store runs/demo.zarr --test data/cifar10/test \\
        --model 'python:dr.teachers.zoo:cifar_resnet?depth=8' --epochs 30 --out runs/student.json
    python examples/train_student.py ... --baseline --out runs/baseline.json

--model takes a timm name (``resnet18``, with ``num_classes`` set for you) or any teacher-style
spec (``python:module:factory?kw=v``, ``torchvision:NAME``). A plain PyTorch loop: SGD with
Nesterov momentum, cosine LR with warm-up, bf16 autocast on a GPU, optional EMA of weights.
Writes a JSON result (test top-1, images/s, wall time, the arguments).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cifar_data import sgd_nesterov

from dr import ReinforcedDataset
from dr.loss import soft_cross_entropy
from dr.sources import ImageFolderSource
from dr.teachers import build_model


def make_model(spec: str, num_classes: int) -> torch.nn.Module:
    if ":" not in spec:
        spec = f"timm:{spec}"
    if "num_classes=" not in spec:
        spec += ("&" if "?" in spec else "?") + f"num_classes={num_classes}"
    return build_model(spec)


@torch.no_grad()
def evaluate(model: torch.nn.Module, folder: str, size: int, mean: torch.Tensor, std: torch.Tensor, device: str, limit: int = 0) -> float:
    src = ImageFolderSource(folder)
    n = min(len(src), limit) if limit else len(src)
    model.eval()
    correct = 0
    for start in range(0, n, 500):
        idx = range(start, min(start + 500, n))
        x = torch.stack([torch.from_numpy(src.read(i)[0]).permute(2, 0, 1) for i in idx]).to(device).float()
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = (x / 255 - mean) / std
        correct += int((model(x).argmax(1).cpu() == torch.from_numpy(src.labels()[list(idx)])).sum())
    return correct / n


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="reinforced store (.zarr)")
    p.add_argument("--source", help="the store's source folder (default: recorded in the store)")
    p.add_argument("--test", required=True, help="held-out ImageFolder split for evaluation")
    p.add_argument("--model", default="python:dr.teachers.zoo:cifar_resnet?depth=8")
    p.add_argument("--baseline", action="store_true", help="plain training: fresh policy views, hard labels")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1, help="baseline only")
    p.add_argument("--p-original", type=float, default=0.0, help="reinforced: chance of a fresh view with its hard label")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of weights (0: off)")
    p.add_argument("--mean", type=float, nargs=3, default=(0.4914, 0.4822, 0.4465))
    p.add_argument("--std", type=float, nargs=3, default=(0.2470, 0.2435, 0.2616))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=0, help="stop after N steps (smoke tests)")
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate on the first N test images only")
    p.add_argument("--out", required=True, help="JSON result path")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ds = ReinforcedDataset(
        args.store, args.source, p_original=1.0 if args.baseline else args.p_original, transform=lambda v: v, seed=args.seed
    )
    loader = DataLoader(
        ds,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        drop_last=len(ds) > args.batch_size,
    )
    model = make_model(args.model, ds.num_classes).to(device).to(memory_format=torch.channels_last)
    mean = torch.tensor(args.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(args.std, device=device).view(1, 3, 1, 1)
    opt = sgd_nesterov(model, args.lr, args.wd)
    total = max(1, args.epochs * len(loader))
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(math.pi * min(s, total) / total))))
    ema = None
    if args.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=args.ema)
    step, seen, t0 = 0, 0, time.time()
    for epoch in range(args.epochs):
        ds.set_epoch(epoch)
        model.train()
        for images, (ids, probs) in loader:
            x = images.to(device, non_blocking=True).float().div_(255).sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)
            ids, probs = ids.to(device), probs.to(device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                logits = model(x)
            if args.baseline:
                loss = F.cross_entropy(logits.float(), ids[:, 0], label_smoothing=args.label_smoothing)
            else:
                loss = soft_cross_entropy(logits, (ids, probs))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(model)
            step += 1
            seen += len(images)
            if args.max_steps and step >= args.max_steps:
                break
        print(f"epoch {epoch + 1}/{args.epochs} loss {float(loss.detach()):.4f} ({time.time() - t0:.0f}s)", flush=True)
        if args.max_steps and step >= args.max_steps:
            break
    train_s = time.time() - t0
    final = ema.module if ema is not None else model
    acc = evaluate(final, args.test, ds.output_size, mean, std, device, args.eval_limit)
    result = {
        "mode": "baseline" if args.baseline else "reinforced",
        "test_top1": round(acc, 4),
        "epochs": args.epochs,
        "steps": step,
        "train_seconds": round(train_s, 1),
        "images_per_second": round(seen / train_s, 1),
        "device": device,
        "args": vars(args),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("mode", "test_top1", "steps", "train_seconds", "images_per_second")}))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
