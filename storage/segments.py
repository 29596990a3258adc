"""Stores that grow: segments appended by ``dr-build reinforce NEW --extend STORE``.

A store built once is segment 0: its root arrays and header, unchanged by any extension. Each
extension adds segment ``i`` (1, 2, ...) as a complete dr store of its own, nested at
``STORE/segments/<i>``: its own sealed header (whose ``dataset`` is the new images, with
``dataset.offset`` = the images in the segments before it), its own chunks, done map and chunk
digests. Existing chunks are never rewritten. The table of segments is the ``segments``
group's attributes::

    {"format": "dr-segments", "segments": [{"index": 1, "path": "segments/1", "offset": 50000,
      "count": 5000, "kind": "image_folder", "labels_sha256": "...", "location": "/data/new",
      "status": "complete", "added_at": "...", "completed_at": "..."}]}

Every segment replays global indices (``offset + i``): view streams and mixing partners are
those of a one-shot build over the segments' images in order (a ``list:`` source that
concatenates them), and the teachers, policy, V, k, seed and chunking are the base store's
(:func:`extension_problems` names any difference). Readers of this package serve every
*complete* segment, as one index space (:class:`SegmentedStore`); a 0.2 reader sees segment 0,
a valid store of the images it was built from.

The table and the segment stores must agree, or readers refuse the store (naming the
disagreement and the fix) instead of serving part of it without a word: segment stores with no
table, a complete segment store the table does not list, a row marked ``building`` whose store
is complete or that other rows follow, a row whose count or labels differ from the segment's
sealed header (:func:`table_problems`, :class:`SegmentedStore`). A segment that is genuinely
still building (its row and its store both ``building``, or no store yet) is left out with a
WARNING naming its images: training goes on while new images are labelled.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dr.errors import StoreError
from dr.storage.integrity import ChunkProblem
from dr.storage.layout import Deriver
from dr.storage.reader import StoreReader, open_group, store_exists
from dr.storage.schema import DatasetInfo, StoreHeader
from dr.urls import Location

__all__ = [
    "SEGMENTS_FORMAT",
    "SegmentRecord",
    "SegmentedStore",
    "extension_problems",
    "has_segments",
    "read_segment_table",
    "segment_location",
    "segment_url",
    "table_problems",
    "write_segment_table",
]

log = logging.getLogger(__name__)

SEGMENTS_FORMAT = "dr-segments"
"""The ``format`` attribute of a store's ``segments`` group."""


