"""A dataset that grows, on CPU: extend a CIFAR-10+ store with new images, then train continually.

    python examples/continual.py all --workdir W --publish     # ~45 min on a 2-core CPU; resumable
    python examples/continual.py report --workdir W           # the table and JSON again

CIFAR-10 train is split into two seeded random halves of 25,000 images (``list:`` sources of
the same 10 classes). The protocol, fixed up front:

* ``reinforce``: a store of the first half (``dr-build reinforce`` with the shipped CIFAR-10
  teachers, policy ``cifar``, V = 4, k = 10); then ``--extend`` it with the second half: the
  teachers label only the new images. The reference is the second half labelled into a store
  of its own (the teacher compute of the new images alone); each build's wall-clock and
  views/s are recorded.
* ``cost``: two more pairs, alternating, of (extend a copy of the first-half store, label the
  second half alone), on an otherwise idle machine: the extension's cost ratio.
* ``students`` (a ResNet-8, the families protocol's optimiser and batch, one-cycle schedule;
  ``DeviceReplay`` over the store, so every run uses the same loader):

  - ``base``: 10 epochs on the first segment only (what exists before the data grows);
  - ``continual``: from ``base``'s weights, 5 epochs over the grown store with
    :class:`dr.RehearsalSampler` (half of each epoch new images, half rehearsed old ones; each
    epoch 50,000 items, so every new image once per epoch);
  - ``continual-6``: the same for 6 epochs (300,000 images: 0.6x ``scratch``, the goal's budget);
  - ``new-only``: 5 epochs from ``base`` without replay (the new images only, 25,000 per epoch);
  - ``scratch``: 10 epochs over the grown store from a fresh initialisation.

  Seeds 0, 1 and 2 (initialisation, view choice, data order, replay draws). Compute is counted
  in training images (one forward and backward of the same model at the same size each):
  ``continual`` trains 250,000 images against ``scratch``'s 500,000. Every run uses the same
  optimiser and one-cycle schedule (a warm start restarts it). The test set is CIFAR-10 test
  (10,000), never tuned on.

Stages cache their outputs in the workdir (stores resume chunk by chunk; a student run is one
JSON file, its weights one safetensors file), so a stopped protocol continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cifar_data import extract_split, sgd_nesterov
from proof_common import ece, log, machine, shipped_cards

from dr.builder import BuildConfig, reinforce
from dr.loss import soft_cross_entropy
from dr.replay import DeviceReplay
from dr.samplers import RehearsalSampler
from dr.sources import ImageFolderSource
from dr.teachers import zoo

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cifar10"
VIEWS, TOPK, CHUNK, BATCH, LR, WD = 4, 10, 256, 256, 0.2, 5e-4
#: run -> (epochs, start from, new_fraction (None: no sampler, every served item once per epoch), segments served)
RUNS: dict[str, tuple[int, str | None, float | None, list[int] | None]] = {
    "base": (10, None, None, [0]),
    "continual": (5, "base", 0.5, None),
    "continual-6": (6, "base", 0.5, None),
    "new-only": (5, "base", 1.0, None),
    "scratch": (10, None, None, None),
}
SEEDS = (0, 1, 2)


def _data(work: Path) -> tuple[dict[str, str], Path]:
    """The two halves and the whole train set as ``list:`` sources, and the test folder."""
    train, test = work / "data" / "train", work / "data" / "test"
    if not (work / "data" / ".done").exists():
        extract_split(DATA, "train", train)
        extract_split(DATA, "test", test)
        (work / "data" / ".done").write_text("ok\n")
    src = ImageFolderSource(str(train))
    order = np.random.default_rng(0).permutation(len(src))
    classes = ",".join(src.classes)
    rows = [(src.describe(int(i)), int(src.labels()[i])) for i in order]
    out = {}
    for name, part in (("first", rows[: len(rows) // 2]), ("second", rows[len(rows) // 2 :])):
        path = work / f"{name}.csv"
        if not path.exists():
            path.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in part))
        out[name] = f"list:{path}?classes={classes}"
    return out, test


def _new_store(source: str, specs: list[str], out: str, **kw: Any) -> BuildConfig:
    """The protocol's build of ``source`` into a new store (policy cifar, V, k, chunking)."""
    return BuildConfig(source=source, teachers=specs, policy="cifar", views=VIEWS, topk=TOPK, chunk_size=CHUNK, out=out, **kw)


