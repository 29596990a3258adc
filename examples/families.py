#!/usr/bin/env python
"""Proof on the ImageNet path: students of three families on Tiny-ImageNet-100+ (and CIFAR-10+).

    python examples/families.py all --workdir W --publish                    # TIN-100 CPU protocol (hours; resumable)
    python examples/families.py all --dataset cifar10 --workdir W2 --publish # the three families on CIFAR-10+
    python examples/families.py all --quick --workdir /tmp/q                 # a pipeline check, minutes on a CPU
    python examples/families.py report --workdir W                           # tables, JSON, plots

Stages -- ``teachers``, ``reinforce``, ``students``, ``kstudy``, ``report`` (``all`` runs them
in order) -- cache their outputs in the workdir and skip what is done (a store resumes chunk by
chunk, a student run is one JSON file, also committed under ``examples/results/`` with
``--publish``), so the protocol spreads over several sittings: rerun the same command. It
prints its projected total before it starts.

The protocol is fixed up front and the same for every condition:

* data: Tiny-ImageNet-100 (64 px; train 50,000, val 5,000 -- the test set, never tuned on) or
  CIFAR-10 (32 px; 50,000 / 10,000), extracted once into the workdir;
* teachers: the shipped ensemble (``examples/assets/teachers-tin100``: a ResNet-20 and a
  ResNet-9 trained by ``examples/train_tin100_teachers.sh``; ``examples/assets/teachers`` for
  CIFAR-10);
* reinforce: ``dr-build reinforce``'s pipeline on the extracted train folder, one store per
  policy (``rrc`` and ``rrc+ra/re`` at 64 px; ``cifar`` and ``cifar+ra/re`` at 32 px), V = 10,
  k = 10 of 100 classes (of 10 on CIFAR-10), compiled teachers;
* students, three families, the same optimiser (SGD + Nesterov, one-cycle, weight decay),
  batch, schedule and data order in every condition: ``resnet`` (a CIFAR-style ResNet-8 behind
  a stride-2 stem at 64 px, from ``dr.teachers.zoo``), ``mobile`` (timm's
  ``mobilenetv3_small_050``) and ``vit`` (timm's ViT, DeiT-tiny-style: 8-px patches, width 96,
  depth 4, 3 heads). Conditions: ``plain`` (fresh views of the base policy, hard labels),
  ``plain-strong`` (fresh views of the strong policy, hard mixed labels),
  ``reinforced:<policy>`` (stored views + sparse top-k targets, one per store), ``kd`` (the
  ensemble online on fresh base views; ResNet only). Every condition uses the same batched
  loader (``dr.replay.DeviceReplay``), so the comparison measures the targets, not the
  loaders; each run records the test top-1 after every epoch;
* k study (Tiny-ImageNet-100): one ``rrc`` store with k = 100 (dense), ResNet students trained
  with its targets cut to k' in {1, 3, 10, 100} at read time (``DeviceReplay(topk=k')``; the
  mass left out is spread over the other classes, ``soft_cross_entropy``'s default).
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cifar_data import extract_split, sgd_nesterov
from proof_common import ece as _ece
from proof_common import log, shipped_cards, teacher_card
from proof_common import machine as _machine

import dr
from dr.builder import BuildConfig, reinforce
from dr.loss import soft_cross_entropy
from dr.multiscale import MultiScaleBatchSampler
from dr.policy import get_policy
from dr.replay import DeviceReplay
from dr.sources import ImageFolderSource
from dr.teachers import Ensemble, zoo

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@dataclass(frozen=True)
class Dataset:
    """What differs between the two datasets the protocol runs on."""

    name: str
    data: Path
    test_split: str
    size: int
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    base_policy: str
    shipped: Path


DATASETS = {
    "tin100": Dataset(
        "tin100",
        SHARED / "tinyimagenet100",
        "val",
        64,
        100,
        zoo.IMAGENET_MEAN,
        zoo.IMAGENET_STD,
        "rrc",
        REPO / "examples/assets/teachers-tin100",
    ),
    "cifar10": Dataset(
        "cifar10", SHARED / "cifar10", "test", 32, 10, zoo.CIFAR_MEAN, zoo.CIFAR_STD, "cifar", REPO / "examples/assets/teachers"
    ),
}


@dataclass(frozen=True)
class Protocol:
    name: str
    dataset: str
    train_per_class: int | None
    test_per_class: int | None
    views: int
    topk: int
    stores: tuple[str, ...]  # one reinforced store per policy; the last is the "strong" policy
    budgets: tuple[int, ...]  # epochs, shortest first
    seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)  # family -> seeds
    kd_families: tuple[str, ...] = ("resnet",)
    kstudy: tuple[int, ...] = ()  # k' values served from a k = num_classes store (empty: no study)
    kstudy_epochs: int | None = None  # the k study's budget (None: the longest)
    kstudy_views: int | None = None  # the dense store's V (None: ``views``); a student of E epochs replays E views
    batch: int = 256
    lr: float = 0.2
    wd: float = 5e-4
    compile_teachers: bool = True
    # quick: teachers trained in the workdir (arch, width/depth flags, seed) instead of the shipped ones
    train_teachers: tuple[tuple[str, tuple[str, ...], int], ...] = ()
    teacher_epochs: int = 0
    min_agreement: float | None = None  # the build's agreement guard (None: twice chance)

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(self.seeds)

    def conditions(self, family: str) -> tuple[str, ...]:
        kd = ("kd",) if family in self.kd_families else ()
        return ("plain", "plain-strong", *(f"reinforced:{p}" for p in self.stores), *kd)


FAMILIES = {"resnet": (0, 1), "mobile": (0,), "vit": (0,)}
TIN_CPU = Protocol(
    "tin100-cpu",
    "tin100",
    None,
    None,
    10,
    10,
    ("rrc", "rrc+ra/re"),
    (4, 12),
    FAMILIES,
    kstudy=(1, 3, 10, 100),
    kstudy_epochs=4,
    kstudy_views=4,
)
# CIFAR-10+ runs are cheap enough for seeds {0, 1} in every family
C10_CPU = Protocol("cifar10plus-families-cpu", "cifar10", None, None, 10, 10, ("cifar", "cifar+ra/re"), (5,), {f: (0, 1) for f in FAMILIES})
QUICK = Protocol(
    "quick",
    "tin100",
    4,
    2,
    2,
    3,
    ("rrc", "rrc+ra/re"),
    (1,),
    {"resnet": (0,), "mobile": (0,), "vit": (0,)},
    kstudy=(1, 100),
    batch=64,
    lr=0.05,
    compile_teachers=False,
    train_teachers=(("resnet64", ("--depth", "8", "--width", "4"), 0), ("resnet9", ("--width", "4"), 1)),
    teacher_epochs=1,
    min_agreement=0,  # one-epoch teachers on 400 images are near chance by design
)


def make_student(family: str, ds: Dataset) -> torch.nn.Module:
    """The student networks: small enough to train on a CPU, one per family."""
    import timm

    if family == "resnet":
        if ds.size == 64:
            return zoo.resnet64(depth=8, width=16, num_classes=ds.num_classes)
        return zoo.cifar_resnet(depth=8, width=16, num_classes=ds.num_classes)
    if family == "mobile":
        return timm.create_model("mobilenetv3_small_050", num_classes=ds.num_classes)
    if family == "vit":
        return timm.create_model(
            "vit_tiny_patch16_224",
            img_size=ds.size,
            patch_size=ds.size // 8,
            embed_dim=96,
            depth=4,
            num_heads=3,
            mlp_ratio=2,
            num_classes=ds.num_classes,
        )
    raise SystemExit(f"unknown student family {family!r}; use resnet, mobile or vit")


# -- stages ------------------------------------------------------------------------------------
def data(args: argparse.Namespace, proto: Protocol) -> tuple[Path, Path]:
    ds = DATASETS[proto.dataset]
    root = Path(args.workdir) / "data"
    train, test = root / "train", root / "test"
    for split, dest, per in (("train", train, proto.train_per_class), (ds.test_split, test, proto.test_per_class)):
        if not (dest / ".done").exists():
            extract_split(args.data or ds.data, split, dest, per_class=per)
            (dest / ".done").write_text("ok")
    return train, test


def stage_teachers(args: argparse.Namespace, proto: Protocol) -> list[dict]:
    """The teachers' cards (specs made absolute); the quick protocol trains tiny ones."""
    ds = DATASETS[proto.dataset]
    if not proto.train_teachers:
        return shipped_cards(ds.shipped, 2, "examples/train_tin100_teachers.sh (resumable; about 40 min each on a 2-core CPU)")
    data(args, proto)
    return [
        teacher_card(
            Path(args.workdir) / "teachers" / f"{arch}s{seed}",
            ["--data", str(Path(args.workdir) / "data"), "--arch", arch, *flags, "--epochs", str(proto.teacher_epochs)]
            + ["--seed", str(seed), "--batch-size", "32"],
        )
        for arch, flags, seed in proto.train_teachers
    ]


