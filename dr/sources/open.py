"""Open any source: a spec string, an ImageFolder path or URL, a :class:`Source`, or a dataset."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dr.sources.base import Source
from dr.sources.cifar import CifarSource
from dr.sources.filelist import FileListSource
from dr.sources.folder import ImageFolderSource, TorchDatasetSource
from dr.sources.hfdisk import HFDiskSource
from dr.sources.spec import looks_like_spec, parse_source_spec
from dr.sources.wds import WebDatasetSource

__all__ = ["open_source", "open_spec"]


def open_spec(text: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """Open the source a spec names (see the module docstring)."""
    spec = parse_source_spec(text)
    opts = dict(storage_options or {})
    if spec.kind == "wds":
        return WebDatasetSource(
            spec.location,
            label=spec.options.get("label", "cls"),
            image=spec.options.get("image"),
            classes=spec.options.get("classes"),
            storage_options=opts,
        )
    if spec.kind == "list":
        return FileListSource(spec.location, classes=spec.options.get("classes"), storage_options=opts)
    if spec.kind == "hf-disk":
        return HFDiskSource(
            spec.location,
            image=spec.options.get("image", "image"),
            label=spec.options.get("label", "label"),
            split=spec.options.get("split"),
        )
    return CifarSource(spec.location, kind=spec.kind, split=spec.options.get("split", "train"), labels=spec.options.get("labels", "fine"))


def open_source(source: Any, storage_options: Mapping[str, Any] | None = None) -> Source:
    """Turn a path, an fsspec URL or a dataset object into a :class:`Source`.

    Strings are source specs ``KIND:LOCATION[?opts]`` (``wds:``, ``list:``, ``hf-disk:``,
    ``cifar10:``, ``cifar100:``; see :mod:`dr.sources`) or name an ImageFolder-layout
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
        if looks_like_spec(source):
            return open_spec(source, storage_options)  # type: ignore[no-any-return]
    if isinstance(source, (str, os.PathLike)):
        return ImageFolderSource(source, storage_options=storage_options)
    return TorchDatasetSource(source)
