"""The teacher worker: decode a unit's images once, sample and replay its views, label them.

A plain class, so it runs in-process (tests, debugging) or as a Ray actor (builds). Results
are a few small numpy arrays per unit; images never leave the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from dr.policy import Policy
from dr.sources import Source

__all__ = ["SourceRef", "UnitWorker", "resolve_device"]

log = logging.getLogger(__name__)


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
        views, topk, seed: the build's V, k and seed.
        forward_group: images per teacher forward batch; units start at multiples of it, so
            batches are the same whatever the unit size or worker count (determinism).
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: torch intra-op threads (0: leave torch's default).
        decode_threads: threads decoding images.
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
    ) -> None:
        from teachers import Ensemble

        if threads:
            torch.set_num_threads(threads)
        self.source: Source = source.get() if isinstance(source, SourceRef) else source
        self.policy = Policy.from_dict(policy)
        self.device = resolve_device(device)
        self.ensemble = Ensemble.from_specs(list(teachers), temperature).to(self.device)
        self.views, self.topk, self.seed, self.group = views, topk, seed, forward_group
        self.pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="dr-decode")

    def ping(self) -> str:
        import socket

        return f"{socket.gethostname()}:{self.device}"

    def compute(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``[start, stop)``: ``params/<field>``, ``targets/ids``, ``targets/probs``,
        ``source/sizes``, ``source/digests`` -- ready for :meth:`storage.StoreWriter.write_chunk`."""
        from teachers import topk

        decoded = list(self.pool.map(self.source.read, range(start, stop)))
        n, v = stop - start, self.views
        sizes = np.asarray([img.shape[:2] for img, _ in decoded], dtype=np.uint32)
        digests = np.frombuffer(b"".join(d for _, d in decoded), dtype=np.uint8).reshape(n, -1)
        per_image = []
        for i, (h, w) in enumerate(sizes):
            # mixing partners come from this unit (the store chunk): no image is decoded twice
            partners = self.policy.partners(self.seed, start + i, v, (start, stop))
            partner_sizes = None if partners is None else sizes[partners - start]
            per_image.append(self.policy.sample(self.seed, start + i, int(h), int(w), v, partners=partners, partner_sizes=partner_sizes))
        params = {name: np.stack([p[name] for p in per_image]) for name in per_image[0]}
        images = [torch.from_numpy(img).permute(2, 0, 1).to(self.device, non_blocking=True) for img, _ in decoded]
        ids = np.empty((n, v, self.topk), dtype=np.int64)
        probs = np.empty((n, v, self.topk), dtype=np.float32)
        with torch.inference_mode():
            for g0 in range(0, n, self.group):
                g1 = min(g0 + self.group, n)
                flat = {k: a[g0:g1].reshape(-1, *a.shape[2:]) for k, a in params.items()}
                index = np.repeat(np.arange(g0, g1), v)
                partner_index = flat["mix_partner"].astype(np.int64) - start if "mix_partner" in flat else None
                views = self.policy.replay(images, flat, index, partner_index=partner_index)
                p = self.ensemble(views)
                top_ids, top_p = topk(p, self.topk)
                ids[g0:g1] = top_ids.cpu().numpy().reshape(g1 - g0, v, -1)
                probs[g0:g1] = top_p.cpu().numpy().reshape(g1 - g0, v, -1)
        out = {f"params/{k}": a for k, a in params.items()}
        out.update({"targets/ids": ids, "targets/probs": probs.astype(np.float16), "source/sizes": sizes, "source/digests": digests})
        return out
