"""Work units: one store chunk each (a contiguous range of image indices)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Unit", "plan_units"]


@dataclass(frozen=True)
class Unit:
    """Chunk ``index`` covers images ``[start, stop)``."""

    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def plan_units(count: int, chunk_size: int, done: np.ndarray | None = None) -> list[Unit]:
    """Units for the chunks of ``count`` images not yet marked in ``done``."""
    n_chunks = -(-count // chunk_size)
    units = [Unit(i, i * chunk_size, min((i + 1) * chunk_size, count)) for i in range(n_chunks)]
    if done is not None:
        units = [u for u in units if not done[u.index]]
    return units
