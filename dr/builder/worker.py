"""The teacher worker: decode a unit's images once, sample and replay its views, label them.

A plain class, so it runs in-process (tests, debugging) or as a Ray actor (builds). Results
are a few small numpy arrays per unit; images never leave the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dr.errors import BadImageError
from dr.policy import ImageBank, Policy
from dr.sources import Source
from dr.storage.layout import DIGESTS, IDS, PROBS, SIZES, SKIPPED, param_path

__all__ = ["SourceRef", "UnitResult", "UnitWorker", "resolve_device"]

log = logging.getLogger(__name__)


@dataclass
class UnitResult:
    """One unit's arrays (rows ``[start, stop)``) and the images skipped as unreadable."""

    arrays: dict[str, np.ndarray]
    skipped: dict[int, str] = field(default_factory=dict)


class SourceRef:
    """A source held in Ray's object store, fetched by the worker when it starts.

    Passed *inside* this wrapper (not as a top-level actor argument) so an actor restarted by
    Ray re-fetches it; the driver keeps the reference alive for the whole build.
    """

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def get(self) -> Source:
        import ray

        return ray.get(self.ref)  # type: ignore[no-any-return]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class UnitWorker:
    """Computes one work unit's parameters and top-k soft labels.

    Args:
        source: the dataset (the same object on every worker), or a :class:`SourceRef`.
        policy: the policy's ``to_dict()`` form.
        teachers: teacher spec strings.
        temperature: ensemble temperature.
        views: the build's V (views per image).
        topk: the build's k (soft-label entries kept per view).
        seed: the build's seed (of every view's random stream).
        forward_group: images per teacher forward batch; units start at multiples of it, so
            batches are the same whatever the unit size or worker count (determinism).
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: torch intra-op threads (0: leave torch's default).
        decode_threads: threads decoding images.
        on_bad_image: ``fail`` raises :class:`BadImageError` naming the file; ``skip`` marks the
            image skipped (zero rows, ``source/skipped`` = 1, reason recorded).
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPUs), ``bf16`` (on any device) or ``fp32``.
        compile: ``torch.compile`` the teachers.
        class_map: the header's ``ensemble.class_map`` (teacher ids -> dataset ids), or ``None``.
        allow_random_teachers: accept specs without weights, seeded with ``init_seeds``.
        init_seeds: each teacher's random-init seed (as recorded in the header).
        max_image_pixels: the decode limit in this worker (see
            :func:`dr.sources.set_max_image_pixels`).
        index_offset: the store's ``dataset.offset``: source image ``i`` is global image
            ``index_offset + i`` (its random streams and mixing partners use the global index).
        max_image_bytes: the read limit in this worker (see :func:`dr.sources.set_max_image_bytes`).
    """

    def __init__(
        self,
        source: Source | SourceRef,
        policy: Mapping[str, Any],
        teachers: Sequence[str],
        *,
        temperature: float,
        views: int,
        topk: int,
        seed: int,
        forward_group: int,
        device: str = "auto",
        threads: int = 0,
        decode_threads: int = 4,
        on_bad_image: str = "fail",
        precision: str = "auto",
        compile: bool = False,
        class_map: Mapping[str, Any] | None = None,
        allow_random_teachers: bool = False,
        init_seeds: Sequence[int] | None = None,
        max_image_pixels: int | None = None,
        index_offset: int = 0,
        max_image_bytes: int | None = None,
    ) -> None:
        from dr.sources import set_max_image_bytes, set_max_image_pixels
        from dr.teachers import Ensemble

        set_max_image_pixels(max_image_pixels)
        set_max_image_bytes(max_image_bytes)
        if threads:
            torch.set_num_threads(threads)
        self.source: Source = source.get() if isinstance(source, SourceRef) else source
        self.policy = Policy.from_dict(policy)
        self.device = resolve_device(device)
        from dr.teachers import ClassMap

        self.ensemble = Ensemble.from_specs(
            list(teachers),
            temperature,
            precision,
            allow_random=allow_random_teachers,
            init_seeds=init_seeds,
            class_map=ClassMap.from_dict(class_map),
        ).to(self.device)
        self.ensemble.optimize(channels_last=True, compile=compile)  # channels-last pays on CPUs too (1.6x)
        self.views, self.topk, self.seed, self.group = views, topk, seed, forward_group
        self.on_bad_image = on_bad_image
        self.offset = int(index_offset)
        self.pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="dr-decode")

    def ping(self) -> dict[str, Any]:
        import os
        import socket

        import ray

        try:
            node = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - not running under Ray
            node = "local"
        return {"host": socket.gethostname(), "pid": os.getpid(), "device": str(self.device), "node": node}

    def _read(self, index: int) -> tuple[np.ndarray, bytes] | BadImageError:
        try:
            return self.source.read(index)
        except BadImageError as e:
            return e

    def compute(self, start: int, stop: int) -> UnitResult:
        """Rows ``[start, stop)`` of every array the worker computes (the parameter fields and
        :data:`dr.storage.layout.WORKER_ARRAYS`, probabilities as float32) -- ready for
        :meth:`storage.StoreWriter.write_chunk` -- and the skipped images' reasons."""
        from dr.teachers import topk

        n, v, size = stop - start, self.views, self.policy.output_size
        skipped: dict[int, str] = {}
        decoded: list[tuple[np.ndarray, bytes]] = []
        placeholder = (np.zeros((size, size, 3), dtype=np.uint8), bytes(16))
        for i, got in enumerate(self.pool.map(self._read, range(start, stop))):
            if isinstance(got, BadImageError):
                self._bad(skipped, start + i, got.reason)
                decoded.append(placeholder)
            else:
                decoded.append(got)
        sizes = np.asarray([img.shape[:2] for img, _ in decoded], dtype=np.uint32)
        digests = np.frombuffer(b"".join(d for _, d in decoded), dtype=np.uint8).reshape(n, -1).copy()
        for i, (h, w) in enumerate(sizes.tolist()):  # per image, not per view: a size check
            problem = None if (start + i) in skipped else self.policy.size_problem(h, w)
            if problem is not None:
                self._bad(skipped, start + i, problem)
                decoded[i], sizes[i] = placeholder, (size, size)
        # every view of the unit sampled in one vectorised call; partners come from this unit
        # (the store chunk), so no image is decoded twice
        first = self.offset + start  # the global index of the unit's first image
        bad = np.zeros(n, dtype=bool)
        bad[[i - start for i in skipped]] = True
        params = self.policy.chunk_params(self.seed, first, sizes, bad, v, zero_skipped=False)  # zeroed below, after the replay
        bank = ImageBank([torch.from_numpy(img).permute(2, 0, 1) for img, _ in decoded], device=self.device)
        top_ids_parts, top_p_parts = [], []
        with torch.inference_mode():
            for g0 in range(0, n, self.group):
                g1 = min(g0 + self.group, n)
                flat = {k: a[g0:g1].reshape(-1, *a.shape[2:]) for k, a in params.items()}
                index = np.repeat(np.arange(g0, g1), v)
                partner_index = flat["mix_partner"].astype(np.int64) - first if "mix_partner" in flat else None
                views = self.policy.replay(bank, flat, index, partner_index=partner_index)
                top_ids, top_p = topk(self.ensemble(views), self.topk)
                top_ids_parts.append(top_ids)  # stay on the device: no sync until the unit ends
                top_p_parts.append(top_p)
        ids = torch.cat(top_ids_parts).cpu().numpy().reshape(n, v, -1)
        probs = torch.cat(top_p_parts).cpu().numpy().reshape(n, v, -1)  # float32: the writer encodes them as the store keeps them
        out = {param_path(k): a for k, a in params.items()}
        out.update({IDS: ids, PROBS: probs, SIZES: sizes, DIGESTS: digests})
        for arr in out.values():
            arr[bad] = 0
        out[SKIPPED] = bad.astype(np.uint8)
        return UnitResult(out, skipped)

    def _bad(self, skipped: dict[int, str], index: int, reason: str) -> None:
        where = self.source.describe(index)
        if self.on_bad_image == "fail":
            raise BadImageError(where, f"{reason} -- fix or remove the file, or rerun with --on-bad-image skip (and --resume)")
        log.warning("skipping image %s: %s", where, reason)
        skipped[index] = f"{where}: {reason}"
