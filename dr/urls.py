"""Locations: a local path, a ``file://`` URL, or any fsspec URL (``s3://``, ``gs://``,
``memory://``...). The one place that tells them apart; sources, stores and teacher weights
all ask it.

A :class:`Location` is a URL together with the fsspec options that reach it (credentials, an
endpoint), the way zarr's ``StorePath`` keeps a store and a path together: dr passes one object
from the command line or the public API down to the code that opens the store, instead of a
``(url, storage_options)`` pair through every function.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dr.errors import ConfigError

__all__ = ["Location", "is_url", "strip_file_scheme"]


def is_url(location: str) -> bool:
    """True for an fsspec URL other than ``file://`` (``s3://``, ``gs://``, ``memory://``...)."""
    return "://" in location and not location.startswith("file://")


def strip_file_scheme(location: str) -> str:
    """``file:///a/b`` -> ``/a/b``; anything else unchanged."""
    return location[len("file://") :] if location.startswith("file://") else location


@dataclass(frozen=True)
class Location:
    """Where a store, a segment or a source lives, and how to reach it.

    Args:
        url: a local path, a ``file://`` URL or an fsspec URL (``s3://bucket/imagenet+``).
        options: fsspec options for a remote URL (``{"endpoint_url": ..., "anon": True}``);
            ignored for a local path. Kept read-only; their values never appear in ``repr``
            (they may hold credentials).

    Example:
        >>> loc = Location.of("s3://bucket/store", {"anon": True})
        >>> loc / "segments" / "1"
        Location('s3://bucket/store/segments/1', options=['anon'])
    """

    url: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", os.fspath(self.url) if isinstance(self.url, os.PathLike) else str(self.url))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options or {})))

    @classmethod
    def of(cls, where: str | os.PathLike[str] | Location, storage_options: Mapping[str, Any] | None = None) -> Location:
        """The location of ``where``: a path or URL with ``storage_options``, or a
        :class:`Location` as it is.

        Raises:
            ConfigError: a :class:`Location` and ``storage_options`` both given (its options
                are its own: give them in one place).
        """
        if isinstance(where, Location):
            if storage_options:
                raise ConfigError(
                    f"{where!r} already carries its fsspec options: pass storage_options in the Location or beside a plain "
                    "path/URL, not both"
                )
            return where
        return cls(os.fspath(where), storage_options or {})

    @property
    def remote(self) -> bool:
        """Whether the URL names an fsspec filesystem other than the local one."""
        return is_url(self.url)

    @property
    def path(self) -> str:
        """The local path (``file://`` stripped) of a local location; the URL of a remote one."""
        return self.url if self.remote else strip_file_scheme(self.url)

    def __truediv__(self, name: str) -> Location:
        """The location of ``name`` inside this one (a segment, a group, a file)."""
        return Location(f"{self.url.rstrip('/')}/{name}", self.options)

    def zarr_options(self) -> dict[str, Any]:
        """Keyword arguments that let zarr reach this location (``storage_options`` for a URL,
        nothing for a local path)."""
        return {"storage_options": dict(self.options)} if self.remote else {}

    def filesystem(self) -> tuple[Any, str]:
        """The fsspec filesystem and the path inside it."""
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.url, **self.options)
        return fs, root

    def open(self, mode: str = "rb") -> Any:
        """An fsspec file object for this location (use it as a context manager)."""
        import fsspec

        return fsspec.open(self.url, mode, **self.options)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        keys = f", options={sorted(self.options)}" if self.options else ""
        return f"Location({self.url!r}{keys})"

    def __hash__(self) -> int:
        return hash(self.url)

    def __reduce__(self) -> tuple[Any, tuple[str, dict[str, Any]]]:
        # a Location travels to DataLoader workers and Ray actors: pickle its options as a dict
        return (Location, (self.url, dict(self.options)))
