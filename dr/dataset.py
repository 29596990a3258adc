"""``ReinforcedDataset``: the drop-in torch Dataset that replays stored views with soft labels.

Every epoch each image yields one of its V stored views, chosen by a seeded permutation per
image and *cycle* of V epochs, so each view is used exactly once per V epochs. The view is
re-created from the original image with the same kernels the build used, and comes with the
teachers' top-k soft label.

The store, its source, the checks and the metadata are :class:`dr.views.StoredViews`'s (the core
``DeviceReplay`` shares); this module adds what a map-style Dataset does per item: decode,
replay, transform, and the optional fresh original views (``p_original``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from dr.errors import ConfigError
from dr.loss import densify
from dr.orders import view_choice
from dr.policy import TAG_ORIGINAL, fresh_rng
from dr.policy.rng import KeyedRNG, view_keys
from dr.samplers import ChunkAwareSampler
from dr.urls import Location
from dr.views import StoredViews, served_topk

__all__ = ["ReinforcedDataset", "ChunkAwareSampler", "served_topk", "to_float", "view_choice"]

log = logging.getLogger(__name__)

_TAG_COIN = 3  # the stream of the p_original coin


def to_float(view: torch.Tensor) -> torch.Tensor:
    """uint8 ``[3,H,W]`` -> float32 in ``[0, 1]`` (what ``ToTensor`` gives)."""
    return view.to(torch.float32).div_(255)


class ReinforcedDataset(StoredViews, Dataset):
    """A map-style Dataset over a reinforced store and its source images.

    Args:
        store: path, fsspec URL or :class:`~dr.urls.Location` of a complete store.
        source: the dataset the store was built from (a path or a dataset object); default:
            the location recorded in the store.
        output_size: replay at this size (default: the build's); boxes are in source pixels.
        transform: applied to the replayed uint8 ``[3,S,S]`` view (default :func:`to_float`).
        p_original: probability of returning a freshly sampled view of the original image with
            a one-hot target instead of a stored view (ml-dr trains with ``1 - 0.99``).
        original_transform: used instead of a fresh policy sample when ``p_original`` fires;
            gets the decoded uint8 ``[3,H,W]`` image and must return what ``transform`` does.
        dense: ``False`` -> sparse ``(ids [k] int64, probs [k] float32)`` targets; ``"smooth"``
            or ``True`` -> ``[C]`` with the missing mass spread over other classes; ``"zeros"``
            -> ``[C]`` with zeros outside the top-k.
        seed: seeds the view choice and ``p_original`` draws (not the stored views).
        memory_budget: bytes of metadata (parameters and targets) to hold in memory -- in shared
            memory, one copy for every DataLoader worker; above it, read by chunk through a
            per-process cache of ``cache_chunks`` chunks: give the loader :meth:`sampler`.
        verify_source: ``"sample"`` (hash 32 seeded images), ``"all"`` or ``"none"``.
        storage_options: fsspec options for a remote store or source given by path or URL (a
            :class:`~dr.urls.Location` carries its own).
        cache_chunks: store chunks kept in memory when reading by chunk.
        topk: serve only the ``topk`` largest stored probabilities of each view (k' <= the
            store's k; default all). The mass left out is the loss's ``rest`` (spread over the
            other classes by :func:`dr.loss.soft_cross_entropy`'s default, or renormalised
            with ``rest="renormalize"``): a store built with a large k serves any smaller one.
        trust_store_location: open the source the store records even when it is a URL, a
            source spec or a path outside the store's folder (default: pass ``source=`` for
            those; see the store-safety guide).
        return_labels: items are ``(view, target, label)``: the image's dataset label (an
            ``int64`` scalar tensor) joins the soft target, for the loss's hard-label term
            (``soft_cross_entropy(logits, target, labels=label, hard_weight=w)``).
        segments: for a store extended with ``dr-build reinforce --extend``, the segments whose
            images this Dataset serves (default: every complete segment; ``source`` is then one
            entry per segment). Items keep the store's order; :attr:`segment_ids` gives each
            item's segment (what :class:`dr.samplers.RehearsalSampler` mixes by).

    Raises:
        ConfigError: ``topk`` outside ``[1, k]``.
        StoreMismatchError: the source is not the dataset the store was built from.
        StoreDamagedError: (when an item is read) its store chunk is missing, unreadable or
            altered; the message names the chunk and the repair (``--resume --repair``).
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | Location,
        source: Any = None,
        *,
        output_size: int | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
        p_original: float = 0.0,
        original_transform: Callable[[torch.Tensor], Any] | None = None,
        dense: bool | Literal["smooth", "zeros"] = False,
        seed: int = 0,
        memory_budget: int = 4 << 30,
        verify_source: Literal["sample", "all", "none"] = "sample",
        storage_options: Mapping[str, Any] | None = None,
        cache_chunks: int = 8,
        topk: int | None = None,
        segments: Sequence[int] | None = None,
        return_labels: bool = False,
        trust_store_location: bool = False,
    ) -> None:
        if isinstance(p_original, bool) or not isinstance(p_original, (int, float)) or not 0.0 <= p_original <= 1.0:
            raise ConfigError(f"p_original={p_original!r}: use a probability in [0, 1]")
        if dense not in (False, True, "smooth", "zeros"):
            raise ConfigError(f"dense={dense!r}: use False (sparse targets), 'smooth' (or True) or 'zeros'")
        super().__init__(
            store,
            source,
            seed=seed,
            topk=topk,
            segments=segments,
            verify_source=verify_source,
            storage_options=storage_options,
            memory_budget=memory_budget,
            cache_chunks=cache_chunks,
            output_size=output_size,
            trust_store_location=trust_store_location,
        )
        self.transform = transform or to_float
        self.p_original = float(p_original)
        self.original_transform = original_transform
        self.dense: Literal["smooth", "zeros"] | None = ("smooth" if dense is True else dense) or None
        self.return_labels = bool(return_labels)
        #: the dataset label of each source image (int64)
        self.labels = self.label_of

    def record(self, index: int, view: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Parameters (field -> ``[1, ...]``), top-k ids and probs of one stored view of source
        image ``index`` (rows of a damaged chunk are refused)."""
        params, ids, probs = self.records(np.asarray([index]), np.asarray([view]))
        return params, ids[0], probs[0]

    def image(self, index: int) -> torch.Tensor:
        """The decoded source image ``index`` (a *source* index), uint8 ``[3,H,W]``."""
        return torch.from_numpy(self.source.read(index)[0]).permute(2, 0, 1)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Any, ...]:
        """The view of ``item`` at this epoch, replayed at ``output_size`` -- or, for an
        ``(item, size)`` pair (what :class:`dr.multiscale.MultiScaleBatchSampler` yields), at
        ``size``: the same stored view and target at any size. ``(view, target)``, or
        ``(view, target, label)`` with ``return_labels``."""
        item, size = item if isinstance(item, tuple) else (item, self.output_size)
        if not 0 <= item < len(self):
            raise IndexError(f"index {item} out of range for {len(self)} images")
        index = int(self.indices[item])
        out = self._item(index, size)
        if self.return_labels:
            return (*out, torch.tensor(int(self.labels[index]), dtype=torch.int64))
        return out

    def _item(self, index: int, size: int) -> tuple[Any, Any]:
        epoch = self.epoch
        img = self.image(index)
        if self.p_original and KeyedRNG(view_keys(self.seed, epoch, index, _TAG_COIN)).random()[0] < self.p_original:
            self.guard.refuse_damaged(index)
            return self._original(index, epoch, img, size)
        params, ids, probs = self.records(np.asarray([index]), np.asarray([self.view_index(index, epoch)]))
        partner = self.partner_index(params)
        images, partner_index = [img], None
        if partner is not None and int(params["mix_kind"][0]):
            images.append(self.image(int(partner[0])))
            partner_index = np.ones(1, dtype=np.int64)
        bank = images[0][None] if len(images) == 1 else images  # one image: no padded stack to build
        view = self.policy.replay(bank, params, np.zeros(1, dtype=np.int64), partner_index=partner_index, output_size=size)[0]
        return self.transform(view), self._target(ids[0], probs[0])

    def _original(self, index: int, epoch: int, img: torch.Tensor, size: int) -> tuple[Any, Any]:
        label = int(self.labels[index])
        k = self.topk
        ids = np.array([label] + [c for c in range(k) if c != label][: k - 1], dtype=np.int64)
        probs = np.zeros(k, dtype=np.float32)
        probs[0] = 1.0
        if self.original_transform is not None:
            return self.original_transform(img), self._target(ids, probs)
        # a fresh view from the store's policy: its own keyed stream (seed, epoch, index, tag)
        h, w = int(img.shape[1]), int(img.shape[2])
        rng = fresh_rng(self.seed, epoch, np.asarray([index]), TAG_ORIGINAL)
        one = np.asarray([index])
        fresh = self.policy.sample_views(
            rng, np.asarray([h]), np.asarray([w]), own=np.zeros(1, np.int64), pool=one, pool_sizes=np.asarray([[h, w]])
        )
        if "mix_kind" in fresh:
            fresh["mix_kind"][:] = 0  # an original sample is never mixed
        view = self.policy.replay(img[None], fresh, output_size=size)[0]
        return self.transform(view), self._target(ids, probs)

    def _target(self, ids: np.ndarray, probs: np.ndarray) -> Any:
        t_ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        t_probs = torch.from_numpy(np.asarray(probs, dtype=np.float32))
        if self.dense is None:
            return t_ids, t_probs
        rest: Literal["smooth", "drop"] = "smooth" if self.dense == "smooth" else "drop"
        return densify((t_ids[None], t_probs[None]), self.num_classes, rest)[0]
