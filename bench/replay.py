#!/usr/bin/env python
"""Replay throughput: the batched engine vs a per-view engine, per preset, in one run.

For every preset, at 224 px from ImageNet-sized images (~500x375, varied) and at 32 px from
CIFAR-sized 32x32 images, it samples one unit of views (V per image, mixing partners from the
unit) and times, on each device present (CPU; CUDA when available):

* per-view: v0.1's engine, kept here only as the baseline -- a Python loop over views: crop,
  anti-aliased resize (torch's uint8 kernel on CPU, float32 + round elsewhere), flip,
  torchvision's RandAugment kernels one op at a time, erasing by slicing, then MixUp/CutMix one
  view at a time with its partner replayed the same way;
* batched: ``Policy.replay`` (``dr.policy.kernels``): launch count independent of B.

Also times crop + resize alone for the same base and partner views (``crop_only``): the
floor of any replay, so ``per-view / crop_only`` (``ceiling_ratio``) bounds the ratio the
batched engine could reach if every later op were free. Also counts aten operations per
batch of the batched engine (what a GPU launches). Prints a table, then one JSON line
(views/s and ratios).

    python bench/replay.py [--views-224 256] [--views-32 4096] [--repeat 3] [--preset P] [--size 224|32] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from dr.policy import RA_OPS, ImageBank, Policy, get_policy, list_policies
from dr.policy.augment import RandAugment, RandomErasing, apply_aug_op, magnitude_of
from dr.policy.kernels import crop_native
from dr.policy.mix import MIX_CUTMIX, MIX_MIXUP
from dr.policy.ops import HorizontalFlip


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if not func.is_view:
            self.n[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _chain_one(policy: Policy, img: torch.Tensor, prm: dict[str, np.ndarray], size: int) -> torch.Tensor:
    top, left, h, w = (int(x) for x in prm["crop_box"])
    v = crop_native(img, top, left, h, w)
    if (h, w) != (size, size):
        if v.device.type == "cpu":
            v = F.interpolate(v[None], size=(size, size), mode="bilinear", antialias=True)[0]
        else:
            v = F.interpolate(v[None].float(), size=(size, size), mode="bilinear", antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
    for op in policy.ops:
        if isinstance(op, HorizontalFlip) and int(prm["flip"]):
            v = v.flip(-1)
        elif isinstance(op, RandAugment):
            for op_id, neg in zip(prm["ra_ops"].tolist(), prm["ra_signs"].tolist()):
                if op_id:
                    name = RA_OPS[op_id]
                    v = apply_aug_op(
                        v, name, magnitude_of(name, op.magnitude, bool(neg), wide=False, bins=op.num_magnitude_bins, size=size)
                    )
        elif isinstance(op, RandomErasing):
            t, lf, eh, ew = (int(x) for x in prm["erase_box"])
            if eh:
                v = v.clone()
                v[:, t : t + eh, lf : lf + ew] = op.value
    return v


def per_view(policy: Policy, bank: ImageBank, flat: dict[str, np.ndarray], index: np.ndarray, partner: np.ndarray | None) -> torch.Tensor:
    """v0.1's engine: one view at a time (the baseline)."""
    size = policy.output_size
    chain = [f.name for f in policy.chain_fields()]
    out = []
    for j in range(len(index)):
        v = _chain_one(policy, bank.image(int(index[j])), {k: flat[k][j] for k in chain}, size)
        if policy.mix is not None and partner is not None and int(flat["mix_kind"][j]):
            p = _chain_one(policy, bank.image(int(partner[j])), {k: flat["partner_" + k][j] for k in chain}, size)
            if int(flat["mix_kind"][j]) == MIX_MIXUP:
                lam = torch.tensor(float(flat["mix_lambda"][j]), dtype=torch.float32, device=v.device)
                v = (lam * v.float() + (1 - lam) * p.float()).round().clamp(0, 255).to(torch.uint8)
            elif int(flat["mix_kind"][j]) == MIX_CUTMIX:
                t, lf, bh, bw = (int(x) for x in flat["mix_box"][j])
                v = v.clone()
                v[:, t : t + bh, lf : lf + bw] = p[:, t : t + bh, lf : lf + bw]
        out.append(v)
    return torch.stack(out)