def store_path(args: argparse.Namespace, proto: Protocol, policy: str, topk: int, views: int | None = None) -> str:
    v = f"-v{views}" if views not in (None, proto.views) else ""
    return str(Path(args.workdir) / f"{proto.dataset}+{policy.replace('/', '-')}-k{topk}{v}.zarr")


def _kstudy_store(args: argparse.Namespace, proto: Protocol) -> str:
    return store_path(args, proto, proto.stores[0], DATASETS[proto.dataset].num_classes, proto.kstudy_views)


def _build(args: argparse.Namespace, proto: Protocol, policy: str, topk: int, views: int | None = None) -> str:
    train, _ = data(args, proto)
    specs = [c["teacher_spec"] for c in stage_teachers(args, proto)]
    store = store_path(args, proto, policy, topk, views)
    views = views or proto.views
    cfg = BuildConfig(
        source=str(train),
        teachers=specs,
        policy=policy,
        views=views,
        topk=topk,
        output_size=DATASETS[proto.dataset].size,
        chunk_size=256 if proto.train_per_class is None else 64,
        out=store,
        resume=True,
        force=True,
        compile=proto.compile_teachers,
        min_agreement=proto.min_agreement,
    )
    result = reinforce(cfg, progress=not args.quiet)
    if not result.complete:
        raise SystemExit(f"store {store} is not complete yet: run the same command again to resume it")
    record = Path(store + ".build.json")
    if result.chunks_computed:  # this run's speed (a resumed build: the part it computed)
        nbytes = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
        views = views * result.header.dataset.count
        record.write_text(
            json.dumps(
                {
                    "policy": policy,
                    "topk": topk,
                    "views": views,
                    "chunks_computed": result.chunks_computed,
                    "chunks_total": result.chunks_total,
                    "seconds": round(result.seconds, 1),
                    "views_per_second": round(result.views_per_second, 1),
                    "working_views_per_second": round(result.working_views_per_second, 1),
                    "bytes_per_view": round(nbytes / max(1, views), 2),
                    "machine": _machine("cpu"),
                },
                indent=2,
            )
            + "\n"
        )
        _log(
            args,
            f"reinforce {policy} k={topk}: {result.views_computed} views in {result.seconds:.0f}s ({result.views_per_second:.0f} views/s)",
        )
    return store


