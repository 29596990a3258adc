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
import dataclasses
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
from dr.loss import HardLabelSchedule, soft_cross_entropy
from dr.multiscale import MultiScaleBatchSampler
from dr.policy import get_policy
from dr.replay import DeviceReplay
from dr.sources import ImageFolderSource
from dr.teachers import Ensemble, zoo
from dr.teachers.precision import resolved_precision

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
    teacher_precision: str = "auto"  # the teachers' arithmetic in builds and kd (--precision; auto: fp32 on a CPU)
    # quick: teachers trained in the workdir (arch, width/depth flags, seed) instead of the shipped ones
    train_teachers: tuple[tuple[str, tuple[str, ...], int], ...] = ()
    teacher_epochs: int = 0
    min_agreement: float | None = None  # the build's agreement guard (None: twice chance)
    teachers_dir: str | None = None  # the shipped teachers (a folder under examples/assets; None: the dataset's)
    teachers_min: int = 2  # the shipped folder must hold at least this many cards
    # per kind of condition ("plain", "plain-strong", "reinforced", "kd"): its recipe -- crop_scale (the rrc
    # presets' smallest crop area; None: 0.08), hard (the hard-label schedule, see parse_hard), target_t
    recipe: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the selection split: hold out this many train images per class as the test set and train on the rest
    # (0: train on all of train, test on the dataset's test split)
    holdout_per_class: int = 0
    select_crops: tuple[float | None, ...] = ()  # selection: the crop ranges every condition is tried with
    select_hard: tuple[str, ...] = ()  # selection: the hard-label schedules the reinforced runs are tried with

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(self.seeds)

    @property
    def split(self) -> str:
        """``select`` (train on train minus the held-out images, test on those) or ``test`` (the
        dataset's test split)."""
        return "select" if self.holdout_per_class else "test"

    def conditions(self, family: str) -> tuple[str, ...]:
        kd = ("kd",) if family in self.kd_families else ()
        return ("plain", "plain-strong", *(f"reinforced:{p}" for p in self.stores), *kd)

    def recipe_of(self, condition: str) -> dict[str, Any]:
        """The protocol's recipe for ``condition`` (crop_scale, hard, target_t)."""
        return {"crop_scale": None, "hard": "0", "target_t": 1.0, **self.recipe.get(kind_of(condition), {})}


def kind_of(condition: str) -> str:
    """``reinforced`` for every store's condition, else the condition itself."""
    return "reinforced" if condition.startswith("reinforced:") else condition


def parse_hard(spec: str) -> HardLabelSchedule:
    """A hard-label schedule from its short form: ``"0"`` (soft targets only), ``"0.3"`` (a
    constant weight), ``"0.5-0"`` (linear from 0.5 to 0), ``"0.5-0cos"`` (half cosine)."""
    spec = str(spec)
    try:
        if "-" not in spec:
            return HardLabelSchedule(float(spec), float(spec), "constant")
        start, end = spec.split("-", 1)
        shape = "cosine" if end.endswith("cos") else "linear"
        return HardLabelSchedule(float(start), float(end.removesuffix("cos")), shape)
    except ValueError as e:
        raise SystemExit(f"hard-label schedule {spec!r}: use W, W-E or W-Ecos with weights in [0, 1] ({e})") from None


