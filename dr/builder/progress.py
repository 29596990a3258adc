"""A build's progress: a tqdm bar (views/s, ETA) on a terminal, whole lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["PROGRESS_LINE_EVERY_S", "BuildProgress", "ProgressLines", "is_tty"]

#: Seconds between two plain progress lines (the first and the last chunk always get one).
PROGRESS_LINE_EVERY_S = 10.0


def is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressLines:
    """Progress as whole lines on stderr for logs without a terminal (``ray job logs``, CI,
    ``> build.log``): tqdm's bar redraws one line with carriage returns there."""

    def __init__(self, chunks: int, views: int) -> None:
        self.chunks, self.views = chunks, views
        self.t0 = self.last = time.monotonic()

    def update(self, chunks_done: int, views_done: int) -> None:
        now = time.monotonic()
        if chunks_done not in (1, self.chunks) and now - self.last < PROGRESS_LINE_EVERY_S:
            return
        self.last = now
        rate = views_done / max(now - self.t0, 1e-9)
        eta = (self.views - views_done) / rate if rate > 0 else 0.0
        print(
            f"progress: {chunks_done}/{self.chunks} chunks, {views_done:,}/{self.views:,} views "
            f"({100 * views_done / max(self.views, 1):.0f}%), {rate:,.0f} views/s, ETA {eta:.0f}s",
            file=sys.stderr,
            flush=True,
        )


class BuildProgress:
    """The bar or the lines for ``chunks`` units of ``views`` views in all (``enabled=False``:
    silent)."""

    def __init__(self, chunks: int, views: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        lines = enabled and not is_tty(sys.stderr)  # a job log, a file, a pipe: plain lines, not \r bars
        self.bar = tqdm(
            total=views,
            unit="view",
            unit_scale=True,
            desc=f"reinforce {chunks} chunks",
            disable=not enabled or lines,
            dynamic_ncols=True,
            smoothing=0.1,
        )
        self.lines = ProgressLines(chunks, views) if lines else None

    def update(self, chunks_done: int, views_done: int, added: int) -> None:
        self.bar.update(added)
        if self.lines is not None:
            self.lines.update(chunks_done, views_done)

    def close(self) -> None:
        self.bar.close()