def stage_reinforce(work: Path, quiet: bool) -> dict[str, Any]:
    """The store of the first half, then its extension by the second; each build's speed."""
    lists, _ = _data(work)
    store = str(work / "cifar10-grown.zarr")
    record_path = work / "builds.json"
    records = json.loads(record_path.read_text()) if record_path.exists() else {}
    specs = [c["teacher_spec"] for c in shipped_cards(REPO / "examples/assets/teachers", 3, "examples/train_teachers.sh")]
    steps = {
        "first": _new_store(lists["first"], specs, store, resume=True, force=True),
        "extend": BuildConfig(source=lists["second"], teachers=specs, extend=store, resume=True, force=True),
        # the reference: the same new images labelled into a store of their own
        "alone": _new_store(lists["second"], specs, str(work / "second-alone.zarr"), resume=True, force=True),
    }
    for name, config in steps.items():
        if records.get(name, {}).get("done"):
            continue
        result = reinforce(config, progress=not quiet)
        if not result.complete:
            raise SystemExit(f"the {name} build stopped before the end: run the same command again to resume it")
        records[name] = {
            "images": result.header.dataset.count,
            "views": result.views_computed,
            "chunks_computed": result.chunks_computed,
            "seconds": round(result.seconds, 1),
            "working_seconds": round(result.working_seconds, 1),
            "views_per_second": round(result.views_per_second, 1),
            "working_views_per_second": round(result.working_views_per_second, 1),
            "done": True,
            "resumed": result.chunks_skipped > 0,  # then the figures cover only the part this run computed
        }
        log(work, f"continual: {name} build {result.views_computed} views in {result.seconds:.0f}s ({result.views_per_second:.0f} views/s)")
        record_path.write_text(json.dumps(records, indent=2) + "\n")
    return records


def stage_cost(work: Path, quiet: bool, repeats: int = 2) -> list[dict[str, float]]:
    """The extension's cost, timed fairly: ``repeats`` pairs, alternating, of extending a copy
    of the first-half store by the second half and labelling the second half into a store of
    its own (the teacher compute of the new images alone), on an otherwise idle machine."""
    import shutil

    lists, _ = _data(work)
    path = work / "cost.json"
    pairs: list[dict[str, float]] = json.loads(path.read_text()) if path.exists() else []
    specs = [c["teacher_spec"] for c in shipped_cards(REPO / "examples/assets/teachers", 3, "examples/train_teachers.sh")]
    for r in range(len(pairs), repeats):
        base, alone = work / "cost" / f"base-{r}.zarr", work / "cost" / f"alone-{r}.zarr"
        for old in (base, alone):
            shutil.rmtree(old, ignore_errors=True)
        shutil.copytree(work / "cifar10-grown.zarr", base, ignore=shutil.ignore_patterns("segments"))
        extend = reinforce(BuildConfig(source=lists["second"], teachers=specs, extend=str(base)), progress=not quiet)
        own = reinforce(_new_store(lists["second"], specs, str(alone)), progress=not quiet)
        pair = {
            "extend_seconds": round(extend.seconds, 1),
            "alone_seconds": round(own.seconds, 1),
            "extend_working_seconds": round(extend.working_seconds, 1),
            "alone_working_seconds": round(own.working_seconds, 1),
        }
        log(work, f"continual: cost pair {r}: extend {extend.seconds:.0f}s, alone {own.seconds:.0f}s")
        pairs.append(pair)
        path.write_text(json.dumps(pairs, indent=2) + "\n")
        shutil.rmtree(base), shutil.rmtree(alone)
    return pairs


def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Any) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(norm(x[i : i + 500])).float() for i in range(0, len(x), 500)])
    p = torch.softmax(logits, 1)
    return float((p.argmax(1) == y).float().mean()), ece(p, y)


