"""Per-chunk content digests: recorded when a chunk is marked done, checked by every reader.

``build/digests[c, j]`` is the BLAKE2b-128 of the rows of store chunk ``c`` of array
``digest_paths(header)[j]``, as decoded numpy bytes (C order, little-endian), keyed with the
header's seal (:meth:`dr.storage.schema.StoreHeader.digest_key`): a header whose sealed
fields were edited, seal and all, matches no chunk. Decoded rows,
not chunk files, are hashed: a deleted chunk file reads as its array's fill value, a truncated
one fails to decompress, a flipped byte decodes to other numbers -- all three show up as a
digest that does not match (or as an unreadable chunk), whatever the codec.

numpy + zarr only, like the rest of :mod:`storage`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dr.storage.schema import DIGEST_BYTES, SOURCE_ARRAYS, TARGET_ARRAYS, StoreHeader

if TYPE_CHECKING:
    import zarr

__all__ = ["ChunkProblem", "digest_paths", "rows_digest", "load_checked", "read_done", "damage_message", "DIGESTS_PATH"]

DIGESTS_PATH = "build/digests"

log = logging.getLogger(__name__)


def digest_paths(header: StoreHeader) -> tuple[str, ...]:
    """The arrays covered by ``build/digests``, in the order of its second axis (sorted)."""
    return tuple(sorted([f"params/{f.name}" for f in header.param_fields] + [*TARGET_ARRAYS, *SOURCE_ARRAYS]))


def rows_digest(rows: np.ndarray, key: bytes = b"") -> bytes:
    """BLAKE2b-128 of an array's rows as little-endian C-order bytes, keyed with ``key`` (the
    header's :meth:`~dr.storage.schema.StoreHeader.digest_key`)."""
    a = np.ascontiguousarray(rows)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return hashlib.blake2b(a.tobytes(), digest_size=DIGEST_BYTES, key=key).digest()


@dataclass(frozen=True)
class ChunkProblem:
    """One bad (array, chunk): ``problem`` says how (missing, unreadable, altered)."""

    path: str
    chunk: int
    start: int
    stop: int
    problem: str

    def __str__(self) -> str:
        return f"{self.path} chunk {self.chunk} (images {self.start}-{self.stop - 1}): {self.problem}"


def read_done(arr: zarr.Array, url: str = "<store>") -> np.ndarray:
    """The boolean done map; an unreadable entry (a write cut short by a crash, a damaged
    file) counts as not done."""
    try:
        return np.asarray(arr[:], dtype=bool)
    except Exception:  # noqa: BLE001 - fall back to one entry at a time
        out = np.zeros(arr.shape[0], dtype=bool)
        for i in range(arr.shape[0]):
            try:
                out[i] = bool(arr[i])
            except Exception:  # noqa: BLE001
                log.warning("done-map entry %d of %s is unreadable: counting that chunk as not done", i, url)
        return out


def _fill_rows(arr: zarr.Array, n: int) -> np.ndarray:
    return np.full((n, *arr.shape[1:]), arr.fill_value, dtype=arr.dtype)


def _read_rows(arr: zarr.Array, start: int, stop: int) -> np.ndarray | str:
    try:
        return np.asarray(arr[start:stop])
    except Exception as e:  # noqa: BLE001 - any codec/IO error means the chunk is unreadable
        return f"unreadable ({type(e).__name__}: {e})"


def _describe_mismatch(arr: zarr.Array, rows: np.ndarray) -> str:
    fill = np.asarray(arr.fill_value, dtype=arr.dtype)
    missing = bool(np.all(np.isnan(rows))) if np.issubdtype(rows.dtype, np.floating) and np.isnan(fill) else bool(np.all(rows == fill))
    if missing:
        return "missing (its chunk file is gone: reads as the fill value)"
    return "content differs from the digest recorded when it was written"


def load_checked(
    group: zarr.Group, header: StoreHeader, paths: Sequence[str], done: np.ndarray, *, chunks: Iterable[int] | None = None
) -> tuple[dict[str, np.ndarray], list[ChunkProblem]]:
    """Read ``paths`` and check each done chunk's rows against ``build/digests``.

    Args:
        group: the store's root group.
        header: its header.
        paths: arrays to read (each must be in :func:`digest_paths`).
        done: the done map; chunks not done are read but not checked.
        chunks: only these chunks (default: all); the returned arrays then hold only their rows,
            concatenated in the given order.

    Returns:
        The arrays (rows of unreadable chunks hold the fill value) and every problem found:
        unreadable or altered rows, missing digests. Never raises on damaged data.
    """
    order = digest_paths(header)
    key = header.digest_key()
    cs, n = header.chunk_size, header.dataset.count
    n_chunks = -(-n // cs)
    wanted = list(range(n_chunks)) if chunks is None else [int(c) for c in chunks]
    problems: list[ChunkProblem] = []

    def rows_of(c: int) -> tuple[int, int]:
        return c * cs, min((c + 1) * cs, n)

    # the recorded digests, chunk by chunk when the whole read fails
    dig_arr = group.get(DIGESTS_PATH)
    recorded: dict[int, np.ndarray | None] = dict.fromkeys(wanted)
    if dig_arr is not None:
        whole = _read_rows(dig_arr, 0, n_chunks) if chunks is None else None  # type: ignore[arg-type]
        for c in wanted:
            got = whole[c : c + 1] if isinstance(whole, np.ndarray) else _read_rows(dig_arr, c, c + 1)  # type: ignore[arg-type]
            recorded[c] = got[0] if isinstance(got, np.ndarray) else None
    out: dict[str, np.ndarray] = {}
    for path in paths:
        arr = group[path]
        j = order.index(path)
        full = _read_rows(arr, 0, n) if chunks is None else None  # type: ignore[arg-type]
        parts = []
        for c in wanted:
            start, stop = rows_of(c)
            rows = full[start:stop] if isinstance(full, np.ndarray) else _read_rows(arr, start, stop)  # type: ignore[arg-type]
            if isinstance(rows, str):
                problems.append(ChunkProblem(path, c, start, stop, rows))
                rows = _fill_rows(arr, stop - start)  # type: ignore[arg-type]
            elif done[c]:
                rec = recorded[c]
                if rec is None or not rec.any():
                    problems.append(
                        ChunkProblem(path, c, start, stop, f"no digest recorded ({DIGESTS_PATH} chunk {c} is missing or unreadable)")
                    )
                elif rows_digest(rows, key) != rec[j].tobytes():
                    problems.append(ChunkProblem(path, c, start, stop, _describe_mismatch(arr, rows)))  # type: ignore[arg-type]
            parts.append(rows)
        out[path] = full if isinstance(full, np.ndarray) else np.concatenate(parts) if parts else _fill_rows(arr, 0)  # type: ignore[arg-type]
    return out, problems


def damage_message(url: str, problems: Sequence[ChunkProblem], *, limit: int = 5) -> str:
    """What a reader says about damaged chunks, with the repair command."""
    chunks = sorted({p.chunk for p in problems})
    listed = "; ".join(str(p) for p in problems[:limit]) + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")
    return (
        f"store {url!r} has {len(chunks)} damaged chunk(s) {chunks[:10]}{'...' if len(chunks) > 10 else ''}: {listed}. "
        f"Their rows are not served. Recompute just those chunks with the build's command plus "
        f"`--resume --repair` (e.g. dr-build reinforce SOURCE --teacher ... --out {url} --resume --repair)"
    )
