"""The replay engine's kernels: batched tensor functions with per-view parameters.

Every kernel here takes a batch of views (or an :class:`ImageBank` plus a per-view image index)
and per-view parameters, and issues a number of tensor operations that does not grow with the
batch size B: no per-view Python loop (the one exception is deliberate: on the CPU, ``auto``
resizes with torch's native kernel one view at a time, see below). Parameters are planned on
the host (numpy) and moved to the device once per call.

**One arithmetic.** Crop + anti-aliased bilinear resize is torch's own uint8 algorithm (the one
``F.interpolate(uint8, mode="bilinear", antialias=True)`` runs on the CPU, after Pillow-SIMD):
float64 filter weights computed on the host, rounded to int16 with a per-view precision, integer
multiply-accumulate, horizontal pass then vertical pass with a uint8 intermediate. Integer
arithmetic is exact, so the batched kernel gives the same bytes on every device; on the CPU,
``method="auto"`` calls torch's native kernel per view instead (same bytes, ~10x faster there:
a CPU "launch" costs nothing and the native kernel is hand-vectorised). Both are tested equal.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from dr.errors import PolicyError

__all__ = [
    "ImageBank",
    "crop_resize",
    "aa_weights",
    "hflip",
    "erase",
    "Groups",
    "RESIZE_METHOD",
    "replay_method",
    "fixed_sequence",
]

#: ``auto`` (native per-view kernel on CPU, batched elsewhere), ``batched`` or ``native``;
#: the ``DR_RESIZE`` environment variable overrides the default.
RESIZE_METHOD: str = os.environ.get("DR_RESIZE", "auto")
_METHOD: ContextVar[str | None] = ContextVar("dr_replay_method", default=None)


@contextlib.contextmanager
def replay_method(method: str | None) -> Iterator[None]:
    """Use ``method`` (``auto``/``batched``/``native``) for the kernels called inside."""
    token = _METHOD.set(method)
    try:
        yield
    finally:
        _METHOD.reset(token)


def current_method() -> str:
    return _METHOD.get() or RESIZE_METHOD


def fixed_sequence(device: torch.device) -> bool:
    """Whether grouped kernels run every group, empty ones on a scratch view, so that the
    operations issued never depend on the batch: always off the CPU (and with ``batched``);
    on the CPU ``auto`` skips empty groups instead (a CPU "launch" costs nothing, the work does)."""
    method = current_method()
    return method == "batched" or (method == "auto" and device.type != "cpu")


class ImageBank:
    """Source images on one device, in the layout the replay kernels read.

    A zero-padded uint8 ``[N,3,Hp,Wp]`` tensor plus each image's ``(height, width)`` (host
    numpy ``[N,2]``). Build it once (per work unit, or once for a whole dataset on the device)
    and replay any number of batches from it.

    Args:
        images: a ``[N,3,H,W]`` uint8 tensor, or a sequence of ``[3,H,W]`` uint8 tensors of any
            sizes (on one device).
        device: move the bank there (default: the images' device).
    """

    def __init__(self, images: torch.Tensor | Sequence[torch.Tensor], device: torch.device | str | None = None) -> None:
        self._images: list[torch.Tensor] | None = None
        self._data: torch.Tensor | None = None
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise PolicyError(f"images must be [N,3,H,W], got {tuple(images.shape)}")
            self._data = images
            self.sizes = np.tile(np.asarray(images.shape[2:], dtype=np.int64), (images.shape[0], 1))
            dtype, here = images.dtype, images.device
        else:
            self._images = list(images)
            if not self._images:
                raise PolicyError("an ImageBank needs at least one image")
            self.sizes = np.asarray([t.shape[1:] for t in self._images], dtype=np.int64)
            dtype, here = self._images[0].dtype, self._images[0].device
        if dtype != torch.uint8:
            raise PolicyError(f"images must be uint8, got {dtype}")
        self._device = torch.device(device) if device is not None else here
        if self._device != here:
            self._data = self._assemble()
            if here.type == "cpu" and self._device.type == "cuda":
                self._data = self._data.pin_memory()  # one asynchronous host-to-device copy per bank
            self._data = self._data.to(self._device, non_blocking=True)
            self._images = None

    def _assemble(self) -> torch.Tensor:
        if self._data is not None:
            return self._data.contiguous()
        imgs = self._images or []
        hp, wp = int(self.sizes[:, 0].max()), int(self.sizes[:, 1].max())
        if (self.sizes == (hp, wp)).all():
            return torch.stack(imgs)
        data = imgs[0].new_zeros((len(imgs), 3, hp, wp))
        for i, t in enumerate(imgs):  # host-side assembly, once per bank
            data[i, :, : t.shape[1], : t.shape[2]] = t
        return data

    @property
    def data(self) -> torch.Tensor:
        """The zero-padded contiguous ``[N,3,Hp,Wp]`` tensor (assembled on first use: the
        per-view native path on the CPU never needs it)."""
        if self._data is None or not self._data.is_contiguous():
            self._data = self._assemble()
            self._images = None
        return self._data

    @classmethod
    def of(cls, images: ImageBank | torch.Tensor | Sequence[torch.Tensor]) -> ImageBank:
        return images if isinstance(images, ImageBank) else cls(images)

    @property
    def device(self) -> torch.device:
        return self._device

    def __len__(self) -> int:
        return len(self.sizes)

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` without padding, ``[3,H,W]``."""
        if self._images is not None:
            return self._images[i]
        h, w = self.sizes[i]
        return self._data[i, :, :h, :w] if self._data is not None else self.data[i, :, :h, :w]


# -- crop + resize ----------------------------------------------------------------------------


def aa_weights(in_len: np.ndarray, out_len: int, taps: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's uint8 anti-aliased bilinear weights for resizing lengths ``in_len`` to ``out_len``.

    Returns ``(first [B,S] int64, weights [B,S,K] int64, precision [B] int64)``: output pixel
    ``i`` of view ``b`` is ``(2^(p-1) + sum_k w[b,i,k] * x[first[b,i] + k]) >> p``, clamped to
    [0, 255]. A length already equal to ``out_len`` gets an exact identity (one tap, 2^14).
    """
    in_len = np.asarray(in_len, dtype=np.int64)
    scale = in_len.astype(np.float64) / out_len
    support = np.where(scale >= 1.0, scale, 1.0)
    inv = np.where(scale >= 1.0, 1.0 / scale, 1.0)
    center = scale[:, None] * (np.arange(out_len, dtype=np.float64) + 0.5)
    first = np.maximum(np.trunc(center - support[:, None] + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(center + support[:, None] + 0.5).astype(np.int64), in_len[:, None]) - first
    k_needed = int(count.max()) if count.size else 1
    taps = max(taps or 0, k_needed, 1)
    j = np.arange(taps)
    x = np.abs(((j + first[..., None]).astype(np.float64) - center[..., None] + 0.5) * inv[:, None, None])
    w = np.where((x < 1.0) & (j < count[..., None]), 1.0 - x, 0.0)
    total = w[..., 0].copy()
    for k in range(1, taps):  # torch sums the taps in order: so do we (numpy's pairwise sum would not)
        total += w[..., k]
    w = w / np.where(total == 0, 1.0, total)[..., None]
    wmax = w.reshape(len(in_len), -1).max(axis=1) if w.size else np.zeros(len(in_len))
    prec = np.full(len(in_len), 22, dtype=np.int64)
    for p in range(21, -1, -1):  # the largest precision whose doubled max weight still fits int16
        prec = np.where(np.trunc(0.5 + wmax * float(1 << (p + 1))) >= (1 << 15), p, prec)
    wi = np.trunc(0.5 + w * np.exp2(prec)[:, None, None]).astype(np.int64)
    same = in_len == out_len
    if same.any():
        first[same] = np.arange(out_len)
        wi[same] = 0
        wi[same, :, 0] = 1 << 14
        prec[same] = 14
    return first, wi, prec


def _taps_for(length: int, out_len: int) -> int:
    """Taps that cover any resize of at most ``length`` source pixels to ``out_len`` (so the
    launch count depends on the image sizes, never on the batch)."""
    support = max(length / out_len, 1.0)
    return int(math.ceil(support)) * 2 + 1


def _pass(src: torch.Tensor, dim: int, index: np.ndarray, weights: np.ndarray, prec: np.ndarray, taps: int, out_len: int) -> torch.Tensor:
    """One separable integer pass along ``dim`` (2 rows, 3 columns) of uint8 ``src [B,3,R,C]``."""
    dev = src.device
    b = src.shape[0]
    shape = [b, 1, 1, 1]
    shape[dim] = out_len
    limit = src.shape[dim] - 1
    idx = torch.from_numpy(np.clip(index[..., None] + np.arange(taps), 0, limit).transpose(2, 0, 1).copy()).to(dev)
    w = torch.from_numpy(weights.transpose(2, 0, 1).astype(np.int32)).to(dev)
    out_shape = list(src.shape)
    out_shape[dim] = out_len
    acc = torch.from_numpy((1 << (prec - 1)).astype(np.int32)).to(dev).view(b, 1, 1, 1).expand(out_shape).clone()
    for k in range(taps):
        g = torch.gather(src, dim, idx[k].view(shape).expand(out_shape))
        acc += g.to(torch.int32) * w[k].view(shape)
    shift = torch.from_numpy(prec.astype(np.int32)).to(dev).view(b, 1, 1, 1)
    return torch.bitwise_right_shift(acc, shift).clamp_(0, 255).to(torch.uint8)


def _crop_resize_batched(bank: ImageBank, boxes: np.ndarray, which: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    sh, sw = size
    top, left, h, w = (boxes[:, i].astype(np.int64) for i in range(4))
    b = len(top)
    n, _, hp, wp = bank.data.shape
    img_h, img_w = bank.sizes[which, 0], bank.sizes[which, 1]
    rows_needed = int(h.max()) if b else 1
    # rows of each view's box (clamped; rows outside the image get zero vertical weight below)
    r = top[:, None] + np.arange(rows_needed)
    row_ids = (which[:, None, None] * 3 + np.arange(3)[None, :, None]) * hp + np.clip(r, 0, hp - 1)[:, None, :]
    rows = bank.data.view(n * 3 * hp, wp).index_select(0, torch.from_numpy(row_ids.reshape(-1)).to(bank.device))
    rows = rows.view(b, 3, rows_needed, wp)
    # horizontal: box columns -> sw output columns
    tx = _taps_for(max(wp, int(w.max()) if b else 1), sw)
    fx, wx, px = aa_weights(w, sw, tx)
    col = left[:, None, None] + fx[..., None] + np.arange(tx)
    wx = np.where((col >= 0) & (col < img_w[:, None, None]), wx, 0)  # outside the image: a zero pixel
    horiz = _pass(rows, 3, left[:, None] + fx, wx, px, tx, sw)
    # vertical: box rows -> sh output rows
    ty = _taps_for(max(hp, rows_needed), sh)
    fy, wy, py = aa_weights(h, sh, ty)
    src_row = top[:, None, None] + fy[..., None] + np.arange(ty)
    wy = np.where((src_row >= 0) & (src_row < img_h[:, None, None]), wy, 0)
    return _pass(horiz, 2, fy, wy, py, ty, sh)


def crop_native(img: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
    """One image's crop box ``[top, left, h, w]`` in source pixels, zero-padded where it leaves
    the image (the per-image crop of the native path; bench/replay.py times it)."""
    _, height, width = img.shape
    if top >= 0 and left >= 0 and top + h <= height and left + w <= width:
        return img[:, top : top + h, left : left + w]
    out = img.new_zeros((img.shape[0], h, w))
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, height), min(left + w, width)
    if y1 > y0 and x1 > x0:
        out[:, y0 - top : y1 - top, x0 - left : x1 - left] = img[:, y0:y1, x0:x1]
    return out


def _crop_resize_native(bank: ImageBank, boxes: np.ndarray, which: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """torch's native uint8 kernel, one view at a time (CPU: same bytes as the batched kernel)."""
    out = torch.empty((len(boxes), 3, size[0], size[1]), dtype=torch.uint8, device=bank.device)
    for j, ((top, left, h, w), i) in enumerate(zip(boxes.tolist(), which.tolist())):
        crop = crop_native(bank.image(i), top, left, h, w)
        if (h, w) == tuple(size):
            out[j] = crop
        else:
            out[j] = F.interpolate(crop[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return out


def crop_resize(
    images: ImageBank | torch.Tensor | Sequence[torch.Tensor],
    boxes: np.ndarray | torch.Tensor,
    image_index: np.ndarray | torch.Tensor,
    size: tuple[int, int],
    *,
    method: Literal["auto", "batched", "native"] | str | None = None,
) -> torch.Tensor:
    """Cut integer ``boxes`` (top, left, height, width; source pixels, may reach outside the
    image: zeros there) out of the images and resize each to ``size`` with anti-aliased bilinear
    filtering, in torch's uint8 arithmetic. Returns uint8 ``[B,3,size[0],size[1]]``.

    ``method``: ``batched`` (launch count independent of B; any device), ``native`` (torch's
    kernel per view), ``auto`` (native on CPU, batched elsewhere; default :data:`RESIZE_METHOD`).
    All give identical bytes.
    """
    bank = ImageBank.of(images)
    bx = np.asarray(boxes.cpu() if isinstance(boxes, torch.Tensor) else boxes).astype(np.int64).reshape(-1, 4)
    which = np.asarray(image_index.cpu() if isinstance(image_index, torch.Tensor) else image_index).astype(np.int64).reshape(-1)
    if len(bx) != len(which):
        raise PolicyError(f"{len(bx)} boxes but {len(which)} image indices")
    if len(bx) and ((bx[:, 2] <= 0).any() or (bx[:, 3] <= 0).any()):
        raise PolicyError("crop boxes need a positive height and width")
    method = method or current_method()
    if method == "native" or (method == "auto" and bank.device.type == "cpu"):
        return _crop_resize_native(bank, bx, which, size)
    if method not in ("auto", "batched"):
        raise PolicyError(f"unknown resize method {method!r}: use auto, batched or native")
    return _crop_resize_batched(bank, bx, which, size)


# -- simple batched view ops -------------------------------------------------------------------


def _rows(sel: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(sel, dtype=np.int64)).to(device)


def hflip(views: torch.Tensor, flip: np.ndarray) -> torch.Tensor:
    """Mirror, in place, the views whose host ``flip`` entry is non-zero (``[B,C,H,W]``, ``[B]``):
    only those views are read and written (one gather, one flip, one scatter for any B)."""
    sel = np.flatnonzero(np.asarray(flip).reshape(-1))
    if not sel.size and not fixed_sequence(views.device):
        return views  # nothing to flip, and on the CPU no fixed sequence to keep
    rows = _rows(sel, views.device)
    return views.index_copy_(0, rows, views.index_select(0, rows).flip(-1))


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B,1,H,W]`` bool: inside each view's (top, left, h, w) box (int64 ``[B,4]`` on the device)."""
    ys = torch.arange(height, device=boxes.device)
    xs = torch.arange(width, device=boxes.device)
    top, left, h, w = boxes.unbind(1)
    rows = (ys[None] >= top[:, None]) & (ys[None] < (top + h)[:, None])
    cols = (xs[None] >= left[:, None]) & (xs[None] < (left + w)[:, None])
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def erase(views: torch.Tensor, boxes: np.ndarray, value: int) -> torch.Tensor:
    """Fill each view's box (host ``[B,4]``; zero height: not erased) with ``value``, in place;
    only the erased views are read and written."""
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    sel = np.flatnonzero(boxes[:, 2] > 0)
    if not sel.size and not fixed_sequence(views.device):
        return views
    rows = _rows(sel, views.device)
    mask = box_mask(torch.from_numpy(boxes[sel]).to(views.device), views.shape[-2], views.shape[-1])
    sub = torch.where(mask, torch.full((), value, dtype=views.dtype, device=views.device), views.index_select(0, rows))
    return views.index_copy_(0, rows, sub)


class Groups:
    """Views grouped by an integer key, planned on the host: one permutation copied to the
    device once, then per-group index slices (views, no copy and no device sync).

    ``keys`` are ``[B]`` integers in ``[0, num_keys)``. Every key gets a slice; an empty group
    gets the index of the scratch view ``B`` (callers append one scratch view), so the sequence
    of tensor operations is the same whatever the batch holds.
    """

    def __init__(self, keys: np.ndarray, num_keys: int, device: torch.device) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        b = len(keys)
        order = np.argsort(keys, kind="stable")
        counts = np.bincount(keys, minlength=num_keys)
        self.counts = counts
        starts = np.concatenate([[0], np.cumsum(counts)])
        # empty groups point at the scratch row b: lay out [order..., b] and give them slice [b, b+1)
        self.perm = torch.from_numpy(np.concatenate([order, [b]])).to(device)
        self.slices = [(int(s), int(s + c)) if c else (b, b + 1) for s, c in zip(starts[:-1], counts)]

    def empty(self, key: int) -> bool:
        return not self.counts[key]

    def index(self, key: int) -> torch.Tensor:
        s, e = self.slices[key]
        return self.perm[s:e]


def adjust_sharpness(views: torch.Tensor, factor: float) -> torch.Tensor:
    """``torchvision.transforms.v2.functional.adjust_sharpness`` on uint8 ``[N,3,H,W]``, the same
    bytes, without its 3x3 float convolution: the blur ``round(S / 13)`` (``S`` = the 8
    neighbours + 5 x the centre, an exact integer) is computed in integers. torchvision's float
    convolution is within 4e-4 of ``S / 13``, which is never nearer than 1/26 to a rounding
    boundary, so both round to the same value; the blend that follows is torchvision's own
    float arithmetic. On a CPU the convolution was 60 % of a RandAugment batch at 224 px."""
    if views.dtype != torch.uint8:
        raise PolicyError(f"adjust_sharpness takes uint8 views, got {views.dtype}")
    h, w = views.shape[-2:]
    if views.numel() == 0 or h <= 2 or w <= 2:
        return views
    x = views.to(torch.int16)  # S <= 13 * 255 fits
    s = x[..., 1:-1, 1:-1] * 5
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if (dy, dx) != (1, 1):
                s += x[..., dy : h - 2 + dy, dx : w - 2 + dx]
    blurred = torch.div(s * 2 + 13, 26, rounding_mode="floor").to(torch.float32)  # round(S / 13), S >= 0
    out = views.to(torch.float32)
    inner = out[..., 1:-1, 1:-1]
    inner.add_(blurred.sub_(inner), alpha=1.0 - factor)
    return out.clamp_(0, 255).to(torch.uint8)