class SegmentRecord(BaseModel):
    """One row of the segment table.

    Attributes:
        index: the segment's number (1 for the first extension; the base store is 0).
        path: where its store lies, relative to the base store (``segments/<index>``).
        offset: the global index of its first image.
        count: its images.
        kind: its source kind.
        labels_sha256: its source's labels hash (the dataset identity, as in the header).
        location: where its images were read from.
        status: ``building`` until its build completes, then ``complete``.
        added_at: when the extension started (ISO 8601).
        completed_at: when its build completed, or ``None``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=1, le=100_000)
    path: str = Field(pattern=r"^segments/[1-9][0-9]{0,5}$")
    offset: int = Field(ge=1, le=2**40)
    count: int = Field(ge=1, le=2**40)
    kind: str
    labels_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    location: str | None = None
    status: Literal["building", "complete"]
    added_at: str
    completed_at: str | None = None


def segment_location(store: Location, index: int) -> Location:
    """Where segment ``index`` of the store at ``store`` lies.

    Args:
        store: the base store's location.
        index: the segment's number (1, 2, ...).

    Returns:
        ``STORE/segments/<index>``, with the store's fsspec options.
    """
    return store / f"segments/{int(index)}"


def segment_url(store: str | Location, index: int) -> str:
    """Where segment ``index`` of ``store`` lies.

    Args:
        store: the base store's path or URL.
        index: the segment's number (1, 2, ...).

    Returns:
        ``STORE/segments/<index>``.
    """
    return segment_location(Location.of(store), index).url


def _table(store: Location) -> Location:
    return store / "segments"


def read_segment_table(store: str | Location) -> list[SegmentRecord]:
    """The segment table of ``store`` (empty for a store that was never extended).

    Args:
        store: the base store's path, URL or :class:`~dr.urls.Location`.

    Returns:
        The rows, in segment order.

    Raises:
        StoreError: a malformed table (the message names the row and field); segment stores
            but no table; a complete segment store the table does not list.
    """
    loc = Location.of(store)
    store = loc.url
    if not store_exists(_table(loc)):
        if store_exists(segment_location(loc, 1)):
            raise StoreError(
                f"store {store!r} holds segment stores (segments/1, ...) but no segment table (the 'segments' group's zarr.json "
                "is missing or not a group): a reader would serve segment 0 alone and leave every extension's images out. "
                "Restore STORE/segments/zarr.json from a copy of the store, or delete the segments folder to keep segment 0 only"
            )
        return []
    attrs = dict(open_group(_table(loc)).attrs)
    if attrs.get("format") != SEGMENTS_FORMAT:
        raise StoreError(f"store {store!r}: its 'segments' group is not a dr segment table (format {attrs.get('format')!r})")
    rows = attrs.get("segments")
    if not isinstance(rows, list):
        raise StoreError(f"store {store!r}: its segment table has no 'segments' list")
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(SegmentRecord.model_validate(row))
        except ValidationError as e:
            first = e.errors()[0]
            raise StoreError(f"store {store!r}: segment table row {i}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    for i, rec in enumerate(out, start=1):
        if rec.index != i or rec.path != f"segments/{i}":
            raise StoreError(f"store {store!r}: segment table row {i - 1} is segment {rec.index} at {rec.path!r}, expected segments/{i}")
    _refuse_unlisted(loc, len(out))
    return out


def _segment_status(seg: Location) -> str | None:
    """The ``status`` a segment store's header says (``None``: no store there)."""
    if not store_exists(seg):
        return None
    status = dict(open_group(seg).attrs).get("status")
    return str(status) if status is not None else "unknown"


def _refuse_unlisted(loc: Location, rows: int) -> None:
    """A segment store after the table's last row: refused when it is complete (its images would
    be left out without a word), logged when it is not (it serves nothing)."""
    nxt, store = rows + 1, loc.url
    status = _segment_status(segment_location(loc, nxt))
    if status is None:
        return
    if status != "building":
        raise StoreError(
            f"store {store!r}: segments/{nxt} holds a {status} segment store that the segment table does not list (it has "
            f"{rows} row(s)): a reader would leave its images out without a word. Restore the table (STORE/segments/zarr.json) "
            f"from a copy of the store, or delete segments/{nxt} if it does not belong to the store"
        )
    log.warning("store %s: segments/%d holds an unfinished segment store the segment table does not list; it is not served", store, nxt)


def table_problems(store: str | Location, records: Sequence[SegmentRecord]) -> list[str]:
    """Where the ``building`` rows of a segment table disagree with the segment stores.

    A row is ``building`` from the moment an extension is planned until its store completes;
    only the last row may be building, and its store is then missing or building too. A
    building row whose store is complete was edited (or the extension stopped between
    finishing the store and recording it): a reader would leave its images out.

    Args:
        store: the base store's path, URL or :class:`~dr.urls.Location`.
        records: its segment table (:func:`read_segment_table`).

    Returns:
        One message per disagreement, naming the segment and the fix; empty when they agree.
    """
    loc = Location.of(store)
    problems = []
    for i, rec in enumerate(records):
        if rec.status != "building":
            continue
        images = f"images {rec.offset}-{rec.offset + rec.count - 1}"
        if i != len(records) - 1:
            problems.append(
                f"segment {rec.index} ({images}) is marked building but segments after it are listed: only the last "
                "extension can be building. Restore the table (STORE/segments/zarr.json) from a copy of the store"
            )
            continue
        status = _segment_status(segment_location(loc, rec.index))
        if status not in (None, "building"):
            problems.append(
                f"segment {rec.index} ({images}, from {rec.location}) is marked building in the segment table but its store "
                f"is {status}: the table was edited, or its extension stopped between finishing the store and recording it. "
                "Run that extension's command again with --resume to record it (or restore the table from a copy of the store)"
            )
    return problems


