"""ImageFolder-layout directories (local or fsspec) and map-style datasets as sources."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dr.errors import BadImageError, SourceError
from dr.sources.base import SourceFingerprint, is_url, labels_hash
from dr.sources.decode import (
    IMG_EXTENSIONS,
    content_digest,
    decode_image,
    max_image_bytes,
    read_image_file,
    to_rgb_array,
    within_read_limit,
)
from dr.sources.spec import absolute_location
from dr.urls import Location

__all__ = ["ImageFolderSource", "TorchDatasetSource"]


def _refuse_empty_classes(location: str, empty: Sequence[str], exts: tuple[str, ...]) -> None:
    """A class folder without images would still be a class (torchvision's ImageFolder refuses it)."""
    if empty:
        raise SourceError(
            f"source folder {location!r} has {len(empty)} class folder(s) without images ({', '.join(map(repr, empty[:5]))}"
            f"{', ...' if len(empty) > 5 else ''}; extensions {', '.join(exts)}): every class folder must hold at least one "
            "image (as for torchvision's ImageFolder) -- add images or remove the folder"
        )


class ImageFolderSource:
    """A directory in the ImageFolder layout: ``root/<class>/<image file>``.

    Args:
        root: the directory whose sub-folders are the classes.
        extensions: accepted file suffixes (case-insensitive).

    Raises:
        SourceError: the path is missing, not a directory, or holds no class with images.
    """

    def __init__(
        self, root: str | os.PathLike[str], *, extensions: Sequence[str] = IMG_EXTENSIONS, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        # absolute: Ray workers and later readers may run in another working directory
        self.location = absolute_location(str(root))
        self.root = Path(self.location)
        self._fs: Any = None
        exts = tuple(e.lower() for e in extensions)
        if is_url(self.location):
            files, labels, class_dirs = self._scan_remote(exts, dict(storage_options or {}))
        else:
            files, labels, class_dirs = self._scan_local(exts)
        if not files:
            raise SourceError(f"source folder {self.location!r} has class folders but no images with extensions {', '.join(exts)}")
        self._classes = tuple(class_dirs)
        self.files = files
        self._labels = np.asarray(labels, dtype=np.int64)

    def _scan_local(self, exts: tuple[str, ...]) -> tuple[list[str], list[int], list[str]]:
        if not self.root.exists():
            raise SourceError(
                f"source folder {self.location!r} does not exist: pass an ImageFolder-layout directory (root/<class>/<image>)"
            )
        if not self.root.is_dir():
            raise SourceError(f"source {self.location!r} is not a directory: pass an ImageFolder-layout directory (root/<class>/<image>)")
        class_dirs = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not class_dirs:
            raise SourceError(f"source folder {self.location!r} has no class sub-folders: expected root/<class>/<image>")
        files: list[str] = []
        labels: list[int] = []
        for label, cls in enumerate(class_dirs):
            for dirpath, dirnames, filenames in os.walk(self.root / cls, followlinks=True):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.lower().endswith(exts) and not name.startswith("."):
                        files.append(os.path.relpath(os.path.join(dirpath, name), self.root))
                        labels.append(label)
        if files:  # else the caller says "no images at all"
            used = set(labels)
            _refuse_empty_classes(self.location, [c for i, c in enumerate(class_dirs) if i not in used], exts)
        return files, labels, class_dirs

    def _scan_remote(self, exts: tuple[str, ...], options: dict[str, Any]) -> tuple[list[str], list[int], list[str]]:
        try:
            fs, root = Location(self.location, options).filesystem()
            found = fs.find(root)
        except (OSError, ValueError, ImportError) as e:
            raise SourceError(
                f"cannot list source {self.location!r}: {type(e).__name__}: {e} (install dr[remote] for s3://, check credentials and endpoint)"
            ) from e
        root = root.rstrip("/")
        everything = sorted(f[len(root) + 1 :] for f in found if f.startswith(root + "/"))
        rel = [r for r in everything if "/" in r and r.lower().endswith(exts) and not any(part.startswith(".") for part in r.split("/"))]
        if not rel:
            raise SourceError(f"source {self.location!r} holds no images in class folders: expected root/<class>/<image>")
        class_dirs = sorted({r.split("/", 1)[0] for r in rel})
        try:  # folders holding no image at all (object stores list files, so look for directories too)
            listed = {e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(root, detail=True) if e.get("type") == "directory"}
        except (OSError, ValueError):
            listed = set()
        dirs = listed | {r.split("/", 1)[0] for r in everything if "/" in r}
        _refuse_empty_classes(self.location, sorted(d for d in dirs if not d.startswith(".") and d not in class_dirs), exts)
        index = {c: i for i, c in enumerate(class_dirs)}
        rel.sort(key=lambda r: (index[r.split("/", 1)[0]], r))
        self._fs, self._fs_root = fs, root
        return rel, [index[r.split("/", 1)[0]] for r in rel], class_dirs

    @property
    def classes(self) -> tuple[str, ...]:
        return self._classes

    def __len__(self) -> int:
        return len(self.files)

    def labels(self) -> np.ndarray:
        return self._labels

    def describe(self, index: int) -> str:
        if self._fs is not None:
            return f"{self.location.rstrip('/')}/{self.files[index]}"
        return str(self.root / self.files[index])

    def read_bytes(self, index: int) -> bytes:
        """The file's bytes, at most the read limit (:func:`dr.sources.decode.max_image_bytes`:
        a larger file is a bad image, and no more than the limit is read)."""
        where = self.describe(index)
        try:
            if self._fs is not None:  # one ranged request, at most the limit + 1 bytes
                return within_read_limit(
                    self._fs.cat_file(f"{self._fs_root}/{self.files[index]}", start=0, end=max_image_bytes() + 1), where
                )
            with open(self.root / self.files[index], "rb") as f:
                return read_image_file(f, where)
        except OSError as e:
            raise BadImageError(where, f"cannot read file: {e}") from e

    def read(self, index: int) -> tuple[np.ndarray, bytes]:
        data = self.read_bytes(index)
        return decode_image(data, self.describe(index)), content_digest(data)

    def fingerprint(self) -> SourceFingerprint:
        return SourceFingerprint("image_folder", len(self), self.classes, labels_hash(self._labels, self.classes))

    def __repr__(self) -> str:
        return f"ImageFolderSource({self.location!r}, images={len(self)}, classes={len(self.classes)})"


class TorchDatasetSource:
    """Wrap a map-style dataset (e.g. ``torchvision.datasets.CIFAR10``) returning ``(image, label)``.

    The image may be a PIL image, an ``HxWxC`` uint8 numpy array, or a ``CxHxW`` uint8 tensor.
    The dataset must not apply random transforms (its pixels are hashed and replayed).

    Args:
        dataset: the dataset object; it travels to Ray workers, so it must pickle for transport.
        classes: class names; defaults to ``dataset.classes``.
        labels: all labels; defaults to ``dataset.targets`` or reading every item once.
    """

    def __init__(self, dataset: Any, *, classes: Sequence[str] | None = None, labels: Sequence[int] | None = None) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise SourceError(f"{type(dataset).__name__} is not a map-style dataset (needs __len__ and __getitem__)")
        self.dataset = dataset
        if labels is None:
            labels = getattr(dataset, "targets", None)
        if labels is None:
            labels = [int(dataset[i][1]) for i in range(len(dataset))]
        self._labels = np.asarray(labels, dtype=np.int64)
        if len(self._labels) != len(dataset):
            raise SourceError(f"{len(self._labels)} labels for a dataset of {len(dataset)} items")
        if classes is None:
            classes = getattr(dataset, "classes", None)
        if classes is None:
            classes = [str(i) for i in range(int(self._labels.max(initial=-1)) + 1)]
        self._classes = tuple(str(c) for c in classes)

    @property
    def classes(self) -> tuple[str, ...]:
        return self._classes

    def __len__(self) -> int:
        return len(self.dataset)

    def labels(self) -> np.ndarray:
        return self._labels

    def describe(self, index: int) -> str:
        return f"{type(self.dataset).__name__}[{index}]"

    def read(self, index: int) -> tuple[np.ndarray, bytes]:
        item = self.dataset[index]
        img = item[0] if isinstance(item, (tuple, list)) else item
        arr = self._to_array(img, index)
        return arr, content_digest(arr.tobytes() + np.asarray(arr.shape, dtype="<i8").tobytes())

    def _to_array(self, img: Any, index: int) -> np.ndarray:
        if isinstance(img, Image.Image):
            return to_rgb_array(img)
        if hasattr(img, "numpy") and hasattr(img, "dim"):  # torch tensor, CxHxW
            if img.dim() == 2:
                img = img[None]
            if img.dim() != 3:
                raise BadImageError(self.describe(index), f"tensor image must be CxHxW, got shape {tuple(img.shape)}")
            img = img.permute(1, 2, 0).numpy()
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            raise BadImageError(self.describe(index), f"image dtype must be uint8, got {arr.dtype}")
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise BadImageError(self.describe(index), f"image must be HxWxC with C in (1, 3, 4), got {arr.shape}")
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        return np.ascontiguousarray(arr[..., :3])

    def fingerprint(self) -> SourceFingerprint:
        return SourceFingerprint(f"dataset:{type(self.dataset).__name__}", len(self), self.classes, labels_hash(self._labels, self.classes))

    def __repr__(self) -> str:
        return f"TorchDatasetSource({type(self.dataset).__name__}, images={len(self)})"
