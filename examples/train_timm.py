#!/usr/bin/env python
"""Train a timm model on a reinforced store: timm's model, optimizer and scheduler factories,
normalisation from the model's own data config, ``ReinforcedDataset`` + the sparse loss.

    python examples/train_timm.py --store runs/demo.zarr --model resnet18 --epochs 30 \\
        --opt sgd --lr 0.2 --sched cosine --warmup-epochs 2 --out runs/timm.json

The model is built with ``pretrained=False`` (no download) and ``num_classes`` from the store.
Inputs are normalised with the mean/std of ``timm.data.resolve_model_data_config(model)``;
views are replayed at ``--img-size`` (default: the build's view size). Add ``--test DIR`` (any
source: a folder, ``wds:...``, ``list:...``) to report top-1 on held-out images.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_model_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader

from dr import ReinforcedDataset
from dr.loss import soft_cross_entropy
from dr.sources import open_source


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The student's arguments (shared with examples/train_ray.py)."""
    p.add_argument("--store", required=True, help="reinforced store (.zarr path or URL)")
    p.add_argument("--source", help="the store's source (default: the location recorded in the store)")
    p.add_argument("--model", default="resnet18", help="timm model name (built with pretrained=False)")
    p.add_argument("--img-size", type=int, help="replay views at this size (default: the build's)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--opt", default="sgd", help="timm optimizer name (sgd, adamw, lamb, ...)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-5)
    p.add_argument("--sched", default="cosine", help="timm scheduler name (cosine, step, ...)")
    p.add_argument("--warmup-epochs", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=0, help="stop each epoch after N steps (smoke tests)")


def build_student(args: argparse.Namespace, num_classes: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The timm model and its normalisation (mean, std as [1,3,1,1])."""
    model = timm.create_model(args.model, pretrained=False, num_classes=num_classes)
    cfg = resolve_model_data_config(model)
    mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
    return model, mean, std


def build_optimization(model: torch.nn.Module, args: argparse.Namespace, steps_per_epoch: int) -> tuple[Any, Any]:
    """timm's optimizer and scheduler factories (stepped once per epoch)."""
    opt = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay)
    sched, _ = create_scheduler_v2(
        opt, sched=args.sched, num_epochs=args.epochs, warmup_epochs=args.warmup_epochs, updates_per_epoch=steps_per_epoch
    )
    return opt, sched


def train_epoch(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]],
    opt: torch.optim.Optimizer,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: str,
    max_steps: int = 0,
) -> dict[str, float]:
    """One epoch of reinforced training: replayed views in [0, 1], sparse soft targets."""
    model.train()
    mean, std = mean.to(device), std.to(device)
    total, seen, steps = 0.0, 0, 0
    for images, (ids, probs) in batches:
        x = (images.to(device, non_blocking=True) - mean) / std
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(x)
        loss = soft_cross_entropy(logits.float(), (ids.to(device), probs.to(device)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(images)
        seen += len(images)
        steps += 1
        if max_steps and steps >= max_steps:
            break
    return {"loss": total / max(seen, 1), "images": seen}


@torch.no_grad()
def evaluate(model: torch.nn.Module, source: str, size: int, mean: torch.Tensor, std: torch.Tensor, device: str) -> float:
    """Top-1 on a held-out source (shorter side resized to ``size``, centre crop)."""
    src = open_source(source)
    model.eval()
    correct = 0
    for i in range(len(src)):
        x = torch.from_numpy(src.read(i)[0]).permute(2, 0, 1)[None].float().div_(255)
        x = F.interpolate(x, scale_factor=size / min(x.shape[-2:]), mode="bilinear", antialias=True)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = (x[..., top : top + size, left : left + size].to(device) - mean.to(device)) / std.to(device)
        correct += int(model(x).argmax(1).item() == int(src.labels()[i]))
    return correct / max(len(src), 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--test", help="held-out source for top-1 (folder or any source spec)")
    p.add_argument("--out", help="JSON result path")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ds = ReinforcedDataset(args.store, args.source, output_size=args.img_size, seed=args.seed)
    loader = DataLoader(
        ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, persistent_workers=args.workers > 0, drop_last=False
    )
    model, mean, std = build_student(args, ds.num_classes)
    model.to(device)
    opt, sched = build_optimization(model, args, len(loader))
    history, t0 = [], time.time()
    for epoch in range(args.epochs):
        ds.set_epoch(epoch)
        stats = train_epoch(model, loader, opt, mean, std, device, args.max_steps)
        sched.step(epoch + 1)
        history.append({"epoch": epoch, **stats, "lr": opt.param_groups[0]["lr"]})
        print(f"epoch {epoch + 1}/{args.epochs} loss {stats['loss']:.4f} lr {opt.param_groups[0]['lr']:.4g} ({time.time() - t0:.0f}s)")
    result: dict[str, Any] = {"model": args.model, "epochs": args.epochs, "history": history, "seconds": round(time.time() - t0, 2)}
    if args.test:
        result["top1"] = evaluate(model, args.test, ds.output_size, mean, std, device)
        print(f"top-1 on {args.test}: {100 * result['top1']:.2f}%")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
