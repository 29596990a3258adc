"""torchvision's CIFAR layout as a source (``cifar10:DIR`` / ``cifar100:DIR``), never unpickled."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from dr.errors import SourceError
from dr.sources.cifar_pickle import read_cifar_batch
from dr.sources.decode import content_digest
from dr.sources.indexed import IndexedSource
from dr.sources.spec import SourceSpec

log = logging.getLogger(__name__)

__all__ = ["CifarSource"]


_CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}, "batches.meta"),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "meta"),
}


class CifarSource(IndexedSource):
    """CIFAR-10/100 in torchvision's own local layout (``DIR/cifar-10-batches-py/data_batch_1``
    ..., ``DIR/cifar-100-python/train``); ``DIR`` may also be that folder itself. Never
    downloads. Pixels are the stored uint8 values; the digest hashes them with the shape (as
    :class:`dr.sources.TorchDatasetSource` does, so a wrapped ``torchvision.datasets.CIFAR10``
    has the same digests)."""

    def __init__(self, root: str, *, kind: str = "cifar10", split: str = "train", labels: str = "fine") -> None:
        folder_name, splits, meta_name = _CIFAR_LAYOUT[kind]
        self.kind = kind
        root = os.path.abspath(os.path.expanduser(root))
        self.folder = root if os.path.basename(root.rstrip("/")) == folder_name else os.path.join(root, folder_name)
        if split not in splits:
            raise SourceError(f"source '{kind}:{root}': split={split!r}; use train or test")
        if kind == "cifar10" and labels != "fine":
            raise SourceError(f"source '{kind}:{root}': labels= is a cifar100 option (fine or coarse)")
        if labels not in ("fine", "coarse"):
            raise SourceError(f"source '{kind}:{root}': labels={labels!r}; use fine or coarse")
        options = {"split": split, **({"labels": labels} if kind == "cifar100" and labels != "fine" else {})}
        self.location = SourceSpec(kind, root, options).text()
        self.files = [os.path.join(self.folder, f) for f in splits[split]]
        missing = [f for f in self.files + [os.path.join(self.folder, meta_name)] if not os.path.exists(f)]
        if missing:
            raise SourceError(
                f"source {self.location!r}: missing {', '.join(missing[:3])}: expected torchvision's layout "
                f"DIR/{folder_name}/ (it is never downloaded; extract the python version of the archive there)"
            )
        self.label_field = "labels" if kind == "cifar10" else f"{labels}_labels"
        meta = self._load(os.path.join(self.folder, meta_name))
        name_key = "label_names" if kind == "cifar10" else f"{labels}_label_names"
        self._classes = tuple(str(n) for n in meta[name_key])
        self._data: np.ndarray | None = None
        label_list: list[int] = []
        for f in self.files:
            label_list.extend(int(v) for v in self._load(f)[self.label_field])
        self._labels = np.asarray(label_list, dtype=np.int64)

    def _load(self, path: str) -> dict[str, Any]:
        try:
            with open(path, "rb") as f:
                raw = read_cifar_batch(f.read())
            if not isinstance(raw, dict):
                raise SourceError(f"a CIFAR batch is a dict, this holds a {type(raw).__name__}")
        except (OSError, SourceError, ValueError, KeyError, IndexError, TypeError) as e:
            raise SourceError(f"source {self.location!r}: cannot read {path!r}: {type(e).__name__}: {e}") from e
        return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}

    def _pixels(self) -> np.ndarray:
        if self._data is None:
            parts = [np.asarray(self._load(f)["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for f in self.files]
            self._data = np.ascontiguousarray(np.concatenate(parts).transpose(0, 2, 3, 1))
        return self._data

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}  # workers re-read the batches (~150 MB)

    def describe(self, index: int) -> str:
        return f"{self.location}[{index}]"

    def read(self, index: int) -> tuple[np.ndarray, bytes]:
        arr = self._pixels()[index]
        return arr, content_digest(arr.tobytes() + np.asarray(arr.shape, dtype="<i8").tobytes())
