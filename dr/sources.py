"""Input datasets for a build and for training.

A *source* is an indexed, labelled collection of images. Two kinds live here (more --
WebDataset shards, file lists, saved Hugging Face datasets, CIFAR's binary layout -- in
:mod:`dr.source_kinds`, named by spec strings such as ``wds:train-{0..9}.tar?label=cls``):

* :class:`ImageFolderSource` -- a directory in the ImageFolder layout
  (``root/<class>/<image>``, the ImageNet layout); ordering is identical to
  ``torchvision.datasets.ImageFolder`` (sorted classes, sorted files);
* :class:`TorchDatasetSource` -- any map-style dataset returning ``(image, label)`` where
  the image is a PIL image, an ``HxWxC`` uint8 array or a ``CxHxW`` uint8 tensor.

Every pixel that enters the build or the training loader goes through :func:`decode_image`
(PIL / libjpeg on CPU), so build-time and train-time views come from identical pixels.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from dr.errors import BadImageError, SourceError

__all__ = [
    "IMG_EXTENSIONS",
    "Source",
    "ImageFolderSource",
    "TorchDatasetSource",
    "SourceFingerprint",
    "decode_image",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "max_image_pixels",
    "set_max_image_pixels",
    "to_rgb_array",
    "open_source",
    "content_digest",
    "absolute_location",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: dr's decode limit unless set otherwise: PIL's own default limit (~9,459 x 9,459 pixels,
#: ~268 MB as RGB), which keeps a decompression bomb's memory bounded
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
_max_pixels = DEFAULT_MAX_IMAGE_PIXELS


def _pil_ceiling() -> int | None:
    """The most pixels PIL itself opens in this process (it raises above twice its
    ``Image.MAX_IMAGE_PIXELS``; ``None``: PIL's check is off)."""
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def set_max_image_pixels(pixels: int | None) -> None:
    """Set dr's decode limit for this process (``None``: :data:`DEFAULT_MAX_IMAGE_PIXELS`).

    An image whose header declares more pixels is a bad image (:class:`BadImageError`) and is
    never decoded. This is dr's own setting: PIL's process-wide ``Image.MAX_IMAGE_PIXELS`` is
    left alone, so a limit above twice PIL's is refused -- raise PIL's in your program first.
    Builds set it from ``--max-image-pixels`` in every worker.

    Raises:
        ConfigError: ``pixels`` below 1, or above what PIL opens in this process.
    """
    from dr.errors import ConfigError

    global _max_pixels
    pixels = DEFAULT_MAX_IMAGE_PIXELS if pixels is None else int(pixels)
    ceiling = _pil_ceiling()
    if pixels < 1:
        raise ConfigError(f"max image pixels must be at least 1, got {pixels}")
    if ceiling is not None and pixels > ceiling:
        raise ConfigError(
            f"max image pixels {pixels:,} is above the {ceiling:,} pixels PIL opens in this process (twice "
            f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,}); raise PIL.Image.MAX_IMAGE_PIXELS in your program "
            "first if such images are real, or choose a lower limit"
        )
    _max_pixels = pixels


_BOMB_HINT = " (a decompression bomb, or a very large image: raise the limit with --max-image-pixels if it is real)"


def max_image_pixels() -> int:
    """dr's decode limit in this process (see :func:`set_max_image_pixels`)."""
    return _max_pixels


def content_digest(data: bytes) -> bytes:
    """The 16-byte content hash used in fingerprints (BLAKE2b-128)."""
    return hashlib.blake2b(data, digest_size=16).digest()


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert any PIL image (palette, alpha, grayscale, CMYK, 16-bit) to ``HxWx3`` uint8."""
    if img.mode == "RGB":
        return np.array(img, dtype=np.uint8)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(img, dtype=np.uint32)
        narrow = (wide >> 8) if wide.max(initial=0) > 255 else wide
        return np.repeat(narrow.astype(np.uint8)[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black, like dropping alpha after premultiplication; deterministic.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.array(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def decode_image(data: bytes, where: str = "<bytes>", max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to an ``HxWx3`` uint8 RGB array (PIL, CPU).

    This is *the* decoder of the project: builds and training loaders both call it. Pixels
    are taken as stored: EXIF orientation is not applied (as ``torchvision.io.decode_jpeg``
    and ``PIL.Image.open`` by default), so a view's box means the same pixels everywhere.

    Args:
        data: the encoded bytes.
        where: what to name in errors (the file, the shard member).
        max_pixels: the decode limit (default: :func:`max_image_pixels`); checked against the
            size in the image's header, before any pixel is decoded.

    Raises:
        BadImageError: the bytes are not a decodable image, the image is larger than the limit
            (a decompression bomb), or decoding ran out of memory; names ``where`` and the reason.
    """
    buffer = io.BytesIO(data)
    limit = _max_pixels if max_pixels is None else int(max_pixels)
    try:
        with Image.open(buffer) as img:
            width, height = img.size
            if width * height > limit:
                raise BadImageError(
                    where,
                    f"{width}x{height} = {width * height:,} pixels is above the decode limit of {limit:,}{_BOMB_HINT}",
                )
            img.load()
            arr = to_rgb_array(img)
    except Image.DecompressionBombError as e:  # PIL's own ceiling, checked when it opens the file
        raise BadImageError(where, f"{e} It is above the decode limit of {limit:,} pixels{_BOMB_HINT}") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        # PIL names the in-memory buffer (<_io.BytesIO object at 0x...>): name the file instead
        reason = str(e).replace(repr(buffer), repr(where.rsplit("/", 1)[-1]))
        raise BadImageError(where, f"{type(e).__name__}: {reason}") from e
    except MemoryError as e:
        raise BadImageError(where, f"out of memory while decoding ({len(data):,} bytes): lower --max-image-pixels") from e
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise BadImageError(where, f"unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)


@dataclass(frozen=True)
class SourceFingerprint:
    """What identifies a dataset: count, class names, a hash of the labels.

    Per-image content hashes are computed by the build workers (they read every file anyway)
    and stored in the store's ``source/digests`` array.
    """

    kind: str
    count: int
    classes: tuple[str, ...]
    labels_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "count": self.count,
            "classes": list(self.classes),
            "labels_sha256": self.labels_sha256,
        }


