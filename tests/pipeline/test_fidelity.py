"""Stored soft labels are what the teacher says about the replayed view: probabilities, not argmax.

The build replays views in batches (``ImageBank`` + batched kernels) and labels them with the
trained demo ResNet-20 in fp32; the training Dataset replays each view alone. The teacher run
on the Dataset's view must reproduce the stored top-k probabilities, for a preset that really
resizes (``rrc``: crops of ~100x130 images down to 32 px), and must not for a wrong view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dr import ReinforcedDataset
from dr.builder import BuildConfig, reinforce
from dr.sources import ImageFolderSource
from dr.storage import StoreReader
from dr.teachers import Ensemble

REPO = Path(__file__).resolve().parents[2]
TEACHER = f"python:dr.teachers.zoo:cifar_resnet@{REPO}/examples/assets/teacher/cifar_resnet20.safetensors?depth=20&width=16"


@pytest.fixture(scope="module")
def big_images(cifar64: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 64 CIFAR JPEGs upscaled to varied ~100x130 sizes, saved losslessly (PNG)."""
    src = ImageFolderSource(cifar64)
    root = tmp_path_factory.mktemp("big")
    for i in range(len(src)):
        img, _ = src.read(i)
        h, w = 96 + 4 * (i % 5), 128 - 6 * (i % 4)
        cls = src.classes[int(src.labels()[i])]
        (root / cls).mkdir(exist_ok=True)
        Image.fromarray(img).resize((w, h), Image.BICUBIC).save(root / cls / f"{i:03d}.png")
    return root


def test_replayed_views_reproduce_the_stored_probabilities(big_images: Path, ray_session, tmp_path: Path) -> None:
    out = tmp_path / "rrc.zarr"
    cfg = BuildConfig(
        source=str(big_images),
        teachers=[TEACHER],
        policy="rrc",
        output_size=32,
        views=3,
        topk=10,
        out=str(out),
        chunk_size=32,
        precision="fp32",
    )
    assert reinforce(cfg, progress=False).complete
    r = StoreReader(str(out))
    crop = r.load("params/crop_box").astype(np.int64)
    assert (crop[..., 2] != 32).mean() > 0.95  # the views really resize
    ids, probs = r.load("targets/ids").astype(np.int64), r.load("targets/probs").astype(np.float32)
    ds = ReinforcedDataset(str(out), str(big_images), transform=lambda v: v)
    ens = Ensemble.from_specs([TEACHER], precision="fp32")
    worst, wrong_views = 0.0, []
    with torch.inference_mode():
        for v in range(3):
            views, rows = [], []
            for i in range(len(ds)):  # the epoch whose view of image i is v
                e = next(e for e in range(3) if ds.view_index(i, e) == v)
                ds.set_epoch(e)
                views.append(ds[i][0])
                rows.append(i)
            p = ens(torch.stack(views))
            got = torch.gather(p, 1, torch.from_numpy(ids[rows, v])).numpy()
            worst = max(worst, float(np.abs(got - probs[rows, v]).max()))
            if v == 0:  # a deliberately wrong view: another image's view 0 -> probabilities do not match
                shifted = torch.gather(p.roll(1, 0), 1, torch.from_numpy(ids[rows, v])).numpy()
                wrong_views.append(float(np.abs(shifted - probs[rows, v]).max(axis=1).mean()))
    assert worst <= 1e-3, worst  # float16 storage of probabilities in [0, 1]: <= 2.5e-4 rounding
    assert wrong_views[0] > 0.05
