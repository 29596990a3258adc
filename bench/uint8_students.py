"""Do students lose with 8-bit probabilities? Students trained on two stores that differ only in
``--probs-dtype`` (float16, dr's default, and uint8), both built here with the shipped teachers,
one after the other (each store, then its students; ``--first`` picks which goes first):

* ``--protocol cifar10`` (default): the CIFAR-10 CPU protocol's ``reinforced:cifar`` ResNet at
  5 epochs, seeds 0 and 1; goal: the uint8 mean at most 0.2 points below float16's.
  Writes ``bench/results/uint8-students-cpu.json``.
* ``--protocol tin100``: the Tiny-ImageNet-100 CPU protocol's ``reinforced:rrc`` ResNet at 12
  epochs, seed 0 (the first shipped teacher pair); goal: at most 0.3 points below.
  Writes ``bench/results/uint8-students-tin100-cpu.json``.

    python bench/uint8_students.py --workdir W [--protocol cifar10|tin100] [--families resnet] [--seeds 0 1]

Goals from issue 35 (a gain is not a loss; it is reported as measured). Every stage is cached in
WORKDIR (the stores resume; a finished run's JSON is kept), so rerunning the command resumes it.
The JSON holds one record per run (family, condition, store, probs_dtype, epochs, seed, top-1,
ECE) and per family the means and their difference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

import families  # noqa: E402  (examples/families.py: the protocol, its stores and its training loop)

DTYPES = ("float16", "uint8")
# protocol -> (the families.py protocol, the store's policy, epochs, seeds, goal in points, output)
PROTOCOLS: dict[str, tuple[families.Protocol, str, int, list[int], float, Path]] = {
    "cifar10": (families.C10_CPU, "cifar", 5, [0, 1], 0.2, REPO / "bench" / "results" / "uint8-students-cpu.json"),
    "tin100": (families.TIN_CPU, "rrc", 12, [0], 0.3, REPO / "bench" / "results" / "uint8-students-tin100-cpu.json"),
}


def run_one(args: argparse.Namespace, proto: families.Protocol, run: families.Run, policy: str, store: str, dtype: str) -> dict[str, Any]:
    """One student on ``store``, cached as WORKDIR/students-u8/<run>-<dtype>.json."""
    path = Path(args.workdir) / "students-u8" / f"{run.name}-{dtype}.json"
    if path.exists():
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    specs = [c["teacher_spec"] for c in families.stage_teachers(args, proto)]
    r = families.train_student(args, proto, run, {policy: store}, specs)
    r.update(probs_dtype=dtype, load_average_1_5_15=[round(x, 2) for x in os.getloadavg()], finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=2) + "\n")
    print(f"{run.name} {dtype}: top-1 {r['test_top1']:.4f} ECE {r['ece']:.4f} ({r['train_seconds']:.0f} s)", flush=True)
    return r


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="where the extracted data, the two stores and the runs live")
    ap.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cifar10", help="which CPU protocol's student (default: cifar10)")
    ap.add_argument("--families", nargs="+", default=["resnet"], choices=sorted(families.FAMILIES))
    ap.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 (cifar10), 0 (tin100)")
    ap.add_argument("--epochs", type=int, help="default: 5 (cifar10), 12 (tin100)")
    ap.add_argument("--out", type=Path, help="default: bench/results/uint8-students[-tin100]-cpu.json")
    ap.add_argument("--first", choices=DTYPES, default="float16", help="which store is built and trained on first (default: float16)")
    args = ap.parse_args(argv)
    proto, policy, epochs, seeds, goal_points, out_path = PROTOCOLS[args.protocol]
    args.seeds = args.seeds or seeds
    args.epochs = args.epochs or epochs
    args.out = args.out or out_path
    args.data, args.quiet, args.publish = None, True, False
    order = sorted(DTYPES, key=lambda d: d != args.first)
    stores: dict[str, str] = {}
    for d in order:  # each store, then its students: the first dtype's result comes before the second store is built
        stores[d] = families._build(args, proto, policy, proto.topk, probs_dtype=d)
        for family in args.families:
            for seed in args.seeds:
                run_one(args, proto, families.Run(family, f"reinforced:{policy}", args.epochs, seed), policy, stores[d], d)
    runs, summary = [], {}
    for family in args.families:
        by_dtype: dict[str, list[float]] = {d: [] for d in DTYPES}
        ece: dict[str, list[float]] = {d: [] for d in DTYPES}
        for seed in args.seeds:
            run = families.Run(family, f"reinforced:{policy}", args.epochs, seed)
            for d in DTYPES:  # (cached above)
                r = run_one(args, proto, run, policy, stores[d], d)
                keep = ("dataset", "family", "condition", "store", "teacher_set", "recipe", "split", "k", "epochs", "seed")
                runs.append(
                    {
                        **{k: r.get(k) for k in keep},
                        "probs_dtype": d,
                        **{k: r.get(k) for k in ("test_top1", "ece", "train_seconds", "images_per_second", "load_average_1_5_15")},
                    }
                )
                by_dtype[d].append(100 * r["test_top1"])
                ece[d].append(r["ece"])
        diff = statistics.mean(by_dtype["uint8"]) - statistics.mean(by_dtype["float16"])
        summary[family] = {
            "float16_top1_mean": round(statistics.mean(by_dtype["float16"]), 2),
            "uint8_top1_mean": round(statistics.mean(by_dtype["uint8"]), 2),
            "uint8_minus_float16_points": round(diff, 2),
            "goal": f"uint8 >= float16 - {goal_points} points (mean of {len(args.seeds)} seed(s)): students do not lose",
            "met": diff >= -goal_points,
            "float16_ece_mean": round(statistics.mean(ece["float16"]), 4),
            "uint8_ece_mean": round(statistics.mean(ece["uint8"]), 4),
        }
    out = {
        "bench": "uint8_students",
        "protocol": proto.name,
        "condition": f"reinforced:{policy}",
        "epochs": args.epochs,
        "seeds": args.seeds,
        "stores": {d: Path(stores[d]).name for d in DTYPES},
        "store_builds": {
            d: json.loads(Path(stores[d] + ".build.json").read_text()) for d in DTYPES if Path(stores[d] + ".build.json").exists()
        },
        "summary": summary,
        "runs": runs,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
        "load_note": "runs record the load average they finished at; other jobs may have shared the CPU (see there)",
        "command": "python bench/uint8_students.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return out


if __name__ == "__main__":
    main()