def write_segment_table(store: str | Location, records: Sequence[SegmentRecord]) -> None:
    """Write (create or replace) the segment table of ``store``.

    Args:
        store: the base store's path, URL or :class:`~dr.urls.Location`.
        records: every row, in segment order.
    """
    group = open_group(_table(Location.of(store)), mode="a")
    group.update_attributes({"format": SEGMENTS_FORMAT, "segments": [r.model_dump(mode="json") for r in records]})


def extension_problems(base: StoreHeader, new: StoreHeader, offset: int | None = None) -> list[str]:
    """Why ``new`` (a segment's header) cannot extend the store whose header is ``base``.

    The segment must have the base's sealed settings (policy, parameter layout, V, k, seed,
    chunking, output size, teachers and their math), start at ``offset`` (when given), and
    have the base's classes or extend them (the base's class names first, in order) within the
    teachers' label space.

    Args:
        base: the header of the store being extended (segment 0).
        new: the segment's header.
        offset: where the segment must start (``None``: not checked).

    Returns:
        One message per difference, naming the field and both values; empty when compatible.
    """
    a, b = base.config_key(), new.config_key()
    problems = []
    for name in sorted(set(a) | set(b)):
        if name == "dataset" or a.get(name) == b.get(name):
            continue
        for where, left, right in _differences(a.get(name), b.get(name), name)[:3]:
            problems.append(f"{where}: the store has {_short(left)}, the extension {_short(right)}")
    old, grown = tuple(base.dataset.classes), tuple(new.dataset.classes)
    if grown[: len(old)] != old:
        problems.append(
            f"classes: the extension's classes must start with the store's {len(old)} class names in order "
            f"(the store: {list(old)[:4]}..., the extension: {list(grown)[:4]}...)"
        )
    elif len(grown) > new.num_classes:
        problems.append(f"classes: {len(grown)} classes exceed the teachers' {new.num_classes}")
    if offset is not None and new.dataset.offset != offset:
        problems.append(f"dataset.offset: the segment starts at image {new.dataset.offset}, expected {offset}")
    return problems


