"""The project's one image decoder, its decode (pixel) and read (byte) limits, and content digests (PIL on the CPU)."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from dr.errors import BadImageError

__all__ = [
    "IMG_EXTENSIONS",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "check_image_bytes",
    "content_digest",
    "decode_image",
    "max_image_bytes",
    "max_image_pixels",
    "read_image_file",
    "set_max_image_bytes",
    "set_max_image_pixels",
    "to_rgb_array",
    "within_read_limit",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File extensions an ImageFolder source reads as images (compared in lower case)."""

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
"""dr's decode limit unless set otherwise (``--max-image-pixels``, :func:`set_max_image_pixels`):
PIL's own default (~9,459 x 9,459 pixels, ~268 MB as RGB), which keeps a decompression bomb's
memory bounded. Larger images are bad images, refused before they are decoded."""
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


DEFAULT_MAX_IMAGE_BYTES = 256 << 20
"""dr's read limit unless set otherwise (:func:`set_max_image_bytes`): 256 MiB, the most bytes
read from one source image file. A larger file (or ``/dev/zero``, or a pipe that never ends) is a
bad image: at most the limit plus one byte is ever read."""
_max_bytes = DEFAULT_MAX_IMAGE_BYTES


def set_max_image_bytes(nbytes: int | None) -> None:
    """Set dr's read limit for this process (``None``: :data:`DEFAULT_MAX_IMAGE_BYTES`).

    Every read of a source image file (an ImageFolder file, a ``list:`` entry, a WebDataset
    member, an ``hf-disk:`` image path) stops after ``nbytes + 1`` bytes; a file over the limit
    is a bad image (:class:`BadImageError`), like an image over the pixel limit.

    Raises:
        ConfigError: ``nbytes`` below 1.
    """
    from dr.errors import ConfigError

    global _max_bytes
    nbytes = DEFAULT_MAX_IMAGE_BYTES if nbytes is None else int(nbytes)
    if nbytes < 1:
        raise ConfigError(f"max image bytes must be at least 1, got {nbytes}")
    _max_bytes = nbytes


def max_image_bytes() -> int:
    """dr's read limit in this process (see :func:`set_max_image_bytes`)."""
    return _max_bytes


def check_image_bytes(size: int, where: str) -> None:
    """Refuse an image whose size (known before reading, e.g. from a tar header) is over the
    read limit.

    Raises:
        BadImageError: ``size`` above :func:`max_image_bytes`; names ``where`` and the limit.
    """
    if size > _max_bytes:
        raise BadImageError(where, f"{size:,} bytes is above the read limit of {_max_bytes:,} bytes per image{_BYTES_HINT}")


def read_image_file(f: Any, where: str) -> bytes:
    """Read an open binary file object to its end, at most the read limit: a file over the
    limit is a bad image, and no more than the limit plus one byte is read (``/dev/zero`` costs
    256 MiB at most, never all memory).

    Raises:
        BadImageError: more bytes than :func:`max_image_bytes`, or no memory for the read;
            names ``where`` and the limit.
    """
    limit = _max_bytes
    try:
        data = f.read(limit + 1)
    except MemoryError as e:
        raise BadImageError(where, f"out of memory while reading it (read limit {limit:,} bytes){_BYTES_HINT}") from e
    return within_read_limit(data, where)


def within_read_limit(data: bytes, where: str) -> bytes:
    """``data`` -- read with a bounded read of at most the read limit plus one byte (e.g. an
    fsspec ``cat_file(path, start=0, end=max_image_bytes() + 1)``) -- unless it is over the limit.

    Raises:
        BadImageError: more bytes than :func:`max_image_bytes`; names ``where`` and the limit.
    """
    limit = _max_bytes
    if len(data) > limit:
        raise BadImageError(where, f"more than {limit:,} bytes, above the read limit of {limit:,} bytes per image{_BYTES_HINT}")
    return bytes(data)


_BYTES_HINT = " (a device such as /dev/zero, a pipe or a huge file; raise the limit with dr.sources.decode.set_max_image_bytes if such images are real)"
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
        BadImageError: the bytes are not a decodable image, more bytes than the read limit
            (:func:`max_image_bytes`), the image is larger than the pixel limit (a decompression
            bomb), or decoding ran out of memory; names ``where`` and the reason.
    """
    check_image_bytes(len(data), where)
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
            arr = np.ascontiguousarray(to_rgb_array(img))
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
    return arr
