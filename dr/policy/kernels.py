"""Batched, device-agnostic replay kernels in torch.

Each kernel takes a batch of views and *per-view* parameters, and computes every view
independently of the others, so replaying a batch of B views equals replaying each view alone
(tested bit-exactly on one device). The same functions run on the GPU at build time and on the
CPU, with a batch of one, in the training loader. Views are uint8 ``[B,3,S,S]`` tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["crop_resize", "hflip", "to_uint8"]


def _crop(img: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
    """The ``h x w`` window at (top, left) of a ``[3,H,W]`` image; zeros outside the image."""
    _, height, width = img.shape
    if top >= 0 and left >= 0 and top + h <= height and left + w <= width:
        return img[:, top : top + h, left : left + w]
    out = img.new_zeros((img.shape[0], h, w))
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, height), min(left + w, width)
    if y1 > y0 and x1 > x0:
        out[:, y0 - top : y1 - top, x0 - left : x1 - left] = img[:, y0:y1, x0:x1]
    return out


def _resize(crop: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Anti-aliased bilinear resize of one ``[3,h,w]`` uint8 crop to ``size`` (uint8 out).

    CPU: torch's uint8 kernel (fixed-point, vectorised). Other devices: float32, rounded.
    An integer crop already of ``size`` is returned unchanged (an exact copy).
    """
    if tuple(crop.shape[-2:]) == tuple(size):
        return crop
    if crop.device.type == "cpu" and crop.dtype == torch.uint8:
        return F.interpolate(crop[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    out = F.interpolate(crop[None].to(torch.float32), size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return to_uint8(out)


def crop_resize(
    images: torch.Tensor | Sequence[torch.Tensor],
    boxes: torch.Tensor | Sequence[Sequence[int]],
    image_index: torch.Tensor | Sequence[int],
    size: tuple[int, int],
) -> torch.Tensor:
    """Cut integer ``boxes`` out of ``images`` and resize each crop to ``size``.

    Each view is computed on its own (crop, then anti-aliased bilinear resize), so a batch of
    B views equals B single-view calls bit-exactly on one device. Boxes may reach outside
    the image (CIFAR padding): those pixels are zero. A box of exactly ``size`` is a copy.

    Args:
        images: ``[N,3,H,W]`` uint8 tensor, or a list of ``[3,H,W]`` uint8 tensors (any sizes).
        boxes: ``[B,4]`` integers (top, left, height, width) in source pixels.
        image_index: ``[B]`` which image each box is cut from.
        size: output ``(height, width)``.

    Returns:
        ``[B,3,size[0],size[1]]`` uint8 on the images' device.
    """
    rows = boxes.tolist() if isinstance(boxes, torch.Tensor) else [list(b) for b in boxes]
    which = image_index.tolist() if isinstance(image_index, torch.Tensor) else list(image_index)
    if any(len(r) != 4 for r in rows):
        raise ValueError("boxes must be [B,4] (top, left, height, width)")
    first = images[0]
    out = torch.empty((len(rows), first.shape[0], size[0], size[1]), dtype=torch.uint8, device=first.device)
    for j, ((top, left, h, w), i) in enumerate(zip(rows, which)):
        out[j] = _resize(_crop(images[int(i)], int(top), int(left), int(h), int(w)), size)
    return out


def hflip(views: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror the views whose ``mask`` entry is non-zero (``[B,C,H,W]``, ``[B]``); in place."""
    sel = mask.nonzero().flatten().to(views.device)
    if sel.numel() == views.shape[0]:
        return views.flip(-1)
    if sel.numel():
        views[sel] = views[sel].flip(-1)
    return views


def to_uint8(views: torch.Tensor) -> torch.Tensor:
    """Round a float view batch in ``[0, 255]`` to uint8 (round half to even, then clamp)."""
    if views.dtype == torch.uint8:
        return views
    return views.round().clamp_(0, 255).to(torch.uint8)
