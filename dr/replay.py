"""Batched replay on the training device, for datasets whose images fit there.

``DeviceReplay`` decodes the source once into uint8 tensors on the device and produces a whole
training batch per call with the shared replay kernels -- the same views and targets as
:class:`dr.ReinforcedDataset` for the same (epoch, index) (tested), at the cost of a plain
augmented batch. The store, its checks and the metadata are :class:`dr.views.StoredViews`'s
(the core both readers share). ``fresh`` samples new parameters from the store's policy instead
(for plain baselines and online distillation), so that every condition uses the same loader.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from dr.errors import StoreError
from dr.policy import ImageBank, Policy, fresh_rng
from dr.sources import open_source
from dr.urls import Location
from dr.views import ChunkGuard, StoredViews

__all__ = ["DeviceReplay"]


class DeviceReplay(StoredViews):
    """Whole-batch replay of a store (or fresh views of its policy) on ``device``.

    Args:
        store: a complete store (path, fsspec URL or :class:`~dr.urls.Location`).
        source: its source (path or dataset; default: the recorded location).
        device: where images live and views are made.
        seed: seeds the view choice (same rule as ``ReinforcedDataset(seed=...)``).
        output_size: replay size (default: the build's).
        storage_options: fsspec options for a remote store or source given by path or URL (a
            :class:`~dr.urls.Location` carries its own).
        verify_source: ``"sample"`` (re-hash 32 seeded images), ``"all"`` or ``"none"``: the
            same source check as ``ReinforcedDataset`` (:func:`dr.views.refuse_other_source`).
        topk: serve the ``topk`` largest stored probabilities per view (k' <= k; the same rule
            as ``ReinforcedDataset(topk=)``).
        segments: for an extended store, the segments whose images are served (default: every
            complete segment; the same rule as ``ReinforcedDataset(segments=)``); only their
            images are decoded.
        memory_budget: bytes of metadata to hold in memory; above it, read by chunk (the same
            rule as ``ReinforcedDataset(memory_budget=)``: draw batches with :meth:`sampler`).
        trust_store_location: open the source the store records even when it is a URL, a
            source spec or a path outside the store's folder (the same rule as ``ReinforcedDataset``).

    Raises:
        ConfigError: ``topk`` outside ``[1, k]``.
        StoreMismatchError: the source is not the dataset the store was built from.
        StoreDamagedError: (from :meth:`batch`/:meth:`fresh`) an item's store chunk is damaged.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | Location,
        source: Any = None,
        *,
        device: str | torch.device = "cpu",
        seed: int = 0,
        output_size: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
        verify_source: Literal["sample", "all", "none"] = "sample",
        topk: int | None = None,
        segments: Sequence[int] | None = None,
        memory_budget: int = 4 << 30,
        trust_store_location: bool = False,
    ) -> None:
        super().__init__(
            store,
            source,
            seed=seed,
            topk=topk,
            segments=segments,
            verify_source=verify_source,
            storage_options=storage_options,
            memory_budget=memory_budget,
            output_size=output_size,
            trust_store_location=trust_store_location,
        )
        self.device = torch.device(device)
        #: the dataset label of each source image, int64 (index it with :meth:`labels_of`'s items)
        self.labels = torch.from_numpy(self.label_of)
        served = np.zeros(len(self.label_of), dtype=bool)
        served[self.indices] = True
        #: every served source image, decoded once, in the replay engine's layout on ``device``
        #: (the images of segments not served are 1-pixel placeholders, never replayed)
        blank = torch.zeros(3, 1, 1, dtype=torch.uint8)
        self.images = ImageBank(
            [torch.from_numpy(self.source.read(i)[0]).permute(2, 0, 1) if served[i] else blank for i in range(len(self.source))],
            device=self.device,
        )
        self.sizes = self.images.sizes

    @classmethod
    def fresh_only(
        cls,
        source: Any,
        policy: Policy,
        *,
        device: str | torch.device = "cpu",
        output_size: int | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> DeviceReplay:
        """A replay of ``source`` without a store: :meth:`fresh` views of ``policy`` with hard
        labels only (plain baselines that need no teachers); :meth:`batch` has nothing to replay.
        Same images and :meth:`fresh` streams as an instance over a store of ``source``, and
        the same index space when that store skipped no image (every image is an item here)."""
        src = open_source(source, storage_options)
        self = cls.__new__(cls)
        self.header = None  # type: ignore[assignment]  # no store: batch() refuses, fresh() needs none
        self.policy = policy
        self.device = torch.device(device)
        self.seed, self.views, self.topk = 0, 0, 0
        self.output_size = output_size or policy.output_size
        self.guard = ChunkGuard("(no store)", 1 << 62, [])
        self.label_of = np.asarray(src.labels(), dtype=np.int64)
        self.labels = torch.from_numpy(self.label_of)
        self.chunk_of = np.zeros(len(src), dtype=np.int64)
        self.in_memory = True
        self._epoch = torch.zeros(1, dtype=torch.int64)
        self.skipped = np.zeros(len(src), dtype=bool)
        self.indices = np.arange(len(src))
        self.segment_ids = np.zeros(len(src), dtype=np.int64)
        self.images = ImageBank([torch.from_numpy(src.read(i)[0]).permute(2, 0, 1) for i in range(len(src))], device=self.device)
        self.sizes = self.images.sizes
        self.num_classes = len(src.classes)
        return self

    def __len__(self) -> int:
        return len(self.indices)

    def labels_of(self, items: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The dataset labels ``[B]`` (int64, on ``device``) of dataset items ``items`` -- the
        positions :meth:`batch` takes, not source indices."""
        index = self.indices[np.asarray(items, dtype=np.int64)]
        return self.labels[torch.from_numpy(index)].to(self.device)

    def batch(
        self, items: np.ndarray | torch.Tensor, epoch: int | None = None, *, output_size: int | None = None, return_labels: bool = False
    ) -> tuple[Any, ...]:
        """Replayed uint8 views ``[B,3,S,S]`` and sparse targets ``(ids, probs)`` ``[B,k]`` for
        dataset items ``items`` (positions among the non-skipped images) at ``epoch`` (default:
        the one :meth:`set_epoch` chose); ``output_size`` replays this batch at another size
        (multi-scale training: the same views and targets at any size). With
        ``return_labels``: ``(views, target, labels)``, the labels as :meth:`labels_of` gives
        them (for the loss's hard-label term)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self.header is None:
            raise StoreError("this DeviceReplay has no store (DeviceReplay.fresh_only): use fresh(), or open one on a store")
        index = self.indices[np.asarray(items, dtype=np.int64)]
        params, ids_np, probs_np = self.records(index, self.view_ids(index, epoch))
        partner = self.partner_index(params)
        views = self.policy.replay(self.images, params, index, partner_index=partner, output_size=output_size or self.output_size)
        ids = torch.from_numpy(ids_np).to(self.device)
        probs = torch.from_numpy(probs_np).to(self.device)
        if return_labels:
            return views, (ids, probs), self.labels[torch.from_numpy(index)].to(self.device)
        return views, (ids, probs)

    def fresh(
        self,
        items: np.ndarray | torch.Tensor,
        epoch: int | None = None,
        *,
        policy: Policy | None = None,
        seed: int = 1,
        output_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Freshly sampled views (``policy``, default the store's) of ``items`` with their
        dense hard targets ``[B,C]`` -- mixed by the view's lambda when the policy mixes;
        ``output_size`` and ``epoch`` as in :meth:`batch`."""
        epoch = self.epoch if epoch is None else int(epoch)
        policy = policy or self.policy
        index = self.indices[np.asarray(items, dtype=np.int64)]
        self.guard.refuse_damaged(index)
        # one keyed stream per (seed, epoch, index): vectorised over the batch; mixing partners
        # come from the same batch (the in-batch equivalent of the store's chunk pool)
        rng = fresh_rng(seed, epoch, index)
        own = np.arange(len(index))
        params = policy.sample_views(rng, self.sizes[index, 0], self.sizes[index, 1], own=own, pool=index, pool_sizes=self.sizes[index])
        partner_index = params["mix_partner"].astype(np.int64) if policy.mix else None
        views = policy.replay(self.images, params, index, partner_index=partner_index, output_size=output_size or self.output_size)
        target = torch.nn.functional.one_hot(self.labels[index], self.num_classes).float()
        if policy.mix:
            lam = torch.from_numpy(params["mix_lambda"].astype(np.float32))[:, None]
            other = torch.nn.functional.one_hot(
                self.labels[torch.from_numpy(params["mix_partner"].astype(np.int64))], self.num_classes
            ).float()
            mixed = torch.from_numpy(params["mix_kind"] > 0)[:, None]
            target = torch.where(mixed, lam * target + (1 - lam) * other, target)
        return views, target.to(self.device)