def train(work: Path, name: str, seed: int, quiet: bool) -> dict[str, Any]:
    """One student run (see the module docstring); its record, and its weights saved."""
    from safetensors.torch import load_file, save_file

    epochs, start, new_fraction, segments = RUNS[name]
    _, test = _data(work)
    store = str(work / "cifar10-grown.zarr")
    torch.manual_seed(seed)
    rep = DeviceReplay(store, seed=seed, segments=segments, trust_store_location=True)  # the lists this script wrote
    src = ImageFolderSource(str(test))
    x_test = torch.stack([torch.from_numpy(src.read(i)[0]).permute(2, 0, 1) for i in range(len(src))])
    y_test = torch.from_numpy(src.labels())
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) * 255 for v in (zoo.CIFAR_MEAN, zoo.CIFAR_STD))

    def norm(v: torch.Tensor) -> torch.Tensor:
        return ((v.float() - mean) / std).contiguous(memory_format=torch.channels_last)

    model = zoo.cifar_resnet(depth=8, width=16, num_classes=10).to(memory_format=torch.channels_last)
    if start is not None:
        model.load_state_dict(load_file(str(work / f"{start}-s{seed}.safetensors")))
    sampler = RehearsalSampler(rep, new_fraction=new_fraction, seed=seed) if new_fraction is not None else None
    per_epoch = len(sampler) if sampler is not None else len(rep)
    opt = sgd_nesterov(model, LR, WD)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=epochs * math.ceil(per_epoch / BATCH), pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    curve, seconds = [], 0.0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        if sampler is not None:
            sampler.set_epoch(epoch)
            order = np.asarray(list(sampler))
        else:
            order = torch.randperm(len(rep), generator=gen).numpy()
        for s in range(0, len(order), BATCH):
            views, target = rep.batch(order[s : s + BATCH], epoch)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(norm(views))
            loss = soft_cross_entropy(logits.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        seconds += time.perf_counter() - t0
        acc, calib = _evaluate(model, x_test, y_test, norm)
        curve.append(round(acc, 4))
        if not quiet:
            print(
                f"  [{name}-s{seed}] epoch {epoch + 1}/{epochs} top-1 {acc:.4f} ({per_epoch / (time.perf_counter() - t0):,.0f} img/s)",
                flush=True,
            )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(work / f"{name}-s{seed}.safetensors"))
    return {
        "run": name,
        "seed": seed,
        "epochs": epochs,
        "starts_from": start,
        "new_fraction": new_fraction,
        "segments": segments if segments is not None else "all",
        "train_images": epochs * per_epoch,
        "test_top1": curve[-1],
        "ece": round(calib, 4),
        "train_seconds": round(seconds, 1),
        "images_per_second": round(epochs * per_epoch / seconds, 1),
        "curve": curve,
    }