class Source(Protocol):
    """What the build and the Dataset need from an input dataset."""

    @property
    def classes(self) -> Sequence[str]: ...

    def __len__(self) -> int: ...

    def labels(self) -> np.ndarray:
        """All labels as an ``int64`` array, without decoding images."""
        ...

    def read(self, index: int) -> tuple[np.ndarray, bytes]:
        """Decoded ``HxWx3`` uint8 image and its content digest (see :func:`content_digest`)."""
        ...

    def describe(self, index: int) -> str:
        """Human-readable location of one image (for error messages)."""
        ...

    def fingerprint(self) -> SourceFingerprint: ...


def _labels_hash(labels: np.ndarray, classes: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update("\x1f".join(classes).encode())
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


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
        if _is_url(self.location):
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
        import fsspec

        try:
            fs, root = fsspec.core.url_to_fs(self.location, **options)
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
        try:
            if self._fs is not None:
                return bytes(self._fs.cat_file(f"{self._fs_root}/{self.files[index]}"))
            return (self.root / self.files[index]).read_bytes()
        except OSError as e:
            raise BadImageError(self.describe(index), f"cannot read file: {e}") from e

    def read(self, index: int) -> tuple[np.ndarray, bytes]:
        data = self.read_bytes(index)
        return decode_image(data, self.describe(index)), content_digest(data)

    def fingerprint(self) -> SourceFingerprint:
        return SourceFingerprint("image_folder", len(self), self.classes, _labels_hash(self._labels, self.classes))

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
        return SourceFingerprint(
            f"dataset:{type(self.dataset).__name__}", len(self), self.classes, _labels_hash(self._labels, self.classes)
        )

    def __repr__(self) -> str:
        return f"TorchDatasetSource({type(self.dataset).__name__}, images={len(self)})"


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def absolute_location(location: str) -> str:
    """``location`` as recorded in a store: URLs as given, local paths made absolute (so
    ``dr-build verify`` and the Dataset find the source from any working directory)."""
    if "://" in location:
        return location
    from dr.source_kinds import canonical_spec, looks_like_spec

    if looks_like_spec(location):  # KIND:LOCATION[?opts] (see dr.source_kinds)
        return canonical_spec(location)
    return os.path.abspath(os.path.expanduser(location))


def _refuse_empty_classes(location: str, empty: Sequence[str], exts: tuple[str, ...]) -> None:
    """A class folder without images would still be a class (torchvision's ImageFolder refuses it)."""
    if empty:
        raise SourceError(
            f"source folder {location!r} has {len(empty)} class folder(s) without images ({', '.join(map(repr, empty[:5]))}"
            f"{', ...' if len(empty) > 5 else ''}; extensions {', '.join(exts)}): every class folder must hold at least one "
            "image (as for torchvision's ImageFolder) -- add images or remove the folder"
        )


def open_source(source: Any, storage_options: Mapping[str, Any] | None = None) -> Source:
    """Turn a path, an fsspec URL or a dataset object into a :class:`Source`.

    Strings are source specs ``KIND:LOCATION[?opts]`` (``wds:``, ``list:``, ``hf-disk:``,
    ``cifar10:``, ``cifar100:``; see :mod:`dr.source_kinds`) or name an ImageFolder-layout
    directory (local, or ``s3://...`` etc. with ``storage_options``); a :class:`Source` passes
    through; any other map-style dataset is wrapped in :class:`TorchDatasetSource`.

    Raises:
        SourceError: an unknown kind (the message lists the kinds), a bad option or location.
    """
    if isinstance(source, (ImageFolderSource, TorchDatasetSource)) or all(
        hasattr(source, a) for a in ("read", "describe", "fingerprint", "labels")
    ):
        return source  # type: ignore[no-any-return]
    if isinstance(source, str):
        from dr.source_kinds import looks_like_spec, open_spec

        if looks_like_spec(source):
            return open_spec(source, storage_options)  # type: ignore[no-any-return]
    if isinstance(source, (str, os.PathLike)):
        return ImageFolderSource(source, storage_options=storage_options)
    return TorchDatasetSource(source)
