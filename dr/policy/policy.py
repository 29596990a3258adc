"""A policy: one crop op followed by view ops, with seeded sampling and batched replay."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from dr.errors import PolicyError
from dr.policy import kernels
from dr.policy.mix import Mix
from dr.policy.ops import CropOp, ParamField, ViewOp, op_from_dict
from dr.policy.rng import KeyedRNG, view_keys

__all__ = ["Policy", "stored_rng", "fresh_rng", "TAG_STORED", "TAG_FRESH", "TAG_ORIGINAL"]


# stream tags: stored views, fresh views (plain / online-KD baselines), original samples
TAG_STORED, TAG_FRESH, TAG_ORIGINAL = 0, 1, 2


def stored_rng(seed: int, index: np.ndarray, view: np.ndarray) -> KeyedRNG:
    """The streams of stored views: one per ``(seed, image index, view)``."""
    return KeyedRNG(view_keys(seed, index, view, TAG_STORED))


def fresh_rng(seed: int, epoch: int, index: np.ndarray, tag: int = TAG_FRESH) -> KeyedRNG:
    """The streams of freshly sampled views: one per ``(seed, epoch, index, tag)``."""
    return KeyedRNG(view_keys(seed, epoch, index, tag))


_NARROW_INTS = (np.int8, np.uint8, np.int16, np.uint16, np.uint32)


def _host(value: torch.Tensor | np.ndarray) -> np.ndarray:
    """Parameters on the host (numpy); narrow integer fields widened to int64."""
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.dtype.type in _NARROW_INTS:
        arr = arr.astype(np.int64)
    return arr


PARTNER = "partner_"


@dataclass(frozen=True)
class Policy:
    """An augmentation policy: ``crop`` then ``ops``, optionally ``mix`` with a partner view;
    producing ``output_size`` square views.

    Sampling draws each view from its own keyed stream (``(seed, image, view)`` for stored
    views; see :mod:`dr.policy.rng`), vectorised over all views of a unit, so any worker
    computes the same parameters for an image. Replay is batched over views with per-view
    parameters; a mixed view's partner goes through the same chain with its own stored
    parameters (fields prefixed ``partner_``).
    """

    name: str
    output_size: int
    crop: CropOp
    ops: tuple[ViewOp, ...] = ()
    mix: Mix | None = None

    def __post_init__(self) -> None:
        if not (1 <= self.output_size <= 8192):
            raise PolicyError(f"output_size must be in [1, 8192], got {self.output_size}")
        names = [f.name for f in self.fields()]
        if len(names) != len(set(names)):
            raise PolicyError(f"policy {self.name!r} has duplicate parameter fields: {names}")

    def chain_fields(self) -> tuple[ParamField, ...]:
        out: list[ParamField] = list(self.crop.fields())
        for op in self.ops:
            out.extend(op.fields())
        return tuple(out)

    def fields(self) -> tuple[ParamField, ...]:
        """Every stored parameter field, in order."""
        chain = self.chain_fields()
        if self.mix is None:
            return chain
        partner = tuple(replace(f, name=PARTNER + f.name, doc=f"partner view: {f.doc}") for f in chain)
        return chain + self.mix.fields() + partner

    def size_problem(self, height: int, width: int) -> str | None:
        """Why this policy cannot view a ``height x width`` image (``None``: it can)."""
        return self.crop.size_problem(int(height), int(width), self.output_size)

    def _sample_chain(self, rng: KeyedRNG, n: int, height: np.ndarray, width: np.ndarray) -> dict[str, np.ndarray]:
        out = dict(self.crop.sample(rng, n, height, width, self.output_size))
        for op in self.ops:
            out.update(op.sample(rng, n, self.output_size))
        return out

    def sample_views(
        self,
        rng: KeyedRNG,
        height: np.ndarray,
        width: np.ndarray,
        *,
        own: np.ndarray | None = None,
        pool: np.ndarray | None = None,
        pool_sizes: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Parameters of ``rng.n`` views, one per stream, vectorised: every op samples all
        views in one numpy call. View ``i`` comes from a ``height[i] x width[i]`` image.

        With mixing, each view's partner is drawn from ``pool`` (image indices, with their
        ``pool_sizes [P,2]``) excluding the view's own position ``own[i]`` in the pool.

        Returns a dict ``field name -> array [n, *field.shape]`` with the field's dtype.
        """
        n = rng.n
        out = self._sample_chain(rng, n, np.asarray(height), np.asarray(width))
        if self.mix is None:
            return out
        if pool is None or pool_sizes is None or own is None:
            raise PolicyError(f"policy {self.name!r} mixes views: pass own=, pool= and pool_sizes=")
        pool, pool_sizes = np.asarray(pool, dtype=np.int64), np.asarray(pool_sizes, dtype=np.int64).reshape(-1, 2)
        out.update(self.mix.sample(rng, n, self.output_size))
        pos = self.mix.draw_partners(rng, np.asarray(own), len(pool))
        mixed = out["mix_kind"] != 0
        out["mix_partner"] = np.where(mixed, pool[pos], 0).astype(np.uint32)
        partner = self._sample_chain(rng, n, pool_sizes[pos, 0], pool_sizes[pos, 1])
        for name, arr in partner.items():
            out[PARTNER + name] = arr * mixed.reshape(-1, *([1] * (arr.ndim - 1))).astype(arr.dtype)
        return out

    def sample(
        self,
        seed: int,
        index: int,
        height: int,
        width: int,
        views: int,
        *,
        pool: np.ndarray | None = None,
        pool_sizes: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """The ``views`` stored views of image ``index`` (``height x width``): a convenience
        over :meth:`sample_unit` for one image (``pool`` defaults to the image alone)."""
        if pool is None:
            pool, pool_sizes = np.asarray([index]), np.asarray([[height, width]])
        pool = np.asarray(pool, dtype=np.int64)
        own = np.flatnonzero(pool == index)
        rng = stored_rng(seed, np.full(views, index), np.arange(views))
        return self.sample_views(
            rng,
            np.full(views, height),
            np.full(views, width),
            own=np.full(views, own[0] if len(own) else -1),
            pool=pool,
            pool_sizes=pool_sizes,
        )

    def sample_unit(self, seed: int, start: int, sizes: np.ndarray, views: int) -> dict[str, np.ndarray]:
        """Every stored view of images ``[start, start + len(sizes))`` (a store chunk, also the
        mixing pool) in one vectorised call; arrays ``[n, views, *shape]``."""
        sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        n = len(sizes)
        pos = np.repeat(np.arange(n), views)
        rng = stored_rng(seed, start + pos, np.tile(np.arange(views), n))
        flat = self.sample_views(rng, sizes[pos, 0], sizes[pos, 1], own=pos, pool=np.arange(start, start + n), pool_sizes=sizes)
        return {k: a.reshape(n, views, *a.shape[1:]) for k, a in flat.items()}

    def chunk_params(
        self, seed: int, first: int, sizes: np.ndarray, skipped: np.ndarray, views: int, *, zero_skipped: bool = True
    ) -> dict[str, np.ndarray]:
        """The parameters a build stores for a store chunk (the build's worker and the readers of a
        store with derived parameters both call this): :meth:`sample_unit` with the chunk as the
        mixing pool, a skipped image sampled as an ``output_size`` square, a view whose mixing
        partner was skipped left unmixed, and the rows of skipped images zero.

        Args:
            seed: the build's seed.
            first: the global index of the chunk's first image.
            sizes: ``[n, 2]`` the images' (height, width) (a skipped image's are not used).
            skipped: ``[n]`` which images the build skipped.
            views: V.
            zero_skipped: zero the skipped images' rows (the worker zeroes them after its replay,
                which needs valid boxes).
        """
        bad = np.asarray(skipped, dtype=bool).reshape(-1)
        sizes = np.array(sizes, dtype=np.int64).reshape(-1, 2)
        sizes[bad] = self.output_size
        params = self.sample_unit(seed, first, sizes, views)
        if "mix_kind" in params and bad.any():  # a view whose partner was skipped is not mixed
            n = len(bad)
            hit = bad[np.clip(params["mix_partner"].astype(np.int64) - first, 0, n - 1)] & (params["mix_kind"] > 0)
            for name in params:
                if name.startswith(("mix_", PARTNER)):
                    params[name][hit] = 1 if name == "mix_lambda" else 0
        if zero_skipped:
            for arr in params.values():
                arr[bad] = 0
        return params

    def _chain(self, bank: kernels.ImageBank, params: Mapping[str, np.ndarray], idx: np.ndarray, size: int) -> torch.Tensor:
        views = self.crop.apply(bank, params, idx, size)
        for op in self.ops:
            views = op.apply(views, params)
        return views

    def replay(
        self,
        images: kernels.ImageBank | torch.Tensor | Sequence[torch.Tensor],
        params: Mapping[str, torch.Tensor | np.ndarray],
        image_index: torch.Tensor | np.ndarray | None = None,
        *,
        partner_index: torch.Tensor | np.ndarray | None = None,
        output_size: int | None = None,
        method: str | None = None,
    ) -> torch.Tensor:
        """Re-create views from source images and their stored parameters, batched.

        Base views and the partners of mixed views go through the chain together (one pass of
        ``B + M`` views), then are mixed; every kernel issues the same tensor operations for
        any batch (see :mod:`dr.policy.kernels`).

        Args:
            images: an :class:`~dr.policy.kernels.ImageBank`, a ``[N,3,H,W]`` uint8 tensor or a
                list of ``[3,H,W]`` uint8 tensors, on the device to compute on; includes the
                partner images of mixed views.
            params: field name -> ``[B, *shape]`` per-view parameters (numpy or CPU tensors).
            image_index: ``[B]`` position in ``images`` of each view's image (default: ``i``).
            partner_index: ``[B]`` position in ``images`` of each view's partner (mixing only;
                needed when any ``mix_kind`` is non-zero).
            output_size: replay at another resolution (crop boxes are in source pixels; boxes in
                output pixels are rescaled).
            method: crop/resize implementation (see :func:`dr.policy.kernels.crop_resize`).

        Returns:
            ``[B,3,S,S]`` uint8 views on the images' device.
        """
        with kernels.replay_method(method):
            return self._replay(kernels.ImageBank.of(images), params, image_index, partner_index, output_size)

    def _replay(
        self,
        bank: kernels.ImageBank,
        params: Mapping[str, torch.Tensor | np.ndarray],
        image_index: torch.Tensor | np.ndarray | None,
        partner_index: torch.Tensor | np.ndarray | None,
        output_size: int | None,
    ) -> torch.Tensor:
        host = {k: _host(v) for k, v in params.items()}
        n = len(next(iter(host.values())))
        idx = np.arange(n) if image_index is None else _host(image_index).astype(np.int64).reshape(-1)
        size = output_size or self.output_size
        if size != self.output_size:
            for f in self.fields():
                if f.output_pixels and f.name in host:
                    host[f.name] = np.rint(host[f.name].astype(np.float64) * size / self.output_size).astype(np.int64)
        if self.mix is None:
            return self._chain(bank, host, idx, size)
        mixed = np.flatnonzero(host["mix_kind"] != 0)
        if mixed.size and partner_index is None:
            raise PolicyError("mixed views need partner_index= (the position of each view's partner image)")
        pidx = _host(partner_index).astype(np.int64).reshape(-1)[mixed] if partner_index is not None else mixed
        chain = {f.name: np.concatenate([host[f.name], host[PARTNER + f.name][mixed]]) for f in self.chain_fields()}
        views = self._chain(bank, chain, np.concatenate([idx, pidx]), size)
        return self.mix.combine(views[:n], views[n:], mixed, host)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "output_size": self.output_size,
            "crop": self.crop.to_dict(),
            "ops": [op.to_dict() for op in self.ops],
            "mix": self.mix.to_dict() if self.mix is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Policy:
        try:
            crop = op_from_dict(d["crop"])
            ops = tuple(op_from_dict(o) for o in d.get("ops", []))
            mix = op_from_dict(d["mix"]) if d.get("mix") else None
            if not isinstance(crop, CropOp) or not all(isinstance(o, ViewOp) for o in ops) or not (mix is None or isinstance(mix, Mix)):
                raise PolicyError("policy must be one crop op, then view ops, then an optional mix")
            return cls(name=str(d["name"]), output_size=int(d["output_size"]), crop=crop, ops=ops, mix=mix)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PolicyError(f"malformed policy description {dict(d)!r}: {e}") from e
