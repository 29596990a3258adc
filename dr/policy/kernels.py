"""Batched, device-agnostic replay kernels in torch.

Each kernel takes a batch of views and *per-view* parameters, and computes every view
independently of the others, so replaying a batch of B views equals replaying each view alone
(tested bit-exactly on one device). The same functions run on the GPU at build time and on the
CPU, with a batch of one, in the training loader.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

__all__ = ["crop_resize", "hflip", "to_uint8"]


def _boxes_xyxy(boxes: torch.Tensor, batch_index: torch.Tensor, pad: int) -> torch.Tensor:
    """(top, left, h, w) in source pixels -> roi_align rows (batch, x1, y1, x2, y2)."""
    b = boxes.to(torch.float32)
    top, left, h, w = b.unbind(1)
    top, left = top + pad, left + pad
    return torch.stack([batch_index.to(torch.float32), left, top, left + w, top + h], dim=1)


def crop_resize(
    images: torch.Tensor | Sequence[torch.Tensor],
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    size: tuple[int, int],
    pad: int = 0,
) -> torch.Tensor:
    """Crop ``boxes`` out of ``images`` and resize each crop to ``size``.

    Area-averaging resize (``roi_align`` with an adaptive sampling grid and half-pixel-aligned
    coordinates): an integer box of exactly ``size`` pixels is an exact copy; larger boxes are
    averaged (anti-aliased), smaller ones bilinearly upsampled.

    Args:
        images: ``[N,3,H,W]`` uint8/float tensor, or a list of ``[3,H,W]`` tensors of any sizes.
        boxes: ``[B,4]`` integer (top, left, height, width) in source pixels; may reach ``pad``
            pixels outside the image, where the image is zero-padded.
        image_index: ``[B]`` which image each box is cut from.
        size: output ``(height, width)``.
        pad: zero padding (pixels) around every image; fixed by the policy so that results do
            not depend on the batch.

    Returns:
        ``[B,3,size[0],size[1]]`` float32 in the input's value range (not rounded).
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [B,4] (top, left, h, w), got {tuple(boxes.shape)}")
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        device = images.device
        stacked = images.to(torch.float32)
        if pad:
            stacked = F.pad(stacked, (pad, pad, pad, pad))
        rois = _boxes_xyxy(boxes.to(device), image_index.to(device), pad)
        return roi_align(stacked, rois, size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    # Images of different sizes: one call per image, same per-box arithmetic.
    images = list(images)
    device = images[0].device if images else boxes.device
    out = torch.empty((boxes.shape[0], 3, size[0], size[1]), dtype=torch.float32, device=device)
    index = image_index.to(device)
    for i, img in enumerate(images):
        sel = (index == i).nonzero().flatten()
        if sel.numel() == 0:
            continue
        out[sel] = crop_resize(img[None], boxes.to(device)[sel], torch.zeros_like(sel), size, pad)
    return out


def hflip(views: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror the views whose ``mask`` entry is non-zero (``[B,C,H,W]``, ``[B]``)."""
    mask = mask.to(device=views.device, dtype=torch.bool).view(-1, 1, 1, 1)
    return torch.where(mask, views.flip(-1), views)


def to_uint8(views: torch.Tensor) -> torch.Tensor:
    """Round a float view batch in ``[0, 255]`` to uint8 (round half to even, then clamp)."""
    if views.dtype == torch.uint8:
        return views
    return views.round().clamp_(0, 255).to(torch.uint8)
