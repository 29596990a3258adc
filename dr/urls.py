"""Locations: a local path, a ``file://`` URL, or any fsspec URL (``s3://``, ``gs://``,
``memory://``...). The one place that tells them apart; sources, stores and teacher weights
all ask it."""

from __future__ import annotations

__all__ = ["is_url", "strip_file_scheme"]


def is_url(location: str) -> bool:
    """True for an fsspec URL other than ``file://`` (``s3://``, ``gs://``, ``memory://``...)."""
    return "://" in location and not location.startswith("file://")


def strip_file_scheme(location: str) -> str:
    """``file:///a/b`` -> ``/a/b``; anything else unchanged."""
    return location[len("file://") :] if location.startswith("file://") else location
