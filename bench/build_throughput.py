#!/usr/bin/env python
"""Build throughput: is the build limited by the teachers? Three measurements in one run.

(a) teacher-only: the ensemble's forward on views already on the device (views/s);
(b) our build: ``dr.builder.reinforce`` end to end (decode once, replay all views with the
    batched kernels on the device, teachers, top-k, store writes), one actor on this device;
(c) a competent CPU design as the baseline: a torch DataLoader with ``cpu_count() - 1``
    workers; each item decodes one image *once* and emits its V views, augmented with
    torchvision's v2 transforms (RandomResizedCrop, flip, RandAugment, RandomErasing); on the
    device, MixUp or CutMix with the policy's probabilities (0.25 each, partner from the batch);
    the same teachers.

Targets on a GPU: (b)/(a) >= 0.90 and (b)/(c) >= 4. Images: CIFAR-10 sample JPEGs upscaled to
500x375 (realistic decode cost). Defaults are the GPU setting (resnet50, V=50, 2,000 images);
on a CPU use e.g. ``--model resnet18 --images 64 --views 8 --size 128`` to see it work.

    python bench/build_throughput.py [--model resnet50] [--teacher2 vit_base_patch16_224]
        [--policy rrc+mix+ra/re] [--views 50] [--images 2000] [--batch 256] [--compile]

Prints a table, then one JSON line. Teachers are randomly initialised timm models (speed does
not depend on the weights); no network access.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from dr.builder import BuildConfig, reinforce
from dr.teachers import Ensemble

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "assets" / "cifar10-sample"


def make_images(dest: Path, count: int) -> Path:
    files = sorted(SAMPLE.glob("*/*.jpg"))
    for i in range(count):
        f = files[i % len(files)]
        (dest / f.parent.name).mkdir(parents=True, exist_ok=True)
        Image.open(f).convert("RGB").resize((500, 375), Image.Resampling.BICUBIC).save(dest / f.parent.name / f"{i:06d}.jpg", quality=90)
    return dest


class PerViewCPU(Dataset):
    """The baseline: CPU workers decode each image once and augment its V views."""

    def __init__(self, root: Path, views: int, size: int, ra_re: bool) -> None:
        self.files = sorted(root.glob("*/*.jpg"))
        self.views = views
        ops: list = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        if ra_re:
            ops += [v2.RandAugment(num_ops=2, magnitude=9), v2.RandomErasing(p=0.25)]
        self.tf = v2.Compose(ops)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.files[i]) as img:
            x = v2.functional.pil_to_tensor(img.convert("RGB"))
        return torch.stack([self.tf(x) for _ in range(self.views)])


def teacher_only(ens: Ensemble, device: torch.device, size: int, batch: int, seconds: float) -> float:
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    with torch.inference_mode():
        for _ in range(3):
            ens(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            ens(x)
            n += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def cpu_baseline(
    ens: Ensemble, device: torch.device, root: Path, views: int, size: int, batch: int, mix: bool, ra_re: bool, limit: int
) -> float:
    ds = PerViewCPU(root, views, size, ra_re)
    workers = max((os.cpu_count() or 2) - 1, 1)
    per_batch = max(1, batch // views)  # images per loader batch: ~`batch` views
    loader = DataLoader(
        ds, batch_size=per_batch, num_workers=workers, shuffle=False, pin_memory=device.type == "cuda", persistent_workers=False
    )
    classes = ens_classes(ens)
    mixers = [v2.MixUp(alpha=1.0, num_classes=classes), v2.CutMix(alpha=1.0, num_classes=classes)]
    gen = torch.Generator().manual_seed(0)
    n, t0 = 0, None
    with torch.inference_mode():
        for step, x in enumerate(loader):
            if step == 1:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0, n = time.perf_counter(), 0
            x = x.flatten(0, 1).to(device, non_blocking=True)
            if mix:  # like the policy: MixUp with p 0.25, CutMix with p 0.25, else unmixed
                u = float(torch.rand((), generator=gen))
                if u < 0.5:
                    x, _ = mixers[int(u >= 0.25)](x.float(), torch.zeros(len(x), dtype=torch.long, device=device))
                    x = x.round().clamp(0, 255).to(torch.uint8)
            ens(x)
            n += len(x)
            if n >= limit:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0) if t0 else float("nan")


def ens_classes(ens: Ensemble) -> int:
    return int(ens.members[0].model.num_classes) if hasattr(ens.members[0].model, "num_classes") else 1000


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--teacher2", default=None, help="a second timm model: measures an ensemble of two")
    p.add_argument("--policy", default="rrc+mix+ra/re")
    p.add_argument("--views", type=int, default=50)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of the teacher-only measurement")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    specs = [f"timm:{args.model}?input_size={args.size}"] + ([f"timm:{args.teacher2}?input_size={args.size}"] if args.teacher2 else [])
    ens = Ensemble.from_specs(specs, precision="auto", allow_random=True).to(device)  # random init: speed only
    if device.type == "cuda":
        ens.optimize(channels_last=True, compile=args.compile)
    a = teacher_only(ens, device, args.size, args.batch, args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_images(Path(tmp) / "images", args.images)
        group = max(1, args.batch // args.views)
        chunk = group * max(1, 128 // group)
        cfg = BuildConfig(
            source=str(root),
            teachers=specs,
            policy=args.policy,
            output_size=args.size,
            views=args.views,
            topk=10,
            chunk_size=chunk,
            forward_group=group,
            workers=1,
            compile=args.compile,
            allow_random_teachers=True,
            out=f"{tmp}/store.zarr",
        )
        r = reinforce(cfg, progress=False)
        b = r.working_views_per_second
        c = cpu_baseline(
            ens,
            device,
            root,
            args.views,
            args.size,
            args.batch,
            "mix" in args.policy,
            "ra/re" in args.policy,
            limit=min(r.views_computed, 20 * args.batch),
        )
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    )
    teachers = " + ".join(s.split("?")[0] for s in specs)
    print(
        f"device {name}; torch {torch.__version__}; teachers {teachers}; policy {args.policy}, V={args.views}, {args.images} images 500x375 -> {args.size}px"
    )
    print(f"{'measurement':<48}{'views/s':>12}")
    print(f"{'(a) teacher-only forward on device tensors':<48}{a:>12.0f}")
    print(f"{'(b) dr build, end to end (workers up)':<48}{b:>12.0f}")
    print(f"{'(c) CPU per-view augmentation DataLoader':<48}{c:>12.0f}")
    print(f"(b)/(a) = {b / a:.2f} (target >= 0.90 on a GPU);  (b)/(c) = {b / c:.2f} (target >= 4 on a GPU)")
    result = {
        "bench": "build_throughput",
        "device": name,
        "torch": torch.__version__,
        "teachers": teachers,
        "policy": args.policy,
        "views": args.views,
        "images": args.images,
        "size": args.size,
        "teacher_only": round(a, 1),
        "build": round(b, 1),
        "cpu_baseline": round(c, 1),
        "build_over_teacher": round(b / a, 3),
        "build_over_cpu_baseline": round(b / c, 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
