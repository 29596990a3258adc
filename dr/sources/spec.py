"""Source spec strings ``KIND:LOCATION[?opts]``: the kinds, parsing, and the location a store records."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from dr.errors import SourceError

__all__ = ["SOURCE_KINDS", "SourceSpec", "absolute_location", "canonical_spec", "looks_like_spec", "parse_source_spec"]

#: kind -> (accepted options, one-line description); the order is the one errors list.
SOURCE_KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "wds": (("label", "image", "classes"), "wds:PATTERN?label=cls -- WebDataset tar shards (braces, local or fsspec)"),
    "list": (("classes",), "list:FILE.csv|FILE.jsonl -- a file list with path,label (paths relative to the list, or URLs)"),
    "hf-disk": (("image", "label", "split"), "hf-disk:PATH?image=img&label=label -- a Hugging Face dataset saved with save_to_disk"),
    "cifar10": (("split",), "cifar10:DIR[?split=train|test] -- torchvision's CIFAR-10 layout (cifar-10-batches-py)"),
    "cifar100": (("split", "labels"), "cifar100:DIR[?split=train|test&labels=fine|coarse] -- torchvision's CIFAR-100 layout"),
}
"""The source spec kinds (``KIND:LOCATION[?opts]``): kind to (accepted options, one-line usage)."""


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source spec ``KIND:LOCATION[?opts]``."""

    kind: str
    location: str
    options: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        query = urlencode(self.options, safe=",:/")
        return f"{self.kind}:{self.location}" + (f"?{query}" if query else "")


def _kinds_help() -> str:
    return ", ".join(SOURCE_KINDS) + " (KIND:LOCATION[?opts]), or a bare path/URL for an ImageFolder"


def looks_like_spec(text: str) -> bool:
    """True when ``text`` reads as ``KIND:...`` rather than a path or an fsspec URL.

    A local path that exists is never a spec (``data:2024`` as a folder name stays a folder).
    """
    head, sep, rest = text.partition(":")
    if not sep or rest.startswith("//") or not head or os.path.exists(text):
        return False
    if len(head) == 1 and head.isalpha():  # a Windows drive letter
        return False
    return all(c.isalnum() or c in "-_" for c in head)


def parse_source_spec(text: str) -> SourceSpec:
    """Parse ``KIND:LOCATION[?opts]``.

    Raises:
        SourceError: an unknown kind (naming the kinds), a missing location, or an unknown
            option (naming the accepted ones).
    """
    kind, _, rest = text.partition(":")
    if kind not in SOURCE_KINDS:
        raise SourceError(f"source {text!r}: unknown kind {kind!r}; use one of {_kinds_help()}")
    location, _, query = rest.partition("?")
    if not location:
        raise SourceError(f"source {text!r}: missing location after '{kind}:' ({SOURCE_KINDS[kind][1]})")
    allowed = SOURCE_KINDS[kind][0]
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in allowed:
            raise SourceError(f"source {text!r}: unknown option {key!r} for {kind}; accepted: {', '.join(allowed)}")
        options[key] = value
    return SourceSpec(kind, location, options)


def canonical_spec(text: str) -> str:
    """The spec as recorded in a store: a local location made absolute, URLs as given."""
    spec = parse_source_spec(text)
    loc = spec.location if "://" in spec.location else os.path.abspath(os.path.expanduser(spec.location))
    return SourceSpec(spec.kind, loc, spec.options).text()


def absolute_location(location: str) -> str:
    """``location`` as recorded in a store: URLs as given, local paths made absolute (so
    ``dr-build verify`` and the Dataset find the source from any working directory)."""
    if "://" in location:
        return location
    if looks_like_spec(location):  # KIND:LOCATION[?opts] (see dr.sources)
        return canonical_spec(location)
    return os.path.abspath(os.path.expanduser(location))
