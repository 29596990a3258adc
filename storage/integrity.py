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
from typing import TYPE_CHECKING, Any

import numpy as np

from dr.errors import DRError, StoreError
from dr.storage.layout import CHUNK_DIGESTS, DIGEST_BYTES, SIZES, SKIPPED, Deriver, array_specs, digest_paths
from dr.storage.schema import StoreHeader

if TYPE_CHECKING:
    import zarr

__all__ = ["ChunkProblem", "digest_paths", "rows_digest", "load_checked", "read_done", "damage_message"]

log = logging.getLogger(__name__)


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


def _fill_rows(arr: Any, n: int) -> np.ndarray:
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


@dataclass(frozen=True)
class _Virtual:
    """A derived parameter array: the shape, dtype and fill of the array it stands for."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any


def load_checked(
    group: Any,
    header: StoreHeader,
    paths: Sequence[str],
    done: np.ndarray,
    *,
    chunks: Iterable[int] | None = None,
    derive: Deriver | None = None,
    recorded: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], list[ChunkProblem]]:
    """Read ``paths`` and check each done chunk's rows against ``build/digests``.

    Args:
        group: the store's root group (or any mapping of its arrays by path with ``get``).
        header: its header.
        paths: arrays to read (each must be in :func:`digest_paths`).
        done: the done map; chunks not done are read but not checked.
        chunks: only these chunks (default: all); the returned arrays then hold only their rows,
            concatenated in the given order.
        derive: re-derives a chunk's parameter rows (a store with derived parameters); its rows
            are checked against the digests like stored ones.
        recorded: the whole ``build/digests`` array, already read (default: read here).

    Returns:
        The arrays (rows of unreadable chunks hold the fill value) and every problem found:
        unreadable or altered rows, missing digests, re-derived parameters that differ from
        the build's. Never raises on damaged data.

    Raises:
        StoreError: derived parameters asked for without ``derive``.
    """
    specs = {s.path: s for s in array_specs(header, include_derived=True)}
    if any(not specs[p].stored for p in paths) and derive is None:
        raise StoreError("this store's parameters are derived, not stored: read it through dr (ReinforcedDataset, DeviceReplay, verify)")
    check = _Check(group, header, done, chunks, derive, recorded)
    out = {path: check.read(path, specs[path]) for path in paths}
    return out, check.problems


class _Check:
    """One :func:`load_checked` call: the chunks wanted, their recorded digests, the problems."""

    def __init__(
        self, group: Any, header: StoreHeader, done: np.ndarray, chunks: Iterable[int] | None, derive: Deriver | None, recorded: Any = None
    ) -> None:
        self.group, self.header, self.done, self.derive = group, header, done, derive
        self.order, self.key = digest_paths(header), header.digest_key()
        self.cs, self.n = header.chunk_size, header.dataset.count
        n_chunks = -(-self.n // self.cs)
        self.whole = chunks is None
        self.wanted = list(range(n_chunks)) if chunks is None else [int(c) for c in chunks]
        self.problems: list[ChunkProblem] = []
        self.derived: dict[int, dict[str, np.ndarray] | str] = {}
        # the recorded digests, chunk by chunk when the whole read fails
        dig_arr = group.get(CHUNK_DIGESTS)
        self.recorded: dict[int, np.ndarray | None] = dict.fromkeys(self.wanted)
        if dig_arr is not None:
            whole = recorded if recorded is not None else (_read_rows(dig_arr, 0, n_chunks) if self.whole else None)
            for c in self.wanted:
                got = whole[c : c + 1] if isinstance(whole, np.ndarray) else _read_rows(dig_arr, c, c + 1)
                self.recorded[c] = got[0] if isinstance(got, np.ndarray) else None

    def rows_of(self, c: int) -> tuple[int, int]:
        return c * self.cs, min((c + 1) * self.cs, self.n)

    def derived_rows(self, c: int, path: str) -> np.ndarray | str:
        if c not in self.derived:
            start, stop = self.rows_of(c)
            sizes, skipped = _read_rows(self.group[SIZES], start, stop), _read_rows(self.group[SKIPPED], start, stop)
            if isinstance(sizes, str) or isinstance(skipped, str):
                self.derived[c] = (
                    f"cannot re-derive: the chunk's source/sizes or source/skipped rows are {sizes if isinstance(sizes, str) else skipped}"
                )
            else:
                try:
                    self.derived[c] = self.derive(c, sizes, skipped)  # type: ignore[misc]
                except DRError as e:
                    self.derived[c] = f"cannot re-derive ({e})"
        got = self.derived[c]
        return got if isinstance(got, str) else got[path]

    def read(self, path: str, spec: Any) -> np.ndarray:
        """Every wanted chunk's rows of ``path``, each done chunk checked against its digest."""
        arr: Any = self.group[path] if spec.stored else _Virtual(spec.shape, np.dtype(spec.dtype), spec.fill)
        j = self.order.index(path)
        full = _read_rows(arr, 0, self.n) if self.whole and spec.stored else None
        parts = []
        for c in self.wanted:
            start, stop = self.rows_of(c)
            if isinstance(full, np.ndarray):
                rows: np.ndarray | str = full[start:stop]
            else:
                rows = _read_rows(arr, start, stop) if spec.stored else self.derived_rows(c, path)
            if isinstance(rows, str):
                self.problems.append(ChunkProblem(path, c, start, stop, rows))
                rows = _fill_rows(arr, stop - start)
            elif self.done[c]:
                rec = self.recorded[c]
                if rec is None or not rec.any():
                    self.problems.append(
                        ChunkProblem(path, c, start, stop, f"no digest recorded ({CHUNK_DIGESTS} chunk {c} is missing or unreadable)")
                    )
                elif rows_digest(rows, self.key) != rec[j].tobytes():
                    what = _describe_mismatch(arr, rows) if spec.stored else _DRIFT
                    self.problems.append(ChunkProblem(path, c, start, stop, what))
            parts.append(rows)
        return full if isinstance(full, np.ndarray) else np.concatenate(parts) if parts else _fill_rows(arr, 0)


#: a derived parameter chunk whose re-derivation differs from the build's digests
_DRIFT = (
    "re-derived parameters differ from the digests the build recorded: this dr's keyed sampler or policy code differs "
    "from the build's (or the chunk's source/sizes changed); read the store with the dr release that built it"
)


def damage_message(url: str, problems: Sequence[ChunkProblem], *, limit: int = 5) -> str:
    """What a reader says about damaged chunks, with the repair command."""
    chunks = sorted({p.chunk for p in problems})
    listed = "; ".join(str(p) for p in problems[:limit]) + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")
    return (
        f"store {url!r} has {len(chunks)} damaged chunk(s) {chunks[:10]}{'...' if len(chunks) > 10 else ''}: {listed}. "
        f"Their rows are not served. Recompute just those chunks with the build's command plus "
        f"`--resume --repair` (e.g. dr-build reinforce SOURCE --teacher ... --out {url} --resume --repair)"
    )
