"""The images of several sources as one: what a store's segments are read from."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dr.errors import SourceError
from dr.sources.base import Source, SourceFingerprint, labels_hash

__all__ = ["ConcatSource"]


class ConcatSource:
    """Sources one after another: image ``i`` of part ``j`` is image ``offset_j + i``.

    The classes are the last part's; every part's class names must come first in it, in order
    (a segment may add classes, never rename or reorder them), so every part's labels keep
    their meaning. A part may be ``None`` (a segment not selected for reading): its labels are
    given, its images cannot be read.

    Args:
        parts: the sources, or ``None`` for a part whose images are not read.
        labels: each part's labels, used for the ``None`` parts (and checked for the others).
        classes: each part's class names.

    Raises:
        SourceError: a part whose classes are not a prefix of the last part's.
    """

    kind = "segments"

    def __init__(self, parts: Sequence[Source | None], labels: Sequence[np.ndarray], classes: Sequence[Sequence[str]]) -> None:
        self.parts = list(parts)
        self._classes = tuple(classes[-1])
        for j, names in enumerate(classes):
            if tuple(names) != self._classes[: len(names)]:
                raise SourceError(f"segment {j}'s classes {list(names)[:4]}... are not the first classes of the last segment's")
        self._labels = np.concatenate([np.asarray(x, dtype=np.int64) for x in labels])
        self.offsets = np.cumsum([0] + [len(x) for x in labels])

    @property
    def classes(self) -> tuple[str, ...]:
        return self._classes

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def labels(self) -> np.ndarray:
        return self._labels

    def _part(self, index: int) -> tuple[Source, int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} out of range for {len(self)} images")
        j = int(np.searchsorted(self.offsets, index, side="right")) - 1
        part = self.parts[j]
        if part is None:
            raise SourceError(f"image {index} lies in segment {j}, which was not selected for reading (pass segments= to include it)")
        return part, j, index - int(self.offsets[j])

    def read(self, index: int) -> tuple[np.ndarray, bytes]:
        part, _, i = self._part(index)
        return part.read(i)

    def describe(self, index: int) -> str:
        part, j, i = self._part(index)
        return f"segment {j}: {part.describe(i)}"

    def fingerprint(self) -> SourceFingerprint:
        return SourceFingerprint(self.kind, len(self), self._classes, labels_hash(self._labels, self._classes))

    def __repr__(self) -> str:
        return f"ConcatSource({len(self.parts)} segments, images={len(self)}, classes={len(self._classes)})"