def stage_reinforce(args: argparse.Namespace, proto: Protocol, only: set[str] | None = None) -> dict[str, str]:
    """Build (or resume) the stores; ``only``: just these (policies, ``"kstudy"``)."""
    wanted = [p for p in (*proto.stores, *(("kstudy",) if proto.kstudy else ())) if only is None or p in only]
    stores = {p: _build(args, proto, p, proto.topk) for p in wanted if p != "kstudy"}
    if "kstudy" in wanted:
        ds = DATASETS[proto.dataset]
        stores["kstudy"] = _build(args, proto, proto.stores[0], ds.num_classes, proto.kstudy_views)
    return stores


# -- one student run ----------------------------------------------------------------------------
def _log(args: argparse.Namespace, text: str) -> None:
    log(args.workdir, text)


def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Any) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(norm(x[i : i + 500])).float() for i in range(0, len(x), 500)]).cpu()
    p = torch.softmax(logits, 1)
    return float((p.argmax(1) == y.cpu()).float().mean()), _ece(p, y.cpu())


@dataclass(frozen=True)
class Run:
    family: str
    condition: str
    epochs: int
    seed: int
    k: int | None = None  # the k study's k' (None: the store's k)
    multiscale: bool = False  # MultiScaleBatchSampler (0.75-1.25x, linear curriculum) instead of fixed-size batches
    ms_batch: str = "pixels"  # the sampler's batch rule: "pixels" (variable batch) or "fixed" (progressive resizing)

    @property
    def name(self) -> str:
        k = f"-k{self.k}" if self.k is not None else ""
        ms = ("-ms" if self.ms_batch == "pixels" else "-msb") if self.multiscale else ""
        return f"{self.family}-{self.condition.replace(':', '-').replace('/', '-')}{k}{ms}-e{self.epochs}-s{self.seed}"


