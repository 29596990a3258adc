"""Helpers shared by the proof-of-value protocols (``cifar10plus.py``, ``families.py``)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

__all__ = ["ece", "log", "machine", "shipped_cards", "teacher_card"]

REPO = Path(__file__).resolve().parents[1]


def shipped_cards(folder: Path, at_least: int, how: str) -> list[dict]:
    """The JSON cards of a shipped teacher ensemble, their specs made absolute (the specs
    name the weights relative to the repository)."""
    cards = []
    for path in sorted(Path(folder).glob("*.json")):
        card = json.loads(path.read_text())
        card["teacher_spec"] = card["teacher_spec"].replace("@examples/", f"@{REPO}/examples/")
        cards.append(card)
    if len(cards) < at_least:
        raise SystemExit(f"the protocol uses the {at_least} teachers shipped in {folder}, found {len(cards)}: train them with {how}")
    return cards


def teacher_card(out: Path, argv: list[str]) -> dict:
    """Train a teacher with ``examples/train_teacher.py ARGV --out OUT`` unless its card
    ``OUT.json`` exists (a cached stage); returns the card."""
    if not out.with_suffix(".json").exists():
        import train_teacher

        train_teacher.main([*argv, "--out", str(out)])
    return json.loads(out.with_suffix(".json").read_text())


def log(workdir: str | Path, text: str) -> None:
    """Print ``text`` and append it, time-stamped, to ``WORKDIR/timings.log``."""
    print(text, flush=True)
    with open(Path(workdir) / "timings.log", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


def machine(device: str) -> str:
    """The GPU's name, or the CPU, its cores and torch's threads."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def ece(p: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error: confidence vs accuracy over ``bins`` equal-width bins."""
    conf, pred = p.max(1)
    correct = (pred == y).float()
    b = torch.clamp((conf * bins).long(), max=bins - 1)
    return sum(
        float((b == i).float().mean()) * abs(float(correct[b == i].mean()) - float(conf[b == i].mean()))
        for i in range(bins)
        if (b == i).any()
    )