def _differences(a: Any, b: Any, where: str) -> list[tuple[str, Any, Any]]:
    """The innermost places where two JSON values differ (``ensemble.teachers[0].weights_sha256``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) for d in _differences(a.get(k), b.get(k), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) if x != y for d in _differences(x, y, f"{where}[{i}]")]
    return [(where, a, b)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


@dataclass(frozen=True)
class Segment:
    """One complete segment being read: its number, store, first global index and size."""

    index: int
    url: str
    reader: StoreReader
    offset: int
    count: int
    chunk_base: int  # the global number of its first chunk


class SegmentedStore:
    """The complete segments of a store, read as one store.

    Global image ``i`` is image ``i - offset`` of the segment that holds it; global chunk
    numbers run through the segments in order. A segment still building is not served (a
    WARNING names its images); the base store must be complete. A segment table that
    disagrees with the segment stores is refused (:func:`read_segment_table`,
    :func:`table_problems`), never served in part without a word.

    Args:
        url: the base store (path, URL or :class:`~dr.urls.Location` with its fsspec options).

    Attributes:
        location: the base store's location.
        segments: the complete segments, in order.
        header: the base header with ``dataset`` describing all segments together (count,
            the last segment's classes); its other fields are every segment's.

    Raises:
        StoreError: a segment that does not match the base store (named), a bad table, a
            table that disagrees with the segment stores.
    """

    def __init__(self, url: str | Location) -> None:
        self.location = loc = Location.of(url)
        self.url = loc.url
        base = StoreReader(loc)
        self.base = base
        parts = [Segment(0, self.url, base, 0, base.header.dataset.count, 0)]
        table = read_segment_table(loc)
        disagree = table_problems(loc, table)
        if disagree:
            raise StoreError(f"store {self.url!r}: its segment table disagrees with its segment stores: " + "; ".join(disagree))
        for rec in table:
            if rec.status != "complete":
                log.warning(
                    "store %s: segment %d (%d images from %s, images %d-%d) is still building: its images are left out until "
                    "its extension completes",
                    self.url,
                    rec.index,
                    rec.count,
                    rec.location,
                    rec.offset,
                    rec.offset + rec.count - 1,
                )
                break
            reader = StoreReader(segment_location(loc, rec.index))
            seg_url = reader.url
            offset = parts[-1].offset + parts[-1].count
            problems = extension_problems(base.header, reader.header, offset)
            if reader.header.dataset.count != rec.count or reader.header.dataset.labels_sha256 != rec.labels_sha256:
                problems.append("the segment table's count or labels hash differs from the segment's sealed header")
            if rec.offset != offset:
                problems.append(f"the segment table says it starts at image {rec.offset}, the segments before it end at {offset}")
            if problems:
                raise StoreError(
                    f"store {self.url!r}: segment {rec.index} does not extend it: " + "; ".join(problems) + ". Restore the segment "
                    "and the segment table (STORE/segments) from a copy of the store, or rebuild the extension"
                )
            chunks = -(-parts[-1].count // base.header.chunk_size)
            parts.append(Segment(rec.index, seg_url, reader, offset, rec.count, parts[-1].chunk_base + chunks))
        self.segments = parts
        last = parts[-1].reader.header.dataset
        ids = hashlib.sha256("".join(p.reader.header.dataset.labels_sha256 for p in parts).encode()).hexdigest()
        whole = DatasetInfo(kind=base.header.dataset.kind, count=self.count, classes=last.classes, labels_sha256=ids, location=None)
        self.header: StoreHeader = base.header.model_copy(update={"dataset": whole})

    @property
    def count(self) -> int:
        """Images in all segments."""
        return self.segments[-1].offset + self.segments[-1].count

    @property
    def offsets(self) -> np.ndarray:
        """The first global index of each segment."""
        return np.asarray([s.offset for s in self.segments], dtype=np.int64)

    def segment_of(self, index: np.ndarray | Iterable[int]) -> np.ndarray:
        """Position in :attr:`segments` of the segment holding each global image index."""
        return np.searchsorted(self.offsets, np.asarray(index, dtype=np.int64), side="right") - 1

    def chunk_of(self, index: np.ndarray | Iterable[int]) -> np.ndarray:
        """The global chunk number of each global image index."""
        index = np.asarray(index, dtype=np.int64)
        seg = self.segment_of(index)
        base = np.asarray([s.chunk_base for s in self.segments], dtype=np.int64)
        return base[seg] + (index - self.offsets[seg]) // self.header.chunk_size

    def nbytes(self, paths: Sequence[str]) -> int:
        """Bytes of ``paths`` over all segments once decoded."""
        return int(sum(s.reader.nbytes(paths) for s in self.segments))

    def load_checked(
        self,
        paths: Sequence[str],
        *,
        chunks: Iterable[int] | None = None,
        derive_for: Callable[[StoreHeader], Deriver | None] | None = None,
    ) -> tuple[dict[str, np.ndarray], list[ChunkProblem]]:
        """``paths`` over all segments, each chunk checked against its digests; the problems
        carry global chunk numbers and image indices (and the segment in their path).
        ``derive_for`` gives a segment's parameter deriver from its header (derived parameters).

        Raises:
            StoreError: ``chunks`` given (a segmented store is read whole).
        """
        if chunks is not None:
            raise StoreError(f"store {self.url!r} has segments: it is read whole, not by chunk")
        parts: dict[str, list[np.ndarray]] = {p: [] for p in paths}
        problems: list[ChunkProblem] = []
        for s in self.segments:
            rows, found = s.reader.load_checked(paths, derive=derive_for(s.reader.header) if derive_for is not None else None)
            for p in paths:
                parts[p].append(rows[p])
            prefix = f"segments/{s.index}/" if s.index else ""
            problems += [
                ChunkProblem(prefix + q.path, s.chunk_base + q.chunk, s.offset + q.start, s.offset + q.stop, q.problem) for q in found
            ]
        return {p: np.concatenate(parts[p]) for p in paths}, problems


def has_segments(url: str | Location) -> bool:
    """Whether a store was ever extended.

    Args:
        url: the store's path, URL or :class:`~dr.urls.Location`.

    Returns:
        ``True`` when it has a segment table with at least one row.
    """
    return bool(read_segment_table(url))