def train_student(args: argparse.Namespace, proto: Protocol, run: Run, stores: dict[str, str], specs: list[str]) -> dict:
    ds = DATASETS[proto.dataset]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train, test = data(args, proto)
    torch.manual_seed(run.seed)
    store_policy = run.condition.split(":", 1)[1] if run.condition.startswith("reinforced:") else None
    fresh_policy = get_policy(proto.stores[-1] if run.condition == "plain-strong" else ds.base_policy, ds.size)
    if store_policy is not None:
        store = stores["kstudy"] if run.k is not None else stores[store_policy]
        rep = DeviceReplay(store, train, device=device, seed=run.seed, topk=run.k)
    else:  # fresh views of the source: the same images and streams, no store needed
        rep = DeviceReplay.fresh_only(train, fresh_policy, device=device)
    src = ImageFolderSource(test)
    x_test = torch.stack([torch.from_numpy(src.read(i)[0]).permute(2, 0, 1) for i in range(len(src))]).to(device)
    y_test = torch.from_numpy(src.labels()).to(device)
    mean = torch.tensor(ds.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(ds.std, device=device).view(1, 3, 1, 1) * 255

    def norm(v: torch.Tensor) -> torch.Tensor:
        return ((v.float() - mean) / std).contiguous(memory_format=torch.channels_last)

    model = make_student(run.family, ds).to(device).to(memory_format=torch.channels_last)
    teachers = None
    if run.condition == "kd":
        teachers = Ensemble.from_specs(specs).to(device)
        teachers.optimize(channels_last=True, compile=proto.compile_teachers)
    opt = sgd_nesterov(model, proto.lr, proto.wd)
    sampler = MultiScaleBatchSampler(
        len(rep),
        ds.size,
        proto.batch,
        curriculum="linear",
        epochs=run.epochs,
        seed=run.seed,
        batch=run.ms_batch,  # type: ignore[arg-type]
    )
    batches = (lambda e: list(sampler.batches(e))) if run.multiscale else (lambda e: _fixed_batches(len(rep), proto.batch, gen, ds.size))
    gen = torch.Generator().manual_seed(run.seed)  # the same data order in every condition
    steps = (
        sum(len(list(sampler.batches(e))) for e in range(run.epochs)) if run.multiscale else run.epochs * math.ceil(len(rep) / proto.batch)
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=proto.lr, total_steps=steps, pct_start=0.15)
    seen, train_s, curve, epoch_s, pixels, sampler_s = 0, 0.0, [], [], [], 0.0
    for epoch in range(run.epochs):
        te = time.perf_counter()
        model.train()
        plan = batches(epoch)
        sampler_s += time.perf_counter() - te
        pixels.append(int(sum(len(items) * size * size for size, items in plan)))
        total = torch.zeros((), device=device)
        for size, items in plan:
            if store_policy is not None:
                views, target = rep.batch(items, epoch, output_size=size)
            else:
                views, target = rep.fresh(items, epoch, policy=fresh_policy, seed=run.seed + 1, output_size=size)
                if teachers is not None:
                    target = teachers(views).clone()  # a normal tensor (the forward runs in inference mode)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = model(norm(views))
            loss = soft_cross_entropy(logits.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if run.multiscale:  # the linear scaling rule: the step's lr follows its batch size
                for g in opt.param_groups:
                    g["lr"] = sched.get_last_lr()[0] * sampler.lr_scale(size)
            opt.step()
            sched.step()
            seen += len(items)
            total += loss.detach() * len(items)
        epoch_s.append(time.perf_counter() - te)
        train_s += epoch_s[-1]
        acc, ece = _evaluate(model, x_test, y_test, norm)  # outside the timed training
        curve.append(round(acc, 4))
        if not args.quiet:
            eta = np.mean(epoch_s) * (run.epochs - epoch - 1)
            print(
                f"  [{run.name}] epoch {epoch + 1}/{run.epochs} loss {float(total) / len(rep):.4f} top-1 {acc:.4f} "
                f"{len(rep) / epoch_s[-1]:,.0f} img/s, ETA {eta:.0f}s",
                flush=True,
            )
    return {
        "dataset": proto.dataset,
        "family": run.family,
        "condition": run.condition,
        "store_policy": store_policy,
        "k": run.k if run.k is not None else (proto.topk if store_policy else None),
        "epochs": run.epochs,
        "seed": run.seed,
        "test_top1": curve[-1],
        "ece": ece,
        "train_seconds": round(train_s, 1),
        "images_per_second": round(seen / train_s, 1),
        "curve": curve,
        "epoch_seconds": [round(t, 2) for t in epoch_s],
        "pixels_per_epoch": pixels,  # sum of size**2 over the epoch's training views: conv FLOPs scale with it
        "multiscale": run.multiscale,
        "ms_batch": run.ms_batch if run.multiscale else None,
        "train_images": len(rep),
        "sampler_seconds": round(sampler_s, 3),
        "kstudy": run.k is not None,
        "device": str(device),
    }


def _fixed_batches(n: int, batch: int, gen: torch.Generator, size: int) -> list[tuple[int, np.ndarray]]:
    """One epoch of fixed-size batches in the run's data order."""
    order = torch.randperm(n, generator=gen).numpy()
    return [(size, order[s : s + batch]) for s in range(0, n, batch)]


# -- the students and k-study stages ------------------------------------------------------------
def published_runs(proto: Protocol) -> Path:
    """Where ``--publish`` keeps one JSON per finished run, inside the repository: a committed
    record is a cached stage, so a protocol spread over sittings never trains a run twice."""
    return REPO / "examples" / "results" / f"families-{proto.name}" / "runs"


def _done(args: argparse.Namespace, proto: Protocol, run: Run) -> Path | None:
    for folder in (Path(args.workdir) / "students", published_runs(proto)):
        if (folder / f"{run.name}.json").exists():
            return folder / f"{run.name}.json"
    return None


def _record(args: argparse.Namespace, proto: Protocol, run: Run, stores: dict[str, str], specs: list[str]) -> dict:
    r = train_student(args, proto, run, stores, specs)
    r["command"] = "python examples/families.py " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("families.py") else None
    r["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    r["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]  # images/s compare only at equal load
    r["machine"] = _machine(r["device"])
    r["versions"] = {"torch": torch.__version__, "python": platform.python_version(), "dr": dr.__version__}
    for folder in [Path(args.workdir) / "students"] + ([published_runs(proto)] if args.publish else []):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{run.name}.json").write_text(json.dumps(r, indent=2) + "\n")
    _log(
        args,
        f"student {run.name}: top-1 {r['test_top1']:.4f} ECE {r['ece']:.3f} ({r['train_seconds']:.0f}s, {r['images_per_second']:,.0f} img/s)",
    )
    return r


def plan(proto: Protocol, args: argparse.Namespace, kstudy: bool = False) -> list[Run]:
    """Every run of the stage, cheapest complete comparison first (the short budget, seed 0)."""
    if kstudy:
        return [Run("resnet", f"reinforced:{proto.stores[0]}", proto.kstudy_epochs or proto.budgets[-1], 0, k) for k in proto.kstudy]
    runs = [
        Run(f, c, e, s)
        for e in proto.budgets
        for s in sorted({s for seeds in proto.seeds.values() for s in seeds})
        for f in proto.families
        if s in proto.seeds[f]
        for c in proto.conditions(f)
    ]
    if args.family:
        runs = [r for r in runs if r.family in args.family]
    if args.epochs:
        runs = [r for r in runs if r.epochs in args.epochs]
    if args.condition:
        runs = [r for r in runs if r.condition in args.condition]
    if args.seed:
        runs = [r for r in runs if r.seed in args.seed]
    if getattr(args, "multiscale", False):
        runs = [Run(r.family, r.condition, r.epochs, r.seed, r.k, multiscale=True, ms_batch=args.ms_batch) for r in runs]
    return runs


# seconds per training image, estimated from timed training steps of each family on the 2-core CPU
# (bf16 autocast, batch 256) plus the loader and the per-epoch test pass: only for the projection
# printed before a stage starts; each run records what it measured
_COST = {"resnet": 1 / 900, "mobile": 1 / 350, "vit": 1 / 330, "kd": 1 / 500}


def _projected(runs: list[Run], n_train: int) -> float:
    return sum(r.epochs * n_train * (_COST["kd"] if r.condition == "kd" else _COST[r.family]) for r in runs)


def stage_students(args: argparse.Namespace, proto: Protocol, kstudy: bool = False) -> list[dict]:
    runs = plan(proto, args, kstudy)
    todo = [r for r in runs if _done(args, proto, r) is None]
    what = "k study" if kstudy else "students"
    if not todo:
        _log(args, f"{what}: all {len(runs)} runs are done")
        return [json.loads(p.read_text()) for r in runs if (p := _done(args, proto, r)) is not None]
    train, _ = data(args, proto)
    n_train = sum(1 for _ in train.glob("*/*"))
    _log(args, f"{what}: {len(runs)} runs, {len(todo)} to do, projected {_projected(todo, n_train) / 3600:.1f} h on a 2-core CPU")
    needs_teachers = any(r.condition == "kd" or r.condition.startswith("reinforced:") for r in todo)
    needed = {"kstudy" if r.k is not None else r.condition.split(":", 1)[1] for r in todo if r.condition.startswith("reinforced:")}
    stores = stage_reinforce(args, proto, only=needed) if needed else {}
    specs = [c["teacher_spec"] for c in stage_teachers(args, proto)] if needs_teachers else []
    for i, run in enumerate(todo):
        _record(args, proto, run, stores, specs)
        _log(args, f"{what}: projected time left {_projected(todo[i + 1 :], n_train) / 60:.0f} min ({len(todo) - i - 1} runs)")
    return [json.loads(p.read_text()) for r in runs if (p := _done(args, proto, r)) is not None]


# -- the report ----------------------------------------------------------------------------------
def time_to_accuracy(run: dict, plain: dict) -> float | None:
    """The fraction of plain's epochs a run needs to reach plain's final top-1 (None: never)."""
    goal = plain["test_top1"]
    for e, acc in enumerate(run["curve"], start=1):
        if acc >= goal:
            return e / plain["epochs"]
    return None


def _stored_bytes_per_view(store: str, k: int) -> float:
    """Bytes per view of the target arrays cut to k', compressed with the store's own codecs."""
    import zarr

    from dr.storage.writer import _compressors

    g = zarr.open_group(store, mode="r")
    total = 0
    for path in ("targets/ids", "targets/probs"):
        src = g[path]
        a = np.asarray(src[:, :, :k])
        mem = zarr.create_array(
            zarr.storage.MemoryStore(), shape=a.shape, chunks=(src.chunks[0], *a.shape[1:]), dtype=a.dtype, compressors=_compressors(path)
        )
        mem[:] = a
        total += mem.nbytes_stored()
    return total / (a.shape[0] * a.shape[1])


def _ensemble_top1(work: Path, specs: list[str]) -> float | None:
    """The teacher ensemble's top-1 on the workdir's test images (None: not extracted), cached
    in ``ensemble-top1.json`` for these teachers."""
    test, cache = work / "data" / "test", work / "ensemble-top1.json"
    if not test.exists():
        return None
    if cache.exists() and (c := json.loads(cache.read_text())).get("teachers") == specs:
        return float(c["top1"])
    src = ImageFolderSource(test)
    x = torch.stack([torch.from_numpy(src.read(i)[0]).permute(2, 0, 1) for i in range(len(src))])
    y = torch.from_numpy(src.labels())
    ens = Ensemble.from_specs(specs)
    with torch.inference_mode():
        acc = float(torch.cat([ens(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)]).eq(y).float().mean())
    cache.write_text(json.dumps({"teachers": specs, "top1": acc}, indent=2) + "\n")
    return acc


def stage_report(args: argparse.Namespace, proto: Protocol) -> str:
    work = Path(args.workdir)
    ds = DATASETS[proto.dataset]
    found = {p.name: p for p in sorted(published_runs(proto).glob("*.json"))}
    found.update({p.name: p for p in sorted((work / "students").glob("*.json"))})
    runs = [json.loads(p.read_text()) for _, p in sorted(found.items())]
    if not runs:
        raise SystemExit(f"no student results under {work / 'students'}: run the students stage first")
    cards = stage_teachers(args, proto)
    lines = [
        f"Teachers (top-1 on the {ds.test_split} images): "
        + ", ".join(f"{Path(c['teacher_spec'].split('@')[1].split('?')[0]).stem} {100 * c['test_top1']:.2f}%" for c in cards)
    ]
    ens_acc = _ensemble_top1(work, [c["teacher_spec"] for c in cards])
    if ens_acc is not None:
        lines[0] += f"; ensemble {100 * ens_acc:.2f}%"
    main = [r for r in runs if not r.get("kstudy") and not r.get("multiscale")]
    summary: dict[str, Any] = {}
    for family in proto.families:
        lines += [
            "",
            f"### {family}",
            "",
            "| condition | "
            + " | ".join(f"top-1 % E={b} | ECE E={b} | img/s E={b} | time to plain's top-1 E={b}" for b in proto.budgets)
            + " |",
        ]
        lines.append("|---|" + "---|" * (4 * len(proto.budgets)))
        for c in proto.conditions(family):
            row = [c]
            for b in proto.budgets:
                rs = [r for r in main if r["family"] == family and r["condition"] == c and r["epochs"] == b]
                plains = {r["seed"]: r for r in main if r["family"] == family and r["condition"] == "plain" and r["epochs"] == b}
                if not rs:
                    row += ["-"] * 4
                    continue
                a = np.array([r["test_top1"] for r in rs]) * 100
                spread = f" ± {(a.max() - a.min()) / 2:.2f}" if len(a) > 1 else ""
                tta = [time_to_accuracy(r, plains[r["seed"]]) for r in rs if r["seed"] in plains]
                tta_s = "-" if not tta else ("never" if any(t is None for t in tta) else f"{np.mean(tta):.2f}")
                row += [
                    f"{a.mean():.2f}{spread} (n={len(a)})",
                    f"{np.mean([r['ece'] for r in rs]):.3f}",
                    _speed(rs),
                    tta_s,
                ]
                summary[f"{family}/{c}@{b}"] = {
                    "top1_mean": float(a.mean()),
                    "n": len(a),
                    "ece_mean": float(np.mean([r["ece"] for r in rs])),
                }
            lines.append("| " + " | ".join(row) + " |")
    kstudy = []
    if proto.kstudy:
        store = _kstudy_store(args, proto)
        lines += [
            "",
            f"### k study (resnet, reinforced:{proto.stores[0]} from a k = {ds.num_classes} store of"
            f" V = {proto.kstudy_views or proto.views}, E={proto.kstudy_epochs or proto.budgets[-1]}, seed 0)",
            "",
            "| k' | top-1 % | ECE | target bytes/view |",
            "|---|---|---|---|",
        ]
        for k in proto.kstudy:
            rs = [r for r in runs if r.get("kstudy") and r.get("k") == k]
            nbytes = _stored_bytes_per_view(store, k) if Path(store).exists() else None
            if rs:
                lines.append(
                    f"| {k} | {100 * rs[0]['test_top1']:.2f} | {rs[0]['ece']:.3f} | {f'{nbytes:.2f}' if nbytes is not None else '-'} |"
                )
                kstudy.append({"k": k, "test_top1": rs[0]["test_top1"], "ece": rs[0]["ece"], "target_bytes_per_view": nbytes})
    multiscale = _multiscale_rows(runs)
    if multiscale:
        lines += [
            "",
            "### multi-scale (0.75-1.25x, linear curriculum) vs fixed size",
            "",
            "Batch rule `pixels`: the batch scales so every step holds the same pixels (variable batch, linear lr rule); "
            "`fixed`: the batch stays, a small size is a cheaper step (progressive resizing).",
            "",
            "| family | condition | batch rule | E | seed | top-1 % fixed -> multi-scale | ECE fixed -> ms | training pixels ms/fixed | wall ms/fixed |"
            " to the fixed run's top-1: pixels, wall (ms/fixed) | sampler share of training |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {m['family']} | {m['condition']} | {m['batch_rule']} | {m['epochs']} | {m['seed']} | {100 * m['fixed_top1']:.2f} -> {100 * m['ms_top1']:.2f} | "
            f"{m['fixed_ece']:.3f} -> {m['ms_ece']:.3f} | {m['pixels_ratio']:.2f} | {_ratio(m['wall_ratio'])} | "
            f"{_fmt(m['tta_pixels_ratio'])}, {_ratio(m['tta_wall_ratio']) if m['tta_pixels_ratio'] is not None else 'never'} | {100 * m['sampler_share']:.2f}% |"
            for m in multiscale
        ]
    builds = [json.loads(p.read_text()) for p in sorted(work.glob("*.zarr.build.json"))]
    if builds:
        lines += ["", "| store | views | views/s | bytes/view |", "|---|---|---|---|"]
        lines += [
            f"| {b['policy']} k={b['topk']} | {b['views']:,} | {b['views_per_second']:,.0f} | {b['bytes_per_view']:.1f} |" for b in builds
        ]
    machine = runs[0].get("machine") or _machine(runs[0]["device"])
    lines += [
        "",
        f"Device: {runs[0]['device']} ({machine}); torch {torch.__version__}; protocol `{proto.name}`; ± is half the range over seeds.",
    ]
    text = "\n".join(lines)
    (work / "results.md").write_text(text + "\n")
    keys = (
        "dataset",
        "family",
        "condition",
        "store_policy",
        "k",
        "epochs",
        "seed",
        "test_top1",
        "ece",
        "train_seconds",
        "images_per_second",
        "curve",
    )
    record = {
        "protocol": asdict(proto),
        "machine": machine,
        "versions": {"torch": torch.__version__, "python": platform.python_version(), "dr": dr.__version__},
        "teachers": [{k: c.get(k) for k in ("teacher_spec", "test_top1", "train_seconds", "epochs")} for c in cards],
        "ensemble_top1": ens_acc,
        "stores": builds,
        "runs": [{k: r.get(k) for k in keys} for r in runs],
        "summary": summary,
        "kstudy": kstudy,
        "multiscale": multiscale,
    }
    (work / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    _plot(work, proto, main, ens_acc)
    if multiscale:
        _plot_multiscale(work, proto, runs)
        ms_record = {"protocol": proto.name, "machine": machine, "rows": multiscale}
        ms_record["runs"] = [
            {k: r.get(k) for k in (*keys, "epoch_seconds", "pixels_per_epoch")} for r in runs if _in_multiscale(r, multiscale)
        ]
        (work / "multiscale.json").write_text(json.dumps(ms_record, indent=2) + "\n")
    if args.publish:
        dest = REPO / "examples" / "results" / f"families-{proto.name}"
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("results.md", "results.json", *(p.name for p in work.glob("accuracy-*.png"))):
            shutil.copy(work / name, dest / name)
        (REPO / "bench" / "results").mkdir(exist_ok=True)
        shutil.copy(work / "results.json", REPO / "bench" / "results" / f"{proto.name}.json")
        if multiscale:
            name = "multiscale-cpu.json" if proto.dataset == "tin100" else f"multiscale-{proto.dataset}-cpu.json"
            shutil.copy(work / "multiscale.json", REPO / "bench" / "results" / name)
    print(text)
    return text


def _in_multiscale(run: dict, rows: list[dict]) -> bool:
    """A run the multi-scale comparison uses (a multi-scale run, its twin, the reinforced goal)."""
    keys = {(m["family"], m["epochs"], m["seed"]) for m in rows}
    return (
        not run.get("kstudy") and (run["family"], run["epochs"], run["seed"]) in keys and run["condition"] in {m["condition"] for m in rows}
    )


def _plot_multiscale(work: Path, proto: Protocol, runs: list[dict]) -> None:
    """Test top-1 against cumulative training pixels (conv FLOPs scale with them): the first
    seed's multi-scale runs and their fixed-size twins, a colour per condition, a line style
    per way of training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = DATASETS[proto.dataset].size
    for family in sorted({r["family"] for r in runs if r.get("multiscale")}):
        ms = [r for r in runs if r.get("multiscale") and r["family"] == family]
        seed = min(r["seed"] for r in ms)
        keys = {(m["condition"], m["epochs"]) for m in ms if m["seed"] == seed}
        shown = [
            r for r in runs if r["family"] == family and r["seed"] == seed and not r.get("kstudy") and (r["condition"], r["epochs"]) in keys
        ]
        conditions = sorted({c for c, _ in keys})
        fig, ax = plt.subplots(figsize=(6.0, 4.0))
        for r in sorted(shown, key=lambda r: (r["condition"], bool(r.get("multiscale")), r.get("ms_batch") or "")):
            style = (":" if r.get("ms_batch") == "fixed" else "-") if r.get("multiscale") else "--"
            pixels = r.get("pixels_per_epoch") or [ms[0]["train_images"] * size * size] * r["epochs"]
            label = f"{r['condition']} {_ms_label(r) if r.get('multiscale') else f'fixed {size} px'} (E={r['epochs']})"
            color = f"C{conditions.index(r['condition'])}"
            ax.plot(np.cumsum(pixels) / 1e9, 100 * np.asarray(r["curve"]), style, marker="o", ms=3, color=color, label=label)
        _save(
            fig,
            ax,
            "training pixels (billions; conv FLOPs scale with them)",
            f"{proto.dataset} {family}, seed {seed}: multi-scale vs fixed size",
            work / f"accuracy-vs-pixels-{family}.png",
        )


def _ms_label(run: dict) -> str:
    return "multi-scale, fixed batch" if run.get("ms_batch") == "fixed" else "multi-scale"


def _speed(rs: list[dict]) -> str:
    """Mean training images/s of the runs that measured it (a run paused mid-way records none)."""
    speeds = [r["images_per_second"] for r in rs if r.get("images_per_second") is not None]
    return f"{np.mean(speeds):,.0f}" if speeds else "-"


def _ratio(x: float | None) -> str:
    """A wall-clock ratio, or "-" where a run's speed was not measured on a quiet CPU."""
    return "-" if x is None else f"{x:.2f}"


def _fmt(x: float | None) -> str:
    return "never" if x is None else f"{x:.2f}"


def _cumulative_to(curve: list[float], costs: list[float], goal: float) -> float | None:
    """The cost spent until the curve first reaches ``goal`` (None: never)."""
    spent = 0.0
    for acc, cost in zip(curve, costs):
        spent += cost
        if acc >= goal:
            return spent
    return None


def _multiscale_rows(runs: list[dict]) -> list[dict]:
    """Each multi-scale run against its fixed-size twin (same family, condition, budget, seed),
    with the training pixels and wall-clock it takes to reach the twin's final top-1 (wall-clock
    only where both runs measured their speed on a quiet CPU)."""
    rows = []
    for ms in (r for r in runs if r.get("multiscale")):
        key = (ms["family"], ms["condition"], ms["epochs"], ms["seed"])
        fixed = next(
            (
                r
                for r in runs
                if not r.get("multiscale") and not r.get("kstudy") and (r["family"], r["condition"], r["epochs"], r["seed"]) == key
            ),
            None,
        )
        if fixed is None:
            continue
        per_epoch = ms["train_images"] * DATASETS[ms["dataset"]].size ** 2  # a fixed-size epoch's pixels

        def n_pixels(r: dict, per_epoch: int = per_epoch) -> list[float]:
            return r.get("pixels_per_epoch") or [per_epoch] * r["epochs"]

        def wall(r: dict) -> list[float]:
            return r.get("epoch_seconds") or [r["train_seconds"] / r["epochs"]] * r["epochs"]

        goal = fixed["test_top1"]
        timed = ms.get("images_per_second") is not None and fixed.get("images_per_second") is not None  # both ran on a quiet CPU
        tta_p, tta_w = _cumulative_to(ms["curve"], n_pixels(ms), goal), _cumulative_to(ms["curve"], wall(ms), goal)
        ref_p, ref_w = _cumulative_to(fixed["curve"], n_pixels(fixed), goal), _cumulative_to(fixed["curve"], wall(fixed), goal)
        rows.append(
            {
                "family": ms["family"],
                "condition": ms["condition"],
                "batch_rule": ms.get("ms_batch") or "pixels",
                "epochs": ms["epochs"],
                "seed": ms["seed"],
                "fixed_top1": fixed["test_top1"],
                "ms_top1": ms["test_top1"],
                "fixed_ece": fixed["ece"],
                "ms_ece": ms["ece"],
                "pixels_ratio": sum(n_pixels(ms)) / sum(n_pixels(fixed)),
                "wall_ratio": ms["train_seconds"] / fixed["train_seconds"] if timed else None,
                "tta_pixels_ratio": None if tta_p is None or not ref_p else tta_p / ref_p,
                "tta_wall_ratio": None if tta_w is None or not ref_w or not timed else tta_w / ref_w,
                "sampler_share": ms.get("sampler_seconds", 0.0) / ms["train_seconds"],
            }
        )
    rows.sort(key=lambda m: (m["family"], m["condition"], m["batch_rule"], m["epochs"], m["seed"]))
    return rows


def _plot(work: Path, proto: Protocol, runs: list[dict], ens_acc: float | None) -> None:
    """One accuracy-vs-epochs plot per family (the longest budget's per-epoch curves, mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for family in proto.families:
        budget = max((r["epochs"] for r in runs if r["family"] == family), default=proto.budgets[-1])
        fig, ax = plt.subplots(figsize=(6.0, 4.0))
        for k, c in enumerate(proto.conditions(family)):
            rs = [r for r in runs if r["family"] == family and r["condition"] == c and r["epochs"] == budget]
            if rs:
                curve = 100 * np.mean([r["curve"] for r in rs], axis=0)
                ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3, label=f"{c} (n={len(rs)})", color=f"C{k}")
        if ens_acc is not None:
            ax.axhline(100 * ens_acc, color="gray", ls="--", label="teacher ensemble")
        _save(fig, ax, "epoch", f"{proto.dataset} {family} students, E={budget} ({proto.name})", work / f"accuracy-{family}.png")


def _save(fig: Any, ax: Any, xlabel: str, title: str, path: Path) -> None:
    """Label a test top-1 plot, save it, close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["teachers", "reinforce", "students", "kstudy", "report", "all"])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="tin100")
    p.add_argument("--data", default=None, help="folder with the train/test (val) tarballs (default: the shared data set)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--quick", action="store_true", help="a few images per class, tiny teachers, 1-2 epochs: a pipeline check")
    p.add_argument("--publish", action="store_true", help="commit-ready records under examples/results/ and bench/results/")
    csv = lambda cast: lambda s: [cast(x.strip()) for x in s.split(",") if x.strip()]  # noqa: E731
    p.add_argument("--family", type=csv(str), default=None, help="students: only these families (resnet,mobile,vit)")
    p.add_argument("--epochs", type=csv(int), default=None, help="students: only these budgets")
    p.add_argument("--condition", type=csv(str), default=None, help="students: only these conditions (plain,kd,reinforced:rrc,...)")
    p.add_argument("--seed", type=csv(int), default=None, help="students: only these seeds")
    p.add_argument(
        "--multiscale",
        action="store_true",
        help="students: multi-scale variable-batch training (0.75-1.25x the base size, linear curriculum; dr.multiscale)",
    )
    p.add_argument(
        "--ms-batch",
        choices=("pixels", "fixed"),
        default="pixels",
        help="students --multiscale: scale the batch to keep pixels per step (pixels) or keep the batch size (fixed)",
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    proto = QUICK if args.quick else C10_CPU if args.dataset == "cifar10" else TIN_CPU
    if args.quick and args.dataset != "tin100":
        raise SystemExit("--quick runs on tin100")
    args.proto = proto
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.stage in ("teachers", "all"):
        stage_teachers(args, proto)
    if args.stage in ("reinforce", "all"):
        stage_reinforce(args, proto)
    if args.stage in ("students", "all"):
        stage_students(args, proto)
    if args.stage in ("kstudy", "all") and proto.kstudy:
        stage_students(args, proto, kstudy=True)
    if args.stage in ("report", "all"):
        stage_report(args, proto)


if __name__ == "__main__":
    main(sys.argv[1:])
