"""CIFAR-10 JPEG data for the examples: the tarballs in ../shared/data/cifar10 or folders.

``load_split(data, "train")`` returns ``(images uint8 [N,32,32,3], labels int64 [N], classes)``
decoded with :func:`dr.sources.decode_image`, the decoder the build and the loader use.
Accepts either ``DATA/train.tar.gz`` (members ``train/<class>/NNNN.jpg``) or an extracted
``DATA/train/<class>/...`` folder. Images are ordered like ``torchvision.datasets.ImageFolder``.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dr.sources import ImageFolderSource, decode_image

if TYPE_CHECKING:
    import torch

__all__ = ["load_split", "extract_split", "sgd_nesterov"]


def _members(tar_path: Path, split: str) -> list[tuple[str, str, bytes]]:
    out = []
    with tarfile.open(tar_path, "r:gz") as tf:
        for m in tf:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) != 3 or parts[0] != split:
                continue
            f = tf.extractfile(m)
            if f is not None:
                out.append((parts[1], parts[2], f.read()))
    return out


def load_split(data: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode a whole split into memory (50,000 CIFAR images take ~150 MB and ~5 s)."""
    data = Path(data)
    folder, tarball = data / split, data / f"{split}.tar.gz"
    if folder.is_dir():
        src = ImageFolderSource(folder)
        images = np.stack([src.read(i)[0] for i in range(len(src))])
        return images, src.labels().copy(), list(src.classes)
    if not tarball.exists():
        raise FileNotFoundError(f"neither {folder} nor {tarball} exists: pass --data pointing at the CIFAR-10 JPEG folder")
    members = _members(tarball, split)
    classes = sorted({c for c, _, _ in members})
    index = {c: i for i, c in enumerate(classes)}
    members.sort(key=lambda m: (m[0], m[1]))
    images = np.stack([decode_image(b, f"{tarball}:{split}/{c}/{n}") for c, n, b in members])
    labels = np.asarray([index[c] for c, _, _ in members], dtype=np.int64)
    return images, labels, classes


def extract_split(data: str | Path, split: str, dest: str | Path, per_class: int | None = None) -> Path:
    """Write ``dest/<class>/<file>`` from the split (optionally the first ``per_class`` per class)."""
    data, dest = Path(data), Path(dest)
    folder = data / split
    if folder.is_dir():
        src_root = folder
        members = [(p.parent.name, p.name, p.read_bytes()) for p in sorted(src_root.glob("*/*"))]
    else:
        members = _members(data / f"{split}.tar.gz", split)
    members.sort(key=lambda m: (m[0], m[1]))
    counts: dict[str, int] = {}
    for cls, name, payload in members:
        if per_class is not None and counts.get(cls, 0) >= per_class:
            continue
        counts[cls] = counts.get(cls, 0) + 1
        (dest / cls).mkdir(parents=True, exist_ok=True)
        (dest / cls / name).write_bytes(payload)
    return dest


def sgd_nesterov(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.SGD:
    """The examples' optimiser: SGD + Nesterov momentum 0.9, weight decay on weights only
    (not on biases and normalisation parameters)."""
    import torch

    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
