"""The bounds of a build's settings, declared once: the build configuration (and so every
command-line flag and config key generated from it) and the store header's validation use
these, so a value one accepts the other accepts too."""

from __future__ import annotations

__all__ = ["MAX_CHUNK_SIZE", "MAX_IMAGES", "MAX_OUTPUT_SIZE", "MAX_SEED", "MAX_SHARD_IMAGES", "MAX_TOPK", "MAX_VIEWS"]

MAX_VIEWS = 10_000
"""V: views per image (ImageNet+'s largest stores have 400)."""
MAX_TOPK = 1_000
"""k: soft-label entries per view (ImageNet's 1,000 classes: dense targets)."""
MAX_SEED = 2**63 - 1
"""The seed of every view's random stream (a 63-bit integer)."""
MAX_OUTPUT_SIZE = 8192
"""The view size in pixels."""
MAX_CHUNK_SIZE = 1 << 20
"""Images per store chunk (and per work unit)."""
MAX_SHARD_IMAGES = 1 << 31
"""Images per shard object."""
MAX_IMAGES = 2**40
"""Images in a store (or a segment's offset)."""