def stage_students(work: Path, quiet: bool, only: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every run of every seed (seed by seed: each seed's ``base`` first); cached per run."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in RUNS}
    for seed in SEEDS:
        for name in RUNS:
            path = work / "runs" / f"{name}-s{seed}.json"
            if not path.exists() and (only is None or name in only):
                path.parent.mkdir(parents=True, exist_ok=True)
                record = train(work, name, seed, quiet)
                path.write_text(json.dumps(record, indent=2) + "\n")
                log(work, f"continual: student {name}-s{seed}: top-1 {record['test_top1']:.4f} ({record['train_seconds']:.0f}s)")
            if path.exists():
                runs[name].append(json.loads(path.read_text()))
    return {name: rs for name, rs in runs.items() if rs}


def _mean(rs: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([r[key] for r in rs]))


def _student_table(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    scratch = _mean(runs["scratch"], "train_images") if "scratch" in runs else None
    lines = [
        "| run | starts from | epochs | training images | vs scratch | top-1 (mean of seeds) | per seed | ECE | train s |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, rs in runs.items():
        r = rs[0]
        ratio = f"{r['train_images'] / scratch:.2f}x" if scratch else "-"
        if r["starts_from"] in runs and scratch:
            ratio += f" ({(r['train_images'] + runs[r['starts_from']][0]['train_images']) / scratch:.2f}x with it)"
        seeds = ", ".join(f"{100 * x['test_top1']:.2f}" for x in rs)
        lines.append(
            f"| {name} | {r['starts_from'] or 'random init'} | {r['epochs']} | {r['train_images']:,} | {ratio} | "
            f"{100 * _mean(rs, 'test_top1'):.2f} % | {seeds} | {_mean(rs, 'ece'):.3f} | {_mean(rs, 'train_seconds'):.0f} |"
        )
    return lines


def _build_lines(builds: dict[str, Any]) -> list[str]:
    first, ext, alone = builds["first"], builds["extend"], builds.get("alone")
    lines = [
        "| build | images | views | wall-clock | views/s (workers up) |",
        "|---|---:|---:|---:|---:|",
        f"| first half (new store) | {first['images']:,} | {first['views']:,} | {first['seconds']:.0f} s | {first['working_views_per_second']:.0f} |",
        f"| second half (`--extend`) | {ext['images']:,} | {ext['views']:,} | {ext['seconds']:.0f} s | {ext['working_views_per_second']:.0f} |",
    ]
    if alone:
        lines += [
            f"| second half alone (new store) | {alone['images']:,} | {alone['views']:,} | {alone['seconds']:.0f} s | {alone['working_views_per_second']:.0f} |",
            "",
            "These three builds ran while other jobs shared the CPU at times; the pairs below time the extension's cost.",
        ]
    return lines


def _cost_lines(pairs: list[dict[str, float]]) -> list[str]:
    if not pairs:
        return []
    ratio = [p["extend_seconds"] / p["alone_seconds"] for p in pairs]
    working = [p["extend_working_seconds"] / p["alone_working_seconds"] for p in pairs]
    rows = [
        f"| {i} | {p['extend_seconds']:.0f} s | {p['alone_seconds']:.0f} s | {ratio[i]:.3f} | {working[i]:.3f} |"
        for i, p in enumerate(pairs)
    ]
    return [
        "The extension's cost, timed on an otherwise idle machine: pairs of (extend a copy of the first-half store by the second "
        "half, label the second half into a store of its own), alternating:",
        "",
        "| pair | extend | alone | ratio | ratio once workers were up |",
        "|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Mean ratio {np.mean(ratio):.3f} ({np.mean(working):.3f} once the workers were up): extending costs the teacher compute "
        "of the new images alone. A full rebuild would label all 50,000 images, twice the views.",
    ]


def stage_report(work: Path, publish: bool) -> str:
    builds = json.loads((work / "builds.json").read_text())
    cost = json.loads((work / "cost.json").read_text()) if (work / "cost.json").exists() else []
    runs = stage_students(work, quiet=True, only=[])
    seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    text = "\n".join(
        [
            f"Measured on {machine('cpu')}; students: seeds {', '.join(map(str, seeds))}.",
            "",
            *_build_lines(builds),
            "",
            *_cost_lines(cost),
            "",
            *_student_table(runs),
            "",
        ]
    )
    (work / "results.md").write_text(text)
    flat = [r for rs in runs.values() for r in rs]
    payload = {"protocol": "continual-cifar10-cpu", "machine": machine("cpu"), "builds": builds, "cost_pairs": cost, "runs": flat}
    (work / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    if publish:
        out = REPO / "examples/results/continual-cifar10-cpu"
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(text)
        (REPO / "bench/results/continual-cpu.json").write_text(json.dumps(payload, indent=2) + "\n")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["reinforce", "students", "cost", "report", "all"])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--run", default=None, help="students: only these runs (base,continual,continual-6,new-only,scratch)")
    parser.add_argument("--publish", action="store_true", help="write examples/results/continual-cifar10-cpu and bench/results")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.stage in ("reinforce", "all"):
        stage_reinforce(work, args.quiet)
    if args.stage in ("students", "all"):
        stage_students(work, args.quiet, args.run.split(",") if args.run else None)
    if args.stage in ("cost", "all"):
        stage_cost(work, args.quiet)
    if args.stage in ("report", "all"):
        print(stage_report(work, args.publish))


if __name__ == "__main__":
    main()
