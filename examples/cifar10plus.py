#!/usr/bin/env python
"""Proof of value: students trained on CIFAR-10+ vs CIFAR-10 at the same cost.

    python examples/cifar10plus.py all --data ../shared/data/cifar10 --workdir runs/c10p          # full (GPU)
    python examples/cifar10plus.py all --data ../shared/data/cifar10 --workdir /tmp/q --quick     # minutes on a CPU
    python examples/cifar10plus.py report --workdir runs/c10p    # table (Markdown), results.json, accuracy.png

Stages -- ``teachers``, ``reinforce``, ``students``, ``report`` (``all`` runs them in order) --
cache their outputs in the workdir and skip what is done, so a long run can be split into
separate calls. The protocol is fixed up front and the same for every condition:

* data: the CIFAR-10 JPEGs (train 50,000 / test 10,000), extracted once into the workdir;
* teachers: an ensemble of 3 CIFAR ResNets (different depths and seeds) trained by
  ``examples/train_teacher.py`` on the train split;
* reinforce: ``dr-build``'s pipeline with that ensemble, preset ``cifar+mix+ra/re``, V views, k = 10;
* students: one smaller ResNet, the same optimiser (SGD + Nesterov, cosine, weight decay),
  batch size and schedule in every condition, at budgets E and 3E epochs, over seeds:
  ``plain`` (pad-crop + flip, hard labels), ``plain-strong`` (the store's policy sampled fresh,
  hard mixed labels), ``reinforced`` (stored views + sparse soft targets), ``kd`` (the
  ensemble run on every batch of fresh strong views). All four use the same batched loader
  (``dr.batched.DeviceReplay``), so the comparison measures the targets, not the loaders.
  Hyperparameters were chosen once on ``plain`` and reused.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cifar_data import extract_split, sgd_nesterov

from dr.batched import DeviceReplay
from dr.build import BuildConfig, reinforce
from dr.loss import soft_cross_entropy
from dr.policy import get_policy
from dr.sources import ImageFolderSource
from teachers import Ensemble
from teachers.zoo import CIFAR_MEAN, CIFAR_STD, cifar_resnet

CONDITIONS = ("plain", "plain-strong", "reinforced", "kd")


@dataclass(frozen=True)
class Protocol:
    train_per_class: int | None
    test_per_class: int | None
    teachers: tuple[tuple[int, int, int], ...]  # (depth, width, seed)
    teacher_epochs: int
    views: int
    student: tuple[int, int]  # (depth, width)
    budgets: tuple[int, int]
    seeds: tuple[int, ...]
    batch: int
    lr: float
    wd: float


FULL = Protocol(None, None, ((20, 32, 0), (32, 32, 1), (44, 32, 2)), 60, 50, (8, 16), (15, 45), (0, 1, 2), 256, 0.2, 5e-4)
# a CPU-sized run with a real signal: 500 train images per class, the full test split
MEDIUM = Protocol(500, None, ((20, 16, 0), (20, 16, 1), (20, 16, 2)), 12, 20, (8, 16), (5, 15), (0,), 128, 0.2, 5e-4)
QUICK = Protocol(40, 20, ((8, 8, 0), (8, 8, 1), (14, 8, 2)), 2, 4, (8, 4), (1, 3), (0,), 64, 0.1, 5e-4)


def data(args: argparse.Namespace, proto: Protocol) -> tuple[Path, Path]:
    root = Path(args.workdir) / "data"
    train, test = root / "train", root / "test"
    for split, dest, per in (("train", train, proto.train_per_class), ("test", test, proto.test_per_class)):
        if not (dest / ".done").exists():
            extract_split(args.data, split, dest, per_class=per)
            (dest / ".done").write_text("ok")
    return train, test


def stage_teachers(args: argparse.Namespace, proto: Protocol) -> list[str]:
    import train_teacher

    data(args, proto)
    specs = []
    for depth, width, seed in proto.teachers:
        out = Path(args.workdir) / "teachers" / f"resnet{depth}w{width}s{seed}"
        if not out.with_suffix(".json").exists():
            train_teacher.main(
                [
                    "--data",
                    str(Path(args.workdir) / "data"),
                    "--depth",
                    str(depth),
                    "--width",
                    str(width),
                    "--epochs",
                    str(proto.teacher_epochs),
                    "--seed",
                    str(seed),
                    "--out",
                    str(out),
                ]
            )
        card = json.loads(out.with_suffix(".json").read_text())
        specs.append(card["teacher_spec"])
    return specs


def stage_reinforce(args: argparse.Namespace, proto: Protocol) -> str:
    train, _ = data(args, proto)
    specs = stage_teachers(args, proto)
    store = str(Path(args.workdir) / "cifar10+.zarr")
    cfg = BuildConfig(
        source=str(train),
        teachers=specs,
        policy="cifar+mix+ra/re",
        views=proto.views,
        topk=10,
        chunk_size=256,
        out=store,
        resume=True,
        force=True,
    )
    result = reinforce(cfg, progress=not args.quiet)
    print(f"reinforce: {result.to_dict()}", flush=True)
    return store


def _test_set(test: Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    src = ImageFolderSource(test)
    x = torch.stack([torch.from_numpy(src.read(i)[0]).permute(2, 0, 1) for i in range(len(src))]).to(device)
    return x, torch.from_numpy(src.labels()).to(device)


def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm) -> tuple[float, float]:
    model.eval()
    probs = []
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            probs.append(torch.softmax(model(norm(x[i : i + 1000])).float(), 1))
    p = torch.cat(probs)
    conf, pred = p.max(1)
    correct = (pred == y).float()
    bins = torch.clamp((conf * 15).long(), max=14)
    ece = sum(
        float((bins == b).float().mean()) * abs(float(correct[bins == b].mean()) - float(conf[bins == b].mean()))
        for b in range(15)
        if (bins == b).any()
    )
    return float(correct.mean()), ece


def train_student(args: argparse.Namespace, proto: Protocol, condition: str, epochs: int, seed: int, store: str, specs: list[str]) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train, test = data(args, proto)
    torch.manual_seed(seed)
    rep = DeviceReplay(store, train, device=device, seed=seed)
    x_test, y_test = _test_set(test, device)
    mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1) * 255

    def norm(v: torch.Tensor) -> torch.Tensor:
        return ((v.float() - mean) / std).contiguous(memory_format=torch.channels_last)

    model = cifar_resnet(depth=proto.student[0], width=proto.student[1], num_classes=10).to(device).to(memory_format=torch.channels_last)
    teachers = Ensemble.from_specs(specs).to(device) if condition == "kd" else None
    plain_policy = get_policy("cifar")
    opt = sgd_nesterov(model, proto.lr, proto.wd)
    steps = epochs * math.ceil(len(rep) / proto.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=proto.lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    seen, t0, epoch_times = 0, time.perf_counter(), []
    for epoch in range(epochs):
        te = time.perf_counter()
        model.train()
        order = torch.randperm(len(rep), generator=gen).numpy()
        for s in range(0, len(order), proto.batch):
            items = order[s : s + proto.batch]
            if condition == "reinforced":
                views, target = rep.batch(items, epoch)
            elif condition == "plain":
                views, target = rep.fresh(items, epoch, policy=plain_policy, seed=seed + 1)
            else:
                views, target = rep.fresh(items, epoch, seed=seed + 1)
                if teachers is not None:
                    target = teachers(views).clone()  # a normal tensor (the forward runs in inference mode)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(norm(views))
            loss = soft_cross_entropy(logits.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(items)
        epoch_times.append(time.perf_counter() - te)
    train_s = time.perf_counter() - t0
    acc, ece = _evaluate(model, x_test, y_test, norm)
    return {
        "condition": condition,
        "epochs": epochs,
        "seed": seed,
        "test_top1": acc,
        "ece": ece,
        "train_seconds": train_s,
        "images_per_second": seen / train_s,
        "seconds_per_epoch": float(np.mean(epoch_times)),
        "device": str(device),
    }


def stage_students(args: argparse.Namespace, proto: Protocol) -> list[dict]:
    store = stage_reinforce(args, proto)
    specs = stage_teachers(args, proto)
    results = []
    for epochs in proto.budgets:
        for condition in CONDITIONS:
            for seed in proto.seeds:
                out = Path(args.workdir) / "students" / f"{condition}-e{epochs}-s{seed}.json"
                if not out.exists():
                    r = train_student(args, proto, condition, epochs, seed, store, specs)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(r, indent=2) + "\n")
                    print(f"student {condition} E={epochs} seed={seed}: top-1 {r['test_top1']:.4f} ({r['train_seconds']:.0f}s)", flush=True)
                results.append(json.loads(out.read_text()))
    return results


def stage_report(args: argparse.Namespace, proto: Protocol | None) -> str:
    work = Path(args.workdir)
    runs = [json.loads(p.read_text()) for p in sorted((work / "students").glob("*.json"))]
    if not runs:
        raise SystemExit(f"no student results under {work / 'students'}: run the students stage first")
    cards = [json.loads(p.read_text()) for p in sorted((work / "teachers").glob("*.json"))]
    store = work / "cifar10+.zarr"
    ens_acc = None
    if cards and store.exists() and (work / "data" / "test").exists():
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        ens = Ensemble.from_specs([c["teacher_spec"] for c in cards]).to(device)
        x, y = _test_set(work / "data" / "test", device)
        with torch.inference_mode():
            ens_acc = float(torch.cat([ens(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)]).eq(y).float().mean())
    table: dict[str, dict[int, dict]] = {}
    for r in runs:
        table.setdefault(r["condition"], {}).setdefault(r["epochs"], {"acc": [], "ece": [], "ips": [], "spe": []})
        cell = table[r["condition"]][r["epochs"]]
        cell["acc"].append(r["test_top1"])
        cell["ece"].append(r["ece"])
        cell["ips"].append(r["images_per_second"])
        cell["spe"].append(r["seconds_per_epoch"])
    budgets = sorted({r["epochs"] for r in runs})
    names = [f"{Path(c['teacher_spec'].split('@')[1].split('?')[0]).stem} {100 * c['test_top1']:.2f}%" for c in cards]
    lines = ["Teachers: " + ", ".join(names) + (f"; ensemble {100 * ens_acc:.2f}%" if ens_acc is not None else ""), ""]
    lines.append("| condition | " + " | ".join(f"top-1 E={b} | ECE E={b} | img/s E={b} | s/epoch E={b}" for b in budgets) + " |")
    lines.append("|---|" + "---|" * (4 * len(budgets)))
    summary = {}
    for cond in CONDITIONS:
        if cond not in table:
            continue
        row = [cond]
        for b in budgets:
            c = table[cond].get(b)
            if not c:
                row += ["-"] * 4
                continue
            a = np.array(c["acc"]) * 100
            row += [
                f"{a.mean():.2f} ± {a.std():.2f} (n={len(a)})",
                f"{np.mean(c['ece']):.3f}",
                f"{np.mean(c['ips']):.0f}",
                f"{np.mean(c['spe']):.2f}",
            ]
            summary[f"{cond}@{b}"] = {
                "top1_mean": float(a.mean()),
                "top1_std": float(a.std()),
                "n": len(a),
                "ece": float(np.mean(c["ece"])),
                "images_per_second": float(np.mean(c["ips"])),
                "seconds_per_epoch": float(np.mean(c["spe"])),
            }
        lines.append("| " + " | ".join(row) + " |")
    device = runs[0]["device"]
    lines += [
        "",
        f"Device: {device} ({torch.cuda.get_device_name() if device.startswith('cuda') and torch.cuda.is_available() else platform.processor() or platform.machine()}); torch {torch.__version__}.",
    ]
    text = "\n".join(lines)
    (work / "results.md").write_text(text + "\n")
    (work / "results.json").write_text(
        json.dumps(
            {"teachers": cards, "ensemble_top1": ens_acc, "conditions": summary, "protocol": asdict(proto) if proto else None}, indent=2
        )
        + "\n"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for cond in CONDITIONS:
        if cond in table:
            xs = [b for b in budgets if b in table[cond]]
            ys = [100 * np.mean(table[cond][b]["acc"]) for b in xs]
            es = [100 * np.std(table[cond][b]["acc"]) for b in xs]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=cond)
    if ens_acc is not None:
        ax.axhline(100 * ens_acc, color="gray", ls="--", label="teacher ensemble")
    ax.set_xlabel("epochs")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("CIFAR-10 students: plain vs reinforced")
    ax.legend()
    fig.tight_layout()
    fig.savefig(work / "accuracy.png", dpi=120)
    print(text)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["teachers", "reinforce", "students", "report", "all"])
    p.add_argument(
        "--data",
        default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"),
        help="folder with train.tar.gz/test.tar.gz",
    )
    p.add_argument("--workdir", required=True)
    p.add_argument("--quick", action="store_true", help="a few hundred images, tiny teachers, 1 seed: a pipeline check (~30 s on a CPU)")
    p.add_argument(
        "--medium", action="store_true", help="5,000 train images, 3 ResNet-20 teachers, V=20, 1 seed: ~30-40 min on a 2-core CPU"
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    proto = QUICK if args.quick else MEDIUM if args.medium else FULL
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.stage == "teachers":
        stage_teachers(args, proto)
    elif args.stage == "reinforce":
        stage_reinforce(args, proto)
    elif args.stage == "students":
        stage_students(args, proto)
    elif args.stage == "report":
        stage_report(args, proto)
    else:
        stage_students(args, proto)
        stage_report(args, proto)


if __name__ == "__main__":
    main(sys.argv[1:])