FAMILIES = {"resnet": (0, 1), "mobile": (0,), "vit": (0,)}
# the recipe chosen on the selection split (TIN_SELECT; docs/how-to/choosing.md): filled in from its report
RECIPE_TIN: dict[str, dict[str, Any]] = {}
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
# the protocol of the stronger teachers (examples/assets/teachers-tin100-v2): the recipe chosen on the
# selection split below; the runs of the pair of teachers before them keep their own records
TIN_V2 = Protocol(
    "tin100-cpu",
    "tin100",
    None,
    None,
    10,
    10,
    ("rrc",),
    (4, 12),
    {f: (0, 1) for f in FAMILIES},
    teachers_dir="examples/assets/teachers-tin100-v2",
    teachers_min=3,
    teacher_precision="bf16",  # 2.2x the compiled fp32 teachers on this CPU (bench/results/teacher-precision-cpu.json)
    recipe=RECIPE_TIN,
)
# the selection split: 50 train images per class held out (5,000), the students train on the other 450
TIN_SELECT = Protocol(
    "tin100-select-cpu",
    "tin100",
    None,
    None,
    10,
    10,
    ("rrc",),
    (4, 12),
    {"resnet": (0,)},
    kd_families=(),
    teachers_dir="examples/assets/teachers-tin100-v2",
    teachers_min=3,
    teacher_precision="bf16",  # 2.2x the compiled fp32 teachers on this CPU (bench/results/teacher-precision-cpu.json)
    holdout_per_class=50,
    select_crops=(None, 0.25, 0.5),
    select_hard=("0", "0.5-0", "1-0", "0.3"),
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
# the selection protocol in miniature: one of the 4 images per class held out
QUICK_SELECT = dataclasses.replace(
    QUICK,
    name="quick-select",
    stores=("rrc",),
    seeds={"resnet": (0,)},
    kd_families=(),
    kstudy=(),
    holdout_per_class=1,
    select_crops=(None, 0.5),
    select_hard=("0", "0.5-0"),
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
        folder = REPO / proto.teachers_dir if proto.teachers_dir else ds.shipped
        how = "examples/train_tin100_teachers_v2.sh" if proto.teachers_dir else "examples/train_tin100_teachers.sh"
        return shipped_cards(folder, proto.teachers_min, f"{how} (resumable, per epoch)")
    data(args, proto)
    return [
        teacher_card(
            Path(args.workdir) / "teachers" / f"{arch}s{seed}",
            ["--data", str(Path(args.workdir) / "data"), "--arch", arch, *flags, "--epochs", str(proto.teacher_epochs)]
            + ["--seed", str(seed), "--batch-size", "32"],
        )
        for arch, flags, seed in proto.train_teachers
    ]


def teacher_set(proto: Protocol) -> str:
    """The name of the protocol's teacher ensemble (its folder), recorded with every run that uses it."""
    if proto.train_teachers:
        return "trained-in-workdir"
    return Path(proto.teachers_dir).name if proto.teachers_dir else DATASETS[proto.dataset].shipped.name


def store_key(policy: str, crop_scale: float | None = None) -> str:
    """How the protocol names a store: its policy, and its crop range when not the preset's."""
    return policy if crop_scale is None else f"{policy}@cs{crop_scale:g}"


def store_path(
    args: argparse.Namespace,
    proto: Protocol,
    policy: str,
    topk: int,
    views: int | None = None,
    crop_scale: float | None = None,
    probs_dtype: str = "float16",
) -> str:
    v = f"-v{views}" if views not in (None, proto.views) else ""
    cs = f"-cs{crop_scale:g}" if crop_scale is not None else ""
    t = f"-{teacher_set(proto)}" if proto.teachers_dir else ""
    u8 = "-u8" if probs_dtype == "uint8" else ""
    bf16 = "-bf16" if proto.teacher_precision == "bf16" else ""
    return str(Path(args.workdir) / f"{proto.dataset}+{policy.replace('/', '-')}{cs}-k{topk}{v}{t}{u8}{bf16}.zarr")


def _kstudy_store(args: argparse.Namespace, proto: Protocol) -> str:
    return store_path(args, proto, proto.stores[0], DATASETS[proto.dataset].num_classes, proto.kstudy_views)


def _build(
    args: argparse.Namespace,
    proto: Protocol,
    policy: str,
    topk: int,
    views: int | None = None,
    crop_scale: float | None = None,
    probs_dtype: str = "float16",
) -> str:
    train, _ = data(args, proto)
    specs = [c["teacher_spec"] for c in stage_teachers(args, proto)]
    store = store_path(args, proto, policy, topk, views, crop_scale, probs_dtype)
    views = views or proto.views
    cfg = BuildConfig(
        source=str(train),
        teachers=specs,
        policy=policy,
        crop_scale=crop_scale,
        views=views,
        topk=topk,
        output_size=DATASETS[proto.dataset].size,
        chunk_size=256 if proto.train_per_class is None else 64,
        out=store,
        resume=True,
        force=True,
        compile=proto.compile_teachers,
        precision=proto.teacher_precision,  # type: ignore[arg-type]
        min_agreement=proto.min_agreement,
        probs_dtype=probs_dtype,
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
                    "crop_scale": crop_scale,
                    "teacher_set": teacher_set(proto),
                    "topk": topk,
                    "probs_dtype": probs_dtype,
                    "teacher_precision": result.header.ensemble["precision"],
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


def protocol_stores(proto: Protocol) -> list[str]:
    """The store keys (:func:`store_key`) the protocol's reinforced runs read: each policy at the
    reinforced recipe's crop range, or at every selection crop range."""
    crops = proto.select_crops or (proto.recipe_of("reinforced:")["crop_scale"],)
    return [store_key(p, c) for p in proto.stores for c in crops]


def stage_reinforce(args: argparse.Namespace, proto: Protocol, only: set[str] | None = None) -> dict[str, str]:
    """Build (or resume) the stores; ``only``: just these (store keys, ``"kstudy"``)."""
    wanted = [p for p in (*protocol_stores(proto), *(("kstudy",) if proto.kstudy else ())) if only is None or p in only]
    stores = {}
    for key in wanted:
        if key != "kstudy":
            policy, _, cs = key.partition("@cs")
            stores[key] = _build(args, proto, policy, proto.topk, crop_scale=float(cs) if cs else None)
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
    crop_scale: float | None = None  # the rrc presets' smallest crop area: the store's and the fresh views' (None: 0.08)
    hard: str = "0"  # the hard-label schedule (parse_hard): "0" soft targets only
    target_t: float = 1.0  # the target temperature (< 1 sharpens the stored probabilities)

    @property
    def name(self) -> str:
        k = f"-k{self.k}" if self.k is not None else ""
        ms = ("-ms" if self.ms_batch == "pixels" else "-msb") if self.multiscale else ""
        cs = f"-cs{self.crop_scale:g}" if self.crop_scale is not None else ""
        hard = f"-h{self.hard}" if self.hard != "0" else ""
        tt = f"-tt{self.target_t:g}" if self.target_t != 1.0 else ""
        return f"{self.family}-{self.condition.replace(':', '-').replace('/', '-')}{k}{cs}{hard}{tt}{ms}-e{self.epochs}-s{self.seed}"

    @property
    def recipe(self) -> dict[str, Any]:
        """What the run's record says of its recipe."""
        return {"crop_scale": self.crop_scale, "hard_label": parse_hard(self.hard).describe(), "target_temperature": self.target_t}


def split_items(train: Path, holdout_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The selection split of an ImageFolder: per class, ``holdout_per_class`` images drawn by
    a seeded permutation (seed 0, the class's images in source order) are held out. Returns the
    source indices kept for training and the held-out ones, each sorted."""
    labels = ImageFolderSource(train).labels()
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        held.append(members[np.random.default_rng([0, int(c)]).permutation(len(members))[:holdout_per_class]])
    out = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), out), out


def _test_set(args: argparse.Namespace, proto: Protocol, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
    """The test images and labels on ``device``, and the training items (``None``: all of train).
    The selection split tests on held-out train images, never on the test split."""
    train, test = data(args, proto)
    if proto.holdout_per_class:
        items, held = split_items(train, proto.holdout_per_class)
        src = ImageFolderSource(train)
        idx = held
    else:
        items, src = None, ImageFolderSource(test)
        idx = np.arange(len(src))
    x = torch.stack([torch.from_numpy(src.read(int(i))[0]).permute(2, 0, 1) for i in idx]).to(device)
    y = torch.from_numpy(src.labels()[idx]).to(device)
    return x, y, items


def _fresh_policy(proto: Protocol, run: Run) -> Any:
    ds = DATASETS[proto.dataset]
    name = proto.stores[-1] if run.condition == "plain-strong" else ds.base_policy
    return get_policy(name, ds.size, crop_scale=run.crop_scale if name.startswith("rrc") else None)


def train_student(args: argparse.Namespace, proto: Protocol, run: Run, stores: dict[str, str], specs: list[str]) -> dict:
    ds = DATASETS[proto.dataset]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train, _ = data(args, proto)
    torch.manual_seed(run.seed)
    store_policy = run.condition.split(":", 1)[1] if run.condition.startswith("reinforced:") else None
    fresh_policy = _fresh_policy(proto, run)
    store = None
    if store_policy is not None:
        store = stores["kstudy"] if run.k is not None else stores[store_key(store_policy, run.crop_scale)]
        rep = DeviceReplay(store, train, device=device, seed=run.seed, topk=run.k)
    else:  # fresh views of the source: the same images and streams, no store needed
        rep = DeviceReplay.fresh_only(train, fresh_policy, device=device)
    x_test, y_test, train_items = _test_set(args, proto, device)
    n_train = len(rep) if train_items is None else len(train_items)
    hard = parse_hard(run.hard)
    mean = torch.tensor(ds.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(ds.std, device=device).view(1, 3, 1, 1) * 255

    def norm(v: torch.Tensor) -> torch.Tensor:
        return ((v.float() - mean) / std).contiguous(memory_format=torch.channels_last)

    model = make_student(run.family, ds).to(device).to(memory_format=torch.channels_last)
    teachers = None
    if run.condition == "kd":
        teachers = Ensemble.from_specs(specs, precision=proto.teacher_precision).to(device)
        teachers.optimize(channels_last=True, compile=proto.compile_teachers)
    opt = sgd_nesterov(model, proto.lr, proto.wd)
    sampler = MultiScaleBatchSampler(
        n_train,
        ds.size,
        proto.batch,
        curriculum="linear",
        epochs=run.epochs,
        seed=run.seed,
        batch=run.ms_batch,  # type: ignore[arg-type]
    )
    gen = torch.Generator().manual_seed(run.seed)  # the same data order in every condition
    positions = np.arange(n_train) if train_items is None else train_items

    def batches(e: int) -> list[tuple[int, np.ndarray]]:
        plan = list(sampler.batches(e)) if run.multiscale else _fixed_batches(n_train, proto.batch, gen, ds.size)
        return [(size, positions[items]) for size, items in plan]

    steps = (
        sum(len(list(sampler.batches(e))) for e in range(run.epochs)) if run.multiscale else run.epochs * math.ceil(n_train / proto.batch)
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=proto.lr, total_steps=steps, pct_start=0.15)
    seen, step, train_s, curve, epoch_s, pixels, sampler_s = 0, 0, 0.0, [], [], [], 0.0
    for epoch in range(run.epochs):
        te = time.perf_counter()
        model.train()
        rep.set_epoch(epoch)
        plan = batches(epoch)
        sampler_s += time.perf_counter() - te
        pixels.append(int(sum(len(items) * size * size for size, items in plan)))
        total = torch.zeros((), device=device)
        for size, items in plan:
            weight = hard.at(step, steps)
            labels = rep.labels_of(items) if weight else None
            if store_policy is not None:
                views, target = rep.batch(items, output_size=size)
            else:
                views, target = rep.fresh(items, policy=fresh_policy, seed=run.seed + 1, output_size=size)
                if teachers is not None:
                    target = teachers(views).clone()  # a normal tensor (the forward runs in inference mode)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = model(norm(views))
            loss = soft_cross_entropy(logits.float(), target, labels=labels, hard_weight=weight, target_temperature=run.target_t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if run.multiscale:  # the linear scaling rule: the step's lr follows its batch size
                for g in opt.param_groups:
                    g["lr"] = sched.get_last_lr()[0] * sampler.lr_scale(size)
            opt.step()
            sched.step()
            step += 1
            seen += len(items)
            total += loss.detach() * len(items)
        epoch_s.append(time.perf_counter() - te)
        train_s += epoch_s[-1]
        acc, ece = _evaluate(model, x_test, y_test, norm)  # outside the timed training
        curve.append(round(acc, 4))
        if not args.quiet:
            eta = np.mean(epoch_s) * (run.epochs - epoch - 1)
            print(
                f"  [{run.name}] epoch {epoch + 1}/{run.epochs} loss {float(total) / n_train:.4f} top-1 {acc:.4f} "
                f"{n_train / epoch_s[-1]:,.0f} img/s, ETA {eta:.0f}s",
                flush=True,
            )
    uses_teachers = store_policy is not None or run.condition == "kd"
    return {
        "dataset": proto.dataset,
        "family": run.family,
        "condition": run.condition,
        "store_policy": store_policy,
        "store": Path(store).name if store else None,
        "teacher_set": teacher_set(proto) if uses_teachers else None,
        "teacher_precision": resolved_precision(proto.teacher_precision, device.type) if uses_teachers else None,
        "recipe": run.recipe,
        "split": proto.split,
        "k": run.k if run.k is not None else (proto.topk if store_policy else None),
        "epochs": run.epochs,
        "seed": run.seed,
        "test_top1": curve[-1],
        "ece": ece,
        "test_images": len(y_test),
        "train_seconds": round(train_s, 1),
        "images_per_second": round(seen / train_s, 1),
        "curve": curve,
        "epoch_seconds": [round(t, 2) for t in epoch_s],
        "pixels_per_epoch": pixels,  # sum of size**2 over the epoch's training views: conv FLOPs scale with it
        "multiscale": run.multiscale,
        "ms_batch": run.ms_batch if run.multiscale else None,
        "train_images": n_train,
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


def _recipe_run(proto: Protocol, family: str, condition: str, epochs: int, seed: int) -> Run:
    """A run of ``condition`` with the protocol's recipe for it (crop ranges only where the
    condition's policy is an rrc preset)."""
    r = proto.recipe_of(condition)
    rrc = DATASETS[proto.dataset].base_policy.startswith("rrc")
    return Run(family, condition, epochs, seed, crop_scale=r["crop_scale"] if rrc else None, hard=r["hard"], target_t=r["target_t"])


def _selection_runs(proto: Protocol, family: str, epochs: int, seed: int) -> list[Run]:
    """The selection grid: every crop range for plain, plain-strong and the reinforced runs,
    every hard-label schedule for the reinforced runs."""
    out = [Run(family, c, epochs, seed, crop_scale=cs) for c in ("plain", "plain-strong") for cs in proto.select_crops]
    out += [
        Run(family, f"reinforced:{p}", epochs, seed, crop_scale=cs, hard=h)
        for p in proto.stores
        for cs in proto.select_crops
        for h in proto.select_hard
    ]
    return out


def plan(proto: Protocol, args: argparse.Namespace, kstudy: bool = False) -> list[Run]:
    """Every run of the stage, cheapest complete comparison first (the short budget, seed 0)."""
    if kstudy:
        return [Run("resnet", f"reinforced:{proto.stores[0]}", proto.kstudy_epochs or proto.budgets[-1], 0, k) for k in proto.kstudy]
    runs = [
        r
        for e in proto.budgets
        for s in sorted({s for seeds in proto.seeds.values() for s in seeds})
        for f in proto.families
        if s in proto.seeds[f]
        for r in (_selection_runs(proto, f, e, s) if proto.select_crops else [_recipe_run(proto, f, c, e, s) for c in proto.conditions(f)])
    ]
    if args.family:
        runs = [r for r in runs if r.family in args.family]
    if args.epochs:
        runs = [r for r in runs if r.epochs in args.epochs]
    if args.condition:
        runs = [r for r in runs if r.condition in args.condition]
    if args.seed:
        runs = [r for r in runs if r.seed in args.seed]
    if getattr(args, "hard", None):
        runs = [r for r in runs if r.hard in args.hard]
    if getattr(args, "crop_scale", None):
        runs = [r for r in runs if (r.crop_scale or 0.08) in args.crop_scale]
    if getattr(args, "target_t", None):
        runs = [dataclasses.replace(r, target_t=args.target_t) for r in runs if r.condition.startswith("reinforced:")]
    if getattr(args, "multiscale", False):
        runs = [dataclasses.replace(r, multiscale=True, ms_batch=args.ms_batch) for r in runs]
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
    needed = {
        "kstudy" if r.k is not None else store_key(r.condition.split(":", 1)[1], r.crop_scale)
        for r in todo
        if r.condition.startswith("reinforced:")
    }
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

    from dr.storage import StoreReader
    from dr.storage.layout import TARGET_ARRAYS, compressors, spec_of

    g = zarr.open_group(store, mode="r")
    header = StoreReader(store).header
    total = 0
    for path in TARGET_ARRAYS:
        src = g[path]
        a = np.asarray(src[:, :, :k])
        mem = zarr.create_array(
            zarr.storage.MemoryStore(),
            shape=a.shape,
            chunks=(src.chunks[0], *a.shape[1:]),
            dtype=a.dtype,
            compressors=compressors(spec_of(header, path)),
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
    every = [json.loads(p.read_text()) for _, p in sorted(found.items())]
    # this protocol's runs: its split, and its teachers (runs without teachers count for every teacher set)
    runs = [r for r in every if r.get("split", "test") == proto.split and r.get("teacher_set") in (None, teacher_set(proto))]
    earlier = [r for r in every if r.get("teacher_set") not in (None, teacher_set(proto))]
    if not runs:
        raise SystemExit(f"no student results under {work / 'students'}: run the students stage first")
    if proto.select_crops:
        return _selection_report(args, proto, runs)
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
                rs = [r for r in main if r["family"] == family and r["condition"] == c and r["epochs"] == b and _follows(r, proto)]
                plains = {
                    r["seed"]: r
                    for r in main
                    if r["family"] == family and r["condition"] == "plain" and r["epochs"] == b and _follows(r, proto)
                }
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
                    "family": family,
                    "condition": c,
                    "epochs": b,
                    "recipe": rs[0].get("recipe"),
                    "teacher_set": rs[0].get("teacher_set"),
                    "seeds": sorted(r["seed"] for r in rs),
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
    keys = RECORD_KEYS
    record = {
        "protocol": asdict(proto),
        "machine": machine,
        "versions": {"torch": torch.__version__, "python": platform.python_version(), "dr": dr.__version__},
        "teachers": [{k: c.get(k) for k in ("teacher_spec", "test_top1", "train_seconds", "epochs")} for c in cards],
        "ensemble_top1": ens_acc,
        "stores": builds,
        "runs": [{k: r.get(k) for k in keys} for r in runs],
        "summary": summary,
        "earlier_teachers": _earlier_summary(earlier),
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


#: what every run of a results JSON carries: enough to tell any two runs apart from their fields
RECORD_KEYS = (
    "dataset",
    "family",
    "condition",
    "store_policy",
    "store",
    "teacher_precision",
    "teacher_set",
    "recipe",
    "split",
    "k",
    "kstudy",
    "multiscale",
    "ms_batch",
    "epochs",
    "seed",
    "test_top1",
    "ece",
    "train_seconds",
    "images_per_second",
    "curve",
)


def _follows(record: dict, proto: Protocol) -> bool:
    """Whether a run record used the protocol's recipe for its condition."""
    want = proto.recipe_of(record["condition"])
    rec = record.get("recipe") or {}
    rrc = DATASETS[proto.dataset].base_policy.startswith("rrc")
    return (
        rec.get("crop_scale") == (want["crop_scale"] if rrc else None)
        and rec.get("hard_label", "0") == parse_hard(want["hard"]).describe()
        and float(rec.get("target_temperature", 1.0)) == float(want["target_t"])
    )


def _earlier_summary(runs: list[dict]) -> list[dict]:
    """Mean top-1 per (teacher set, family, condition, budget) of the runs with other teachers."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r.get("kstudy") or r.get("multiscale"):
            continue
        groups.setdefault((r.get("teacher_set"), r["family"], r["condition"], r["epochs"]), []).append(r)
    return [
        {
            "teacher_set": t,
            "family": f,
            "condition": c,
            "epochs": e,
            "n": len(rs),
            "top1_mean": float(np.mean([r["test_top1"] for r in rs])),
        }
        for (t, f, c, e), rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0]))
    ]


def _selection_report(args: argparse.Namespace, proto: Protocol, runs: list[dict]) -> str:
    """The selection split's table: every condition at every crop range and hard-label schedule,
    per budget (held-out train images; the test split is never read), and the best of each
    kind of condition."""
    work = Path(args.workdir)
    runs = [r for r in runs if not r.get("kstudy") and not r.get("multiscale")]
    lines = [
        f"Selection split: {proto.holdout_per_class} train images per class held out as the test set; students train on the rest.",
        "",
        "| family | E | seed | condition | crop scale | hard label | target T | top-1 % | ECE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(runs, key=lambda r: (r["family"], r["epochs"], r["seed"], r["condition"], str(r["recipe"])))
    for r in order:
        rec = r["recipe"]
        lines.append(
            f"| {r['family']} | {r['epochs']} | {r['seed']} | {r['condition']} | {rec['crop_scale'] or 0.08:g} | {rec['hard_label']} | "
            f"{rec['target_temperature']:g} | {100 * r['test_top1']:.2f} | {r['ece']:.3f} |"
        )
    best: dict[str, dict] = {}
    for r in runs:
        key = f"{r['family']}/{kind_of(r['condition'])}@{r['epochs']}"
        if key not in best or r["test_top1"] > best[key]["test_top1"]:
            best[key] = {k: r.get(k) for k in ("family", "condition", "epochs", "seed", "recipe", "test_top1", "ece")}
    lines += ["", "Best per kind of condition:", ""]
    lines += [f"- {k}: {100 * b['test_top1']:.2f} % with {b['recipe']}" for k, b in sorted(best.items())]
    text = "\n".join(lines)
    (work / "results.md").write_text(text + "\n")
    machine = runs[0].get("machine") or _machine(runs[0]["device"])
    record = {"protocol": asdict(proto), "machine": machine, "runs": [{k: r.get(k) for k in RECORD_KEYS} for r in runs], "best": best}
    (work / "results.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    if args.publish:
        dest = REPO / "examples" / "results" / f"families-{proto.name}"
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("results.md", "results.json"):
            shutil.copy(work / name, dest / name)
        shutil.copy(work / "results.json", REPO / "bench" / "results" / f"{proto.name}.json")
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
                if not r.get("multiscale")
                and not r.get("kstudy")
                and (r["family"], r["condition"], r["epochs"], r["seed"]) == key
                and r.get("recipe") == ms.get("recipe")
                and r.get("teacher_set") == ms.get("teacher_set")
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
    p.add_argument("--hard", type=csv(str), default=None, help="students: only the runs with these hard-label schedules (0, 0.5-0, ...)")
    p.add_argument(
        "--crop-scale", type=csv(float), default=None, help="students: only the runs with these crop ranges (0.08 = the preset's)"
    )
    p.add_argument("--target-t", type=float, default=None, help="students: the reinforced runs again with this target temperature")
    p.add_argument(
        "--select",
        action="store_true",
        help="the selection protocol (tin100): 50 train images per class held out as the test set, the crop ranges and "
        "hard-label schedules tried on them",
    )
    p.add_argument("--v1", action="store_true", help="tin100: the earlier protocol (the two teachers of examples/assets/teachers-tin100)")
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
    proto = QUICK if args.quick else C10_CPU if args.dataset == "cifar10" else TIN_SELECT if args.select else TIN_CPU if args.v1 else TIN_V2
    if args.quick and args.dataset != "tin100":
        raise SystemExit("--quick runs on tin100")
    if args.quick and args.select:
        proto = QUICK_SELECT
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
