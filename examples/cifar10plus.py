#!/usr/bin/env python
"""Proof of value: students trained on CIFAR-10+ vs CIFAR-10 at the same cost.

    python examples/cifar10plus.py all --cpu --workdir runs/c10p-cpu --publish   # the CPU protocol (hours; resumable)
    python examples/cifar10plus.py all --workdir runs/c10p --publish             # the GPU protocol (one H100)
    python examples/cifar10plus.py all --workdir /tmp/q --quick                  # a pipeline check, minutes on a CPU
    python examples/cifar10plus.py report --cpu --workdir runs/c10p-cpu          # table, JSON, plot

Stages -- ``teachers``, ``reinforce``, ``students``, ``calibration``, ``report`` (``all`` runs them
in order) --
cache their outputs in the workdir and skip what is done (a store resumes chunk by chunk, a
student run is one JSON file), so a long protocol spreads over several sittings: rerun the same
command. The protocol is fixed up front and the same for every condition:

* data: the CIFAR-10 JPEGs (train 50,000 / test 10,000), extracted once into the workdir;
* teachers: ``--cpu`` uses the ensemble shipped in ``examples/assets/teachers`` (3 CIFAR
  ResNets trained by ``examples/train_teachers.sh``); the GPU protocol trains wider ones;
* reinforce: one store per policy (``cifar`` and a strong one), V views, k = 10;
* students: one small ResNet, the same optimiser (SGD + Nesterov, one-cycle, weight decay),
  batch and schedule in every condition, at each budget over seeds: ``plain`` (fresh
  pad-crop + flip views, hard labels), ``plain-strong`` (fresh views of the strong policy,
  hard mixed labels), ``reinforced:<policy>`` (stored views + sparse soft targets, one per
  store), ``kd`` (the ensemble run online on every batch of fresh ``cifar`` views). All use
  the same batched loader (``dr.replay.DeviceReplay``), so the comparison measures the
  targets, not the loaders. Hyperparameters were chosen once on ``plain`` and reused;
* calibration: every run records its mean confidence and a fitted temperature; the
  ``calibration`` stage trains each reinforced condition once more per target variant
  (:data:`VARIANTS`: a soft/hard mix, sharpened targets) at the smallest budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cifar_data import extract_split, sgd_nesterov
from proof_common import ece as _ece
from proof_common import log, shipped_cards, teacher_card
from proof_common import machine as _machine

import dr
from dr.builder import BuildConfig, reinforce
from dr.loss import densify, soft_cross_entropy
from dr.policy import get_policy
from dr.replay import DeviceReplay
from dr.sources import ImageFolderSource
from dr.teachers import Ensemble
from dr.teachers.zoo import CIFAR_MEAN, CIFAR_STD, cifar_resnet

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "examples" / "assets" / "teachers"


@dataclass(frozen=True)
class Protocol:
    name: str
    train_per_class: int | None
    test_per_class: int | None
    teachers: tuple[tuple[int, int, int], ...] | None  # (depth, width, seed) to train; None: the shipped ensemble
    teacher_epochs: int
    views: int
    stores: tuple[str, ...]  # one reinforced store per policy; the last is the "strong" policy
    student: tuple[int, int]  # (depth, width)
    runs: tuple[tuple[int, tuple[int, ...]], ...]  # (epochs, seeds)
    batch: int
    lr: float
    wd: float
    # torch.compile the teachers (build and online KD): 2.5x faster ResNet-20 inference on a
    # 2-core CPU than eager (measured 284 -> 705 img/s, batch 256), ~45 s once per teacher
    compile_teachers: bool = False
    min_agreement: float | None = None  # the build's agreement guard (None: twice chance)

    @property
    def conditions(self) -> tuple[str, ...]:
        return ("plain", "plain-strong", *(f"reinforced:{p}" for p in self.stores), "kd")


GPU = Protocol(
    "gpu",
    None,
    None,
    ((20, 32, 0), (32, 32, 1), (44, 32, 2)),
    60,
    50,
    ("cifar", "cifar+mix+ra/re"),
    (8, 16),
    ((15, (0, 1, 2)), (45, (0, 1, 2))),
    256,
    0.2,
    5e-4,
    compile_teachers=True,
)
CPU = Protocol(
    "cpu", None, None, None, 0, 10, ("cifar", "cifar+ra/re"), (8, 16), ((5, (0, 1)), (15, (0,))), 256, 0.2, 5e-4, compile_teachers=True
)
# v0.1's medium run: 500 train images per class, 3 ResNet-20 teachers trained here
MEDIUM = Protocol(
    "medium",
    500,
    None,
    ((20, 16, 0), (20, 16, 1), (20, 16, 2)),
    12,
    20,
    ("cifar+mix+ra/re",),
    (8, 16),
    ((5, (0,)), (15, (0,))),
    128,
    0.2,
    5e-4,
)
QUICK = Protocol(
    "quick",
    40,
    20,
    ((8, 8, 0), (8, 8, 1), (14, 8, 2)),
    2,
    4,
    ("cifar", "cifar+ra/re"),
    (8, 4),
    ((1, (0,)), (3, (0,))),
    64,
    0.1,
    5e-4,
    min_agreement=0,  # two-epoch teachers on 400 images sit near chance by design
)


def data(args: argparse.Namespace, proto: Protocol) -> tuple[Path, Path]:
    root = Path(args.workdir) / "data"
    train, test = root / "train", root / "test"
    for split, dest, per in (("train", train, proto.train_per_class), ("test", test, proto.test_per_class)):
        if not (dest / ".done").exists():
            extract_split(args.data, split, dest, per_class=per)
            (dest / ".done").write_text("ok")
    return train, test


def shipped_teachers() -> list[dict]:
    """The cards of the shipped ensemble (examples/assets/teachers/*.json), specs made absolute."""
    return shipped_cards(SHIPPED, 3, "`bash examples/train_teachers.sh` (resumable; tens of minutes each on a CPU)")


def stage_teachers(args: argparse.Namespace, proto: Protocol) -> list[str]:
    data(args, proto)
    if proto.teachers is None:
        return [c["teacher_spec"] for c in shipped_teachers()]
    return [
        teacher_card(
            Path(args.workdir) / "teachers" / f"resnet{depth}w{width}s{seed}",
            ["--data", str(Path(args.workdir) / "data"), "--depth", str(depth), "--width", str(width)]
            + ["--epochs", str(proto.teacher_epochs), "--seed", str(seed)],
        )["teacher_spec"]
        for depth, width, seed in proto.teachers
    ]


def store_path(args: argparse.Namespace, policy: str) -> str:
    return str(Path(args.workdir) / f"cifar10+{policy.replace('/', '-')}.zarr")


def stage_reinforce(args: argparse.Namespace, proto: Protocol) -> dict[str, str]:
    train, _ = data(args, proto)
    specs = stage_teachers(args, proto)
    stores = {}
    for policy in proto.stores:
        store = store_path(args, policy)
        cfg = BuildConfig(
            source=str(train),
            teachers=specs,
            policy=policy,
            views=proto.views,
            topk=10,
            chunk_size=256,
            out=store,
            resume=True,
            force=True,
            compile=proto.compile_teachers,
            min_agreement=proto.min_agreement,
        )
        t = time.perf_counter()
        result = reinforce(cfg, progress=not args.quiet)
        if not result.complete:
            raise SystemExit(f"store {store} is not complete yet: run the same command again to resume it")
        if result.chunks_computed:
            _log(args, f"reinforce {policy}: {result.views_computed} views in {time.perf_counter() - t:.0f}s")
        stores[policy] = store
    return stores


def _log(args: argparse.Namespace, text: str) -> None:
    log(args.workdir, text)


def _test_set(test: Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    src = ImageFolderSource(test)
    x = torch.stack([torch.from_numpy(src.read(i)[0]).permute(2, 0, 1) for i in range(len(src))]).to(device)
    return x, torch.from_numpy(src.labels()).to(device)


def _calibration(logits: torch.Tensor, y: torch.Tensor) -> dict:
    """Which way a student is miscalibrated, and how much one temperature fixes: the mean
    confidence against accuracy, and a temperature fitted (NLL, grid) on the even test images
    with the ECE it leaves on the odd ones (fitted and scored on disjoint halves)."""
    fit, score = slice(0, None, 2), slice(1, None, 2)
    grid = torch.exp(torch.linspace(-1.5, 1.5, 121))  # T from 0.22 to 4.5
    nll = torch.stack([torch.nn.functional.cross_entropy(logits[fit] / t, y[fit]) for t in grid])
    t_best = float(grid[int(nll.argmin())])
    p = torch.softmax(logits, 1)
    return {
        "mean_confidence": float(p.max(1).values.mean()),
        "temperature_fit": t_best,
        "ece_odd_half": _ece(p[score], y[score]),
        "ece_odd_half_at_fitted_t": _ece(torch.softmax(logits[score] / t_best, 1), y[score]),
    }


def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm) -> tuple[float, float, dict]:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(norm(x[i : i + 1000])).float() for i in range(0, len(x), 1000)]).cpu()
    y = y.cpu()
    p = torch.softmax(logits, 1)
    return float((p.argmax(1) == y).float().mean()), _ece(p, y), _calibration(logits, y)


# Calibration variants of a reinforced student (stage ``calibration``): the same run with one
# change to its targets. ``hard=W``: mix W x cross-entropy on the hard label into the loss (ml-dr's
# soft/hard mix); ``sharpen=T``: raise the stored probabilities (densified) to 1/T and renormalise
# (T < 1 sharpens, T > 1 softens).
VARIANTS = ("hard=0.5", "sharpen=0.5")


def _parse_variant(variant: str | None) -> tuple[float, float]:
    """``(hard_weight, target_temperature)`` of a calibration variant."""
    if variant is None:
        return 0.0, 1.0
    name, _, value = variant.partition("=")
    try:
        x = float(value)
    except ValueError:
        x = float("nan")
    if name not in ("hard", "sharpen") or not x > 0 or (name == "hard" and x > 1):
        raise SystemExit(f"calibration variant {variant!r}: use hard=W (0 < W <= 1) or sharpen=T (T > 0)")
    return (x, 1.0) if name == "hard" else (0.0, x)


def train_student(
    args: argparse.Namespace,
    proto: Protocol,
    condition: str,
    epochs: int,
    seed: int,
    stores: dict[str, str],
    specs: list[str],
    variant: str | None = None,
) -> dict:
    hard_weight, target_t = _parse_variant(variant)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train, test = data(args, proto)
    torch.manual_seed(seed)
    store_policy = condition.split(":", 1)[1] if condition.startswith("reinforced:") else None
    fresh_policy = get_policy(proto.stores[-1] if condition == "plain-strong" else "cifar")
    if store_policy is not None:
        rep = DeviceReplay(stores[store_policy], train, device=device, seed=seed)
    else:  # fresh views of the source: the same images and streams, no store needed
        rep = DeviceReplay.fresh_only(train, fresh_policy, device=device)
    x_test, y_test = _test_set(test, device)
    mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1) * 255

    def norm(v: torch.Tensor) -> torch.Tensor:
        return ((v.float() - mean) / std).contiguous(memory_format=torch.channels_last)

    model = cifar_resnet(depth=proto.student[0], width=proto.student[1], num_classes=10).to(device).to(memory_format=torch.channels_last)
    teachers = None
    if condition == "kd":
        teachers = Ensemble.from_specs(specs).to(device)
        teachers.optimize(channels_last=True, compile=proto.compile_teachers)
    opt = sgd_nesterov(model, proto.lr, proto.wd)
    steps = epochs * math.ceil(len(rep) / proto.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=proto.lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    seen, t0, epoch_times = 0, time.perf_counter(), []
    for epoch in range(epochs):
        te = time.perf_counter()
        model.train()
        order = torch.randperm(len(rep), generator=gen).numpy()
        total = torch.zeros((), device=device)
        for s in range(0, len(order), proto.batch):
            items = order[s : s + proto.batch]
            if store_policy is not None:
                views, target = rep.batch(items, epoch)
                if target_t != 1.0:
                    dense = densify(target, rep.num_classes) ** (1.0 / target_t)
                    target = dense / dense.sum(1, keepdim=True)
            else:
                views, target = rep.fresh(items, epoch, policy=fresh_policy, seed=seed + 1)
                if teachers is not None:
                    target = teachers(views).clone()  # a normal tensor (the forward runs in inference mode)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(norm(views))
            labels = rep.labels[rep.indices[items]].to(device) if hard_weight else None
            loss = soft_cross_entropy(logits.float(), target, labels=labels, hard_weight=hard_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(items)
            total += loss.detach() * len(items)  # no per-step device sync
        epoch_times.append(time.perf_counter() - te)
        if not args.quiet:
            eta = np.mean(epoch_times) * (epochs - epoch - 1)
            print(
                f"  [{condition} E={epochs} seed={seed}] epoch {epoch + 1}/{epochs} loss {float(total) / len(order):.4f} "
                f"{len(order) / epoch_times[-1]:,.0f} img/s, ETA {eta:.0f}s",
                flush=True,
            )
    train_s = time.perf_counter() - t0
    acc, ece, calibration = _evaluate(model, x_test, y_test, norm)
    # the weights stay in the workdir (not published) for later analysis, e.g. of calibration
    from safetensors.torch import save_file

    weights = Path(args.workdir) / "students" / f"{_run_name(condition, epochs, seed)}.safetensors"
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
    return {
        "condition": condition,
        "store_policy": store_policy,
        "epochs": epochs,
        "seed": seed,
        "test_top1": acc,
        "ece": ece,
        "calibration": calibration,
        "train_seconds": train_s,
        "images_per_second": seen / train_s,
        "seconds_per_epoch": float(np.mean(epoch_times)),
        "device": str(device),
    }


Run = tuple  # (condition, epochs, seed) or, for a calibration variant, (condition, epochs, seed, variant)


def _run_name(condition: str, epochs: int, seed: int, variant: str | None = None) -> str:
    name = f"{condition.replace(':', '-').replace('/', '-')}-e{epochs}-s{seed}"
    return name + (f"-{variant.replace('=', '')}" if variant else "")


def published_runs(proto: Protocol) -> Path:
    """Where ``--publish`` keeps one JSON per finished student run, inside the repository: a
    committed record is a cached stage, so a protocol spread over sittings (and machines whose
    work tree is fresh) never trains the same run twice. Calibration variants go to its
    ``calibration/`` subfolder (they are not conditions of the main table)."""
    return REPO / "examples" / "results" / f"cifar10plus-{proto.name}" / "runs"


def _sub(run: Run) -> str:
    return "calibration" if len(run) > 3 and run[3] else ""


def _done_run(args: argparse.Namespace, proto: Protocol, run: Run) -> Path | None:
    for folder in (Path(args.workdir) / "students", published_runs(proto)):
        path = folder / _sub(run) / f"{_run_name(*run)}.json"
        if path.exists():
            return path
    return None


def _train_and_record(args: argparse.Namespace, proto: Protocol, run: Run, stores: dict[str, str], specs: list[str]) -> dict:
    condition, epochs, seed = run[:3]
    variant = run[3] if len(run) > 3 else None
    r = train_student(args, proto, condition, epochs, seed, stores, specs, variant=variant)
    if variant:
        r["variant"] = variant
    r["command"] = "python examples/cifar10plus.py " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("cifar10plus.py") else None
    r["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    # images/s compare across runs only at equal load: other work on the machine shows here
    r["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    r["threads"] = torch.get_num_threads()
    r["machine"] = _machine(r["device"])
    r["versions"] = {"torch": torch.__version__, "python": platform.python_version(), "dr": dr.__version__}
    text = json.dumps(r, indent=2) + "\n"
    name = f"{_run_name(*run)}.json"
    for folder in [Path(args.workdir) / "students"] + ([published_runs(proto)] if args.publish else []):
        (folder / _sub(run)).mkdir(parents=True, exist_ok=True)
        (folder / _sub(run) / name).write_text(text)
    _log(
        args,
        f"student {condition} E={epochs} seed={seed}{' ' + variant if variant else ''}: top-1 {r['test_top1']:.4f} ECE {r['ece']:.3f} "
        f"({r['train_seconds']:.0f}s, {r['images_per_second']:,.0f} img/s)",
    )
    return r


def stage_students(args: argparse.Namespace, proto: Protocol) -> list[dict]:
    # the cheapest complete comparison first: every condition at the small budget, seed by seed
    plan = [(c, e, s) for e, seeds in proto.runs for s in seeds for c in proto.conditions]
    if args.only:
        unknown = sorted(set(args.only) - set(proto.conditions))
        if unknown:
            raise SystemExit(f"--only {','.join(unknown)}: not a condition of protocol {proto.name!r}; use {', '.join(proto.conditions)}")
        plan = [r for r in plan if r[0] in args.only]
    if args.epochs:
        budgets = {e for e, _ in proto.runs}
        if set(args.epochs) - budgets:
            raise SystemExit(f"--epochs {args.epochs}: protocol {proto.name!r} has budgets {sorted(budgets)}")
        plan = [r for r in plan if r[1] in args.epochs]
    todo = [r for r in plan if _done_run(args, proto, r) is None]
    if not todo:
        _log(args, f"students: all {len(plan)} runs asked for are done")
        return [json.loads(p.read_text()) for r in plan if (p := _done_run(args, proto, r)) is not None]
    # plain conditions need neither teachers nor stores: they can run while teachers train
    needs_teachers = any(c == "kd" or c.startswith("reinforced:") for c, _, _ in todo)
    stores = stage_reinforce(args, proto) if needs_teachers else {}
    specs = stage_teachers(args, proto) if needs_teachers else []
    _log(args, f"students: {len(plan)} runs in the protocol, {len(todo)} to do ({sum(e for _, e, _ in todo)} epochs)")
    per_epoch: dict[str, float] = {}
    results = []
    for run in plan:
        done = _done_run(args, proto, run)
        if done is None:
            r = _train_and_record(args, proto, run, stores, specs)
            per_epoch[run[0]] = r["seconds_per_epoch"]
            left = [x for x in todo if _done_run(args, proto, x) is None]
            guess = np.mean(list(per_epoch.values()))
            projected = sum(per_epoch.get(c, guess) * e for c, e, _ in left)
            _log(args, f"students: projected time left {projected / 60:.0f} min ({len(left)} runs)")
            done = _done_run(args, proto, run)
        results.append(json.loads(done.read_text()))
    return results


def stage_calibration(args: argparse.Namespace, proto: Protocol) -> list[dict]:
    """The calibration study: each reinforced condition at the smallest budget and its first
    seed, once per variant in :data:`VARIANTS` (records under ``runs/calibration/``)."""
    epochs, seeds = proto.runs[0]
    plan = [(f"reinforced:{p}", epochs, seeds[0], v) for p in proto.stores for v in VARIANTS]
    if args.only:
        plan = [r for r in plan if r[0] in args.only]
    todo = [r for r in plan if _done_run(args, proto, r) is None]
    stores = stage_reinforce(args, proto) if todo else {}
    for run in todo:
        _train_and_record(args, proto, run, stores, [])
    return [json.loads(p.read_text()) for r in plan if (p := _done_run(args, proto, r)) is not None]


def stage_report(args: argparse.Namespace, proto: Protocol) -> str:
    work = Path(args.workdir)
    found = {p.name: p for p in sorted(published_runs(proto).glob("*.json"))}  # committed runs count, as in students
    found.update({p.name: p for p in sorted((work / "students").glob("*.json"))})
    runs = [json.loads(p.read_text()) for _, p in sorted(found.items())]
    if not runs:
        raise SystemExit(f"no student results under {work / 'students'}: run the students stage first")
    cards = (
        shipped_teachers() if proto.teachers is None else [json.loads(p.read_text()) for p in sorted((work / "teachers").glob("*.json"))]
    )
    ens_acc = None
    if cards and (work / "data" / "test").exists():
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        ens = Ensemble.from_specs([c["teacher_spec"] for c in cards]).to(device)
        x, y = _test_set(work / "data" / "test", device)
        with torch.inference_mode():
            ens_acc = float(torch.cat([ens(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)]).eq(y).float().mean())
    budgets = sorted({r["epochs"] for r in runs})
    conditions = [c for c in proto.conditions if any(r["condition"] == c for r in runs)]
    cell = {(c, b): [r for r in runs if r["condition"] == c and r["epochs"] == b] for c in conditions for b in budgets}
    names = [f"{Path(c['teacher_spec'].split('@')[1].split('?')[0]).stem} {100 * c['test_top1']:.2f}%" for c in cards]
    lines = [
        "Teachers (top-1 on the 10,000 test JPEGs): "
        + ", ".join(names)
        + (f"; ensemble {100 * ens_acc:.2f}%" if ens_acc is not None else ""),
        "",
    ]
    lines.append("| condition | " + " | ".join(f"top-1 % E={b} | ECE E={b} | img/s E={b}" for b in budgets) + " |")
    lines.append("|---|" + "---|" * (3 * len(budgets)))
    summary = {}
    for c in conditions:
        row = [c]
        for b in budgets:
            rs = cell[(c, b)]
            if not rs:
                row += ["-"] * 3
                continue
            a = np.array([r["test_top1"] for r in rs]) * 100
            spread = f" ± {(a.max() - a.min()) / 2:.2f}" if len(a) > 1 else ""
            row += [
                f"{a.mean():.2f}{spread} (n={len(a)})",
                f"{np.mean([r['ece'] for r in rs]):.3f}",
                # a run whose record carries a note (e.g. paused mid-run) has no valid speed
                f"{np.mean(speeds):,.0f}" if (speeds := [r["images_per_second"] for r in rs if not r.get("note")]) else "-",
            ]
            summary[f"{c}@{b}"] = {"top1_mean": float(a.mean()), "top1_half_range": float((a.max() - a.min()) / 2), "n": len(a)}
        lines.append("| " + " | ".join(row) + " |")
    device = runs[0]["device"]
    machine = runs[0].get("machine") or _machine(device)
    lines += ["", f"Device: {device} ({machine}); torch {torch.__version__}; protocol `{proto.name}`; ± is half the range over seeds."]
    variants = {p.name: p for p in sorted((published_runs(proto) / "calibration").glob("*.json"))}
    variants.update({p.name: p for p in sorted((work / "students" / "calibration").glob("*.json"))})
    calibrated = [r for r in runs if r.get("calibration")] + [json.loads(p.read_text()) for _, p in sorted(variants.items())]
    if calibrated:
        lines += [
            "",
            "Calibration (one run each; confidence = mean max probability on the test images; the temperature is",
            "fitted on the even-numbered test images, the ECE columns score the odd-numbered ones):",
            "",
            "| run | top-1 % | ECE | mean confidence | fitted T | ECE (odd half) | ECE at fitted T |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sorted(calibrated, key=lambda r: (r["epochs"], r["condition"], r.get("variant") or "", r["seed"])):
            cal = r["calibration"]
            lines.append(
                f"| {r['condition']}{' ' + r['variant'] if r.get('variant') else ''} E={r['epochs']} seed={r['seed']} "
                f"| {100 * r['test_top1']:.2f} | {r['ece']:.3f} | {cal['mean_confidence']:.3f} | {cal['temperature_fit']:.2f} "
                f"| {cal['ece_odd_half']:.3f} | {cal['ece_odd_half_at_fitted_t']:.3f} |"
            )
    text = "\n".join(lines)
    (work / "results.md").write_text(text + "\n")
    record = {
        "protocol": asdict(proto),
        "command": "python examples/cifar10plus.py " + " ".join(sys.argv[1:])
        if sys.argv and sys.argv[0].endswith("cifar10plus.py")
        else None,
        "machine": machine,
        "versions": {"torch": torch.__version__, "python": platform.python_version(), "dr": dr.__version__},
        "teachers": [{k: c.get(k) for k in ("teacher_spec", "test_top1", "train_seconds", "epochs")} for c in cards],
        "ensemble_top1": ens_acc,
        "runs": [
            {k: r.get(k) for k in ("condition", "store_policy", "epochs", "seed", "test_top1", "ece", "train_seconds", "images_per_second")}
            for r in runs
        ],
        "summary": summary,
        "calibration": [
            {k: r.get(k) for k in ("condition", "variant", "epochs", "seed", "test_top1", "ece", "calibration")} for r in calibrated
        ],
    }
    (work / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for k, c in enumerate(conditions):
        xs = [b for b in budgets if cell[(c, b)]]
        ax.plot(xs, [100 * np.mean([r["test_top1"] for r in cell[(c, b)]]) for b in xs], marker="o", label=c, color=f"C{k}")
        for b in xs:  # every seed's point
            ax.scatter([b] * len(cell[(c, b)]), [100 * r["test_top1"] for r in cell[(c, b)]], s=12, color=f"C{k}", alpha=0.6)
    if ens_acc is not None:
        ax.axhline(100 * ens_acc, color="gray", ls="--", label="teacher ensemble")
    ax.set_xlabel("epochs")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"CIFAR-10 students: plain vs reinforced ({proto.name})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(work / "accuracy.png", dpi=120)
    if args.publish:
        dest = REPO / "examples" / "results" / f"cifar10plus-{proto.name}"
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("results.md", "accuracy.png", "results.json"):
            shutil.copy(work / name, dest / name)
        (REPO / "bench" / "results").mkdir(exist_ok=True)
        shutil.copy(work / "results.json", REPO / "bench" / "results" / f"cifar10plus-{proto.name}.json")
    print(text)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["teachers", "reinforce", "students", "calibration", "report", "all"])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10"), help="folder with train.tar.gz/test.tar.gz")
    p.add_argument("--workdir", required=True)
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--cpu", action="store_true", help="the CPU protocol: full CIFAR-10, the shipped teachers, V=10, E=5 (2 seeds) and 15"
    )
    size.add_argument(
        "--quick", action="store_true", help="a few hundred images, tiny teachers, 1 seed: a pipeline check (minutes on a CPU)"
    )
    size.add_argument(
        "--medium", action="store_true", help="v0.1's medium run: 5,000 train images, 3 ResNet-20 teachers trained here, V=20"
    )
    p.add_argument("--publish", action="store_true", help="copy the report to examples/results/ and bench/results/")
    p.add_argument(
        "--only",
        type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
        default=None,
        help="students: only these conditions (comma-separated, e.g. plain,plain-strong: they need no teachers or stores)",
    )
    p.add_argument(
        "--epochs",
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        default=None,
        help="students: only these budgets (comma-separated, e.g. 15), to order a protocol's runs across sittings",
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    proto = QUICK if args.quick else MEDIUM if args.medium else CPU if args.cpu else GPU
    if proto is GPU and not torch.cuda.is_available() and args.stage != "report":
        raise SystemExit("the GPU protocol needs CUDA: pass --cpu for the CPU protocol or --quick for a pipeline check")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.stage == "teachers":
        stage_teachers(args, proto)
    elif args.stage == "reinforce":
        stage_reinforce(args, proto)
    elif args.stage == "students":
        stage_students(args, proto)
    elif args.stage == "calibration":
        stage_calibration(args, proto)
    elif args.stage == "report":
        stage_report(args, proto)
    else:
        stage_students(args, proto)
        stage_calibration(args, proto)
        stage_report(args, proto)


if __name__ == "__main__":
    main(sys.argv[1:])
