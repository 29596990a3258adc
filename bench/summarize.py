#!/usr/bin/env python
"""Markdown summary of a ``bench/gpu_suite.sh`` output folder (its JSON files)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: str) -> str:
    out = Path(folder)
    load = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    lines = [f"# GPU suite results ({folder})", ""]
    failed_file = out / "failed.txt"
    failed = failed_file.read_text().split() if failed_file.exists() else []
    if failed:
        lines += [f"**Failed steps:** {', '.join(failed)} (see their `.log` files; no figures from them below).", ""]
    if "replay" in load:
        r = load["replay"]
        lines += [
            f"## Replay engine ({r['machine']}, torch {r['torch']})",
            "",
            "| device | size | preset | batch | batched views/s | per-view views/s | ratio | ceiling | aten ops / batch |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for x in r["rows"]:
            lines.append(
                f"| {x['device']} | {x['size']} | {x['preset']} | {x['batch']} | {x['batched_views_per_s']:,.0f} | {x['per_view_views_per_s']:,.0f} | {x['ratio']:.2f}x | {x.get('ceiling_ratio', float('nan')):.2f}x | {x['aten_ops_per_batch']} |"
            )
        lines.append("")
    for key in ("build-resnet50", "build-ensemble"):
        if key in load:
            b = load[key]
            lines += [
                f"## Build throughput: {b['teachers']} ({b['device']})",
                "",
                f"policy {b['policy']}, V={b['views']}, {b['images']} images -> {b['size']} px: teacher-only {b['teacher_only']:,.0f} views/s, "
                f"build {b['build']:,.0f}, CPU-loader baseline {b['cpu_baseline']:,.0f}; build/teacher **{b['build_over_teacher']:.2f}** (goal >= 0.90), "
                f"build/baseline **{b['build_over_cpu_baseline']:.2f}** (goal >= 4)",
                "",
            ]
    if "train-speed" in load:
        t = load["train-speed"]
        lines += [
            f"## Student training speed ({t['device']})",
            "",
            f"batch {t['batch']}: plain {t['plain_images_per_s']:,.0f} img/s, reinforced {t['reinforced_images_per_s']:,.0f} img/s, ratio **{t['ratio']:.3f}** (goal >= 0.95)",
            "",
        ]
    if "device-error" in load:
        d = load["device-error"]
        lines += [
            f"## Replay error: {d['reference']} vs {d['other']}",
            "",
            "| size | preset | views | max levels | mean levels | % pixels differing | teacher top-1 agreement | mean abs dp |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for x in d["rows"]:
            agree = f"{x['teacher_top1_agreement_pct']:.2f}%" if "teacher_top1_agreement_pct" in x else "-"
            dp = f"{x['teacher_mean_abs_dp']:.2e}" if "teacher_mean_abs_dp" in x else "-"
            lines.append(
                f"| {x['size']} | {x['preset']} | {x['views']} | {x['max_levels']} | {x['mean_levels']:.5f} | {x['pixels_differing_pct']:.4f} | {agree} | {dp} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1]))