def _crop_only(policy: Policy, bank: ImageBank, flat: dict[str, np.ndarray], index: np.ndarray, partner: np.ndarray | None) -> torch.Tensor:
    """Crop + resize of every base view and every mixed view's partner: the replay's floor."""
    crop = {f.name: flat[f.name] for f in policy.crop.fields()}
    idx = index
    if policy.mix is not None and partner is not None:
        mixed = np.flatnonzero(flat["mix_kind"] != 0)
        crop = {k: np.concatenate([a, flat["partner_" + k][mixed]]) for k, a in crop.items()}
        idx = np.concatenate([index, partner[mixed]])
    return policy.crop.apply(bank, {k: a.astype(np.int64) for k, a in crop.items()}, idx, policy.output_size)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, args: tuple, device: torch.device, repeat: int, **kw: Any) -> float:  # type: ignore[no-untyped-def]
    fn(*args, **kw)
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args, **kw)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def images(kind: str, n: int, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    if kind == "224":
        sizes = [(int(rng.integers(333, 400)), int(rng.integers(450, 520))) for _ in range(n)]
    else:
        sizes = [(32, 32)] * n
    # smooth random images (natural-image-like statistics matter little to the kernels)
    out = []
    for h, w in sizes:
        small = torch.from_numpy(rng.integers(0, 256, (3, max(h // 8, 4), max(w // 8, 4)), dtype=np.uint8))
        out.append(F.interpolate(small[None].float(), size=(h, w), mode="bilinear")[0].round().to(torch.uint8))
    return out


def run(
    device: torch.device, kind: str, views_total: int, repeat: int, per_view_cap: int, presets: list[str] | None = None
) -> list[dict[str, Any]]:
    size = 224 if kind == "224" else 32
    v = 8
    n = max(views_total // v, 2)
    imgs = images(kind, n)
    bank = ImageBank(imgs, device=device)
    rows = []
    for name in list_policies():
        policy = get_policy(name, size) if name.startswith("rrc") else get_policy(name, size)
        if presets and name not in presets:
            continue
        if name.startswith("cifar") and kind == "224":
            continue  # pad-crop presets are for CIFAR-sized images
        unit = policy.sample_unit(0, 0, bank.sizes, v)
        flat = {k: a.reshape(-1, *a.shape[2:]) for k, a in unit.items()}
        index = np.repeat(np.arange(n), v)
        partner = flat["mix_partner"].astype(np.int64) if "mix_partner" in flat else None
        b = len(index)
        t_batched = _time(policy.replay, (bank, flat, index), device, repeat, partner_index=partner)
        # the floor: crop + resize alone of the same base and partner views (what replay must do
        # before any other op), as output views/s; per-view / floor bounds the attainable ratio
        t_crop = _time(_crop_only, (policy, bank, flat, index, partner), device, repeat)
        # the per-view baseline on a prefix (it is slow), scaled per view
        m = min(b, per_view_cap)
        sub = {k: a[:m] for k, a in flat.items()}
        t_per_view = _time(per_view, (policy, bank, sub, index[:m], None if partner is None else partner[:m]), device, 1)
        with _Count() as c:
            policy.replay(bank, flat, index, partner_index=partner, method="batched")
        rows.append(
            {
                "device": device.type,
                "size": size,
                "preset": name,
                "batch": b,
                "batched_views_per_s": round(b / t_batched, 1),
                "per_view_views_per_s": round(m / t_per_view, 1),
                "ratio": round((b / t_batched) / (m / t_per_view), 2),
                "crop_only_views_per_s": round(b / t_crop, 1),
                "ceiling_ratio": round((b / t_crop) / (m / t_per_view), 2),
                "aten_ops_per_batch": sum(c.n.values()),
            }
        )
        r = rows[-1]
        print(
            f"{r['device']:5} {size:4}px {name:16} batched {r['batched_views_per_s']:>10,.0f} views/s  "
            f"per-view {r['per_view_views_per_s']:>9,.0f}  ratio {r['ratio']:5.2f}x (ceiling {r['ceiling_ratio']:5.2f}x)  ops/batch {r['aten_ops_per_batch']} (B={b})",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--views-224", type=int, default=256, help="views per batch at 224 px")
    p.add_argument("--views-32", type=int, default=4096, help="views per batch at 32 px")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--per-view-cap", type=int, default=256, help="views timed with the (slow) per-view baseline")
    p.add_argument("--device", action="append", help="cpu / cuda (default: cpu, and cuda when present)")
    p.add_argument("--preset", action="append", choices=list(list_policies()), help="only these presets (default: all)")
    p.add_argument("--size", action="append", choices=["224", "32"], help="only these sizes (default: both)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: a pipeline check for the test suite")
    args = p.parse_args(argv)
    if args.smoke:
        args.views_224, args.views_32, args.repeat, args.per_view_cap = 16, 64, 1, 16
    devices = [torch.device(d) for d in (args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]))]
    rows = []
    for dev in devices:
        for kind, views in (("224", args.views_224), ("32", args.views_32)):
            if not args.size or kind in args.size:
                rows += run(dev, kind, views, args.repeat, args.per_view_cap, args.preset)
    result = {
        "bench": "replay",
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "torch": torch.__version__,
        "smoke": bool(args.smoke),
        "rows": rows,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
