#!/usr/bin/env python
"""Teacher arithmetic on this machine: fp32 against bf16 autocast, eager against compiled.

A build's CPU time goes mostly to the teachers. This measures the ensemble's forward on real
images, exactly as a build worker sets it up (``Ensemble.from_specs(..., precision=P)``,
channels-last, ``--compile`` or not), in four modes: fp32 / bf16 x eager / compiled. The modes'
timed passes are interleaved (round-robin, ``--repeats`` each, median reported), so a drift in
machine load hits them alike. Against fp32 eager, the baseline, it reports each mode's speed
ratio and how far its probabilities move: top-1 agreement, the largest and mean absolute
difference of a probability, and the mean KL divergence.

bf16 pays only on CPUs with native bf16 (AVX-512 BF16 or AMX; ``native_bf16`` in the JSON):
elsewhere it is emulated and slower than fp32, which is why ``--precision auto`` stays fp32 on
CPUs and a build runs bf16 there only when asked (``--precision bf16``).

    .venv/bin/python bench/teacher_precision.py --data FOLDER [--teachers-dir DIR] [--images 2048]
        [--batch 256] [--repeats 3] [--out bench/results/teacher-precision-cpu.json]

FOLDER is an image folder (class folders of images; e.g. Tiny-ImageNet-100's extracted val
split); images are resized to the teachers' input size. The last line printed is the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "examples"))

from imagenet_scale import machine  # noqa: E402
from proof_common import shipped_cards  # noqa: E402

from dr.teachers import Ensemble  # noqa: E402

MODES = (("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True))


def load_views(folder: Path, count: int, size: int) -> torch.Tensor:
    """The first ``count`` images of ``folder`` (sorted), RGB, resized to ``size`` px: uint8 ``[N,3,S,S]``."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    if len(files) < count:
        raise SystemExit(f"--data {folder}: {len(files)} images, --images asks for {count}")
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def forward_all(ens: Ensemble, views: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([ens(views[i : i + batch]) for i in range(0, len(views), batch)])


def compare(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    """How far ``out``'s probabilities are from ``ref``'s (both ``[N,C]``)."""
    diff = (out - ref).abs()
    kl = (ref * (ref.clamp_min(1e-12).log() - out.clamp_min(1e-12).log())).sum(1)
    return {
        "top1_agreement": round(float((out.argmax(1) == ref.argmax(1)).float().mean()), 5),
        "max_abs_dp": round(float(diff.max()), 5),
        "mean_abs_dp_top1": round(float(diff.gather(1, ref.argmax(1, keepdim=True)).mean()), 6),
        "mean_kl": round(float(kl.mean()), 7),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="an image folder (class folders of images)")
    p.add_argument("--teachers-dir", type=Path, default=REPO / "examples/assets/teachers-tin100", help="shipped teacher cards (*.json)")
    p.add_argument("--images", type=int, default=2048, help="views per timed pass")
    p.add_argument("--batch", type=int, default=256, help="views per forward (a build's forward group)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per mode, interleaved")
    p.add_argument("--out", type=Path, default=REPO / "bench/results/teacher-precision-cpu.json")
    args = p.parse_args(argv)

    cards = shipped_cards(args.teachers_dir, 1, "examples/train_teacher.py")
    specs = [c["teacher_spec"] for c in cards]
    size = int(cards[0].get("input_size", 64))
    views = load_views(args.data, args.images, size)
    ensembles, compile_s = {}, {}
    for precision, compiled in MODES:
        name = f"{precision}-{'compiled' if compiled else 'eager'}"
        t0 = time.perf_counter()
        ens = Ensemble.from_specs(specs, precision=precision).optimize(channels_last=True, compile=compiled)
        forward_all(ens, views[: args.batch], args.batch)  # warm-up (and the compile, once per shape)
        compile_s[name] = round(time.perf_counter() - t0, 1)
        ensembles[name] = ens
    seconds: dict[str, list[float]] = {n: [] for n in ensembles}
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for name, ens in ensembles.items():
            t0 = time.perf_counter()
            outputs[name] = forward_all(ens, views, args.batch)
            seconds[name].append(time.perf_counter() - t0)
    base = "fp32-eager"
    base_rate = len(views) / statistics.median(seconds[base])
    modes = {}
    for name in ensembles:
        rate = len(views) / statistics.median(seconds[name])
        modes[name] = {
            "views_per_s": round(rate, 1),
            "views_per_s_each": [round(len(views) / s, 1) for s in seconds[name]],
            "ratio_vs_fp32_eager": round(rate / base_rate, 3),
            "setup_and_first_batch_s": compile_s[name],
            **compare(outputs[base], outputs[name]),
        }
    rec = {
        "what": "teacher ensemble forward, views/s per arithmetic (dr.teachers.Ensemble as a build worker sets it up)",
        "teachers": [c["teacher_spec"].split("@")[-1].replace(str(REPO) + "/", "") for c in cards],
        "input_size": size,
        "images": len(views),
        "data": str(args.data),
        "batch": args.batch,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "baseline": base,
        "modes": modes,
        "machine": machine(),
    }
    for name, m in modes.items():
        print(
            f"{name:15s} {m['views_per_s']:8.1f} views/s  {m['ratio_vs_fp32_eager']:.2f}x  top-1 agreement {m['top1_agreement']:.4f}  max |dp| {m['max_abs_dp']:.4f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rec, indent=2) + "\n")
    print(json.dumps(rec))
    return rec


if __name__ == "__main__":
    main()
