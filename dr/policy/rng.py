"""Keyed, counter-based random numbers: one independent stream per view, drawn vectorised.

Every stored or fresh view owns a 64-bit key -- a SplitMix64 hash of integers such as
``(seed, image, view)`` or ``(seed, epoch, index, tag)`` -- and its j-th random number is
``splitmix64(key ^ splitmix64(j))``. A :class:`KeyedRNG` over ``n`` keys answers each draw
for all ``n`` views in one numpy call, and a view's numbers depend only on its key and on the
order of draws (fixed by the policy), never on which other views share the call. So a unit of
1,024 images x 50 views samples each op once, and the store is the same for any worker count,
chunk order or batch composition.
"""

from __future__ import annotations

import math

import numpy as np

from dr.errors import PolicyError

__all__ = ["SAMPLER_VERSION", "splitmix64", "splitmix64_int", "view_keys", "KeyedRNG"]

SAMPLER_VERSION = 1
"""The keyed sampler's version: bump it with any change to the streams, their draws or an op's
sampling, so that a store with derived parameters (which keeps only their digests) is refused by
a reader whose sampler would derive other parameters. Version 1: the streams of schema 2-4."""

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic): a fast, good integer hash."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return x ^ (x >> np.uint64(31))


_MASK = 0xFFFFFFFFFFFFFFFF
_SEED = 0x243F6A8885A308D3


def splitmix64_int(x: int) -> int:
    """:func:`splitmix64` on one Python int (the per-item path: no numpy call overhead)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


_START = splitmix64_int(_SEED)


def view_keys(*parts: int | np.ndarray) -> np.ndarray:
    """Hash integers (scalars or broadcastable arrays) into one uint64 key per element."""
    if all(np.ndim(p) == 0 or np.size(p) == 1 for p in parts):  # one key: plain ints, same result
        one = _START
        for p in parts:
            one = splitmix64_int(one ^ (int(np.asarray(p).reshape(-1)[0]) & _MASK))
        return np.asarray([one], dtype=np.uint64)
    arrays = np.broadcast_arrays(*[np.asarray(p, dtype=np.int64) for p in parts])
    keys = np.full(arrays[0].shape, _START, dtype=np.uint64)
    for a in arrays:
        keys = splitmix64(keys ^ a.astype(np.uint64))
    return keys.reshape(-1)


class KeyedRNG:
    """Draws for ``n`` independent keyed streams at once (rows = streams).

    The methods mirror ``numpy.random.Generator``'s, with ``size`` whose first dimension is
    ``n``: ``random``, ``uniform``, ``integers`` (bounds may be per-row arrays) and ``beta``.
    """

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
        self.counter = 0

    @property
    def n(self) -> int:
        return len(self.keys)

    def _shape(self, size: int | tuple[int, ...] | None) -> tuple[int, ...]:
        shape = (self.n,) if size is None else ((size,) if isinstance(size, int) else tuple(size))
        if not shape or shape[0] != self.n:
            raise PolicyError(f"KeyedRNG over {self.n} streams cannot draw size={size}")
        return shape

    def random(self, size: int | tuple[int, ...] | None = None) -> np.ndarray:
        """Uniform floats in [0, 1) with 53 random bits."""
        shape = self._shape(size)
        per = int(np.prod(shape[1:], dtype=np.int64))
        j = splitmix64(np.arange(self.counter, self.counter + per, dtype=np.uint64))
        self.counter += per
        bits = splitmix64(self.keys[:, None] ^ j[None, :])
        return ((bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)).reshape(shape)

    def uniform(self, low: float | np.ndarray, high: float | np.ndarray, size: int | tuple[int, ...] | None = None) -> np.ndarray:
        u = self.random(size)
        return low + (np.asarray(high) - low) * u

    def integers(self, low: int | np.ndarray, high: int | np.ndarray, size: int | tuple[int, ...] | None = None) -> np.ndarray:
        """Integers in ``[low, high)`` (per-row bounds broadcast against ``size``)."""
        u = self.random(size)
        lo, hi = np.asarray(low, dtype=np.int64), np.asarray(high, dtype=np.int64)
        if lo.ndim == 1 and u.ndim > 1:
            lo, hi = lo.reshape(-1, *([1] * (u.ndim - 1))), hi.reshape(-1, *([1] * (u.ndim - 1)))
        return lo + np.minimum(np.floor(u * (hi - lo)).astype(np.int64), np.maximum(hi - lo - 1, 0))

    def _gamma(self, shape: float, size: tuple[int, ...]) -> np.ndarray:
        """Gamma(shape, 1) by Marsaglia-Tsang with a fixed 8 proposals (fixed draw count)."""
        boost = shape < 1.0
        a = shape + 1.0 if boost else shape
        d = a - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)
        tries = size + (8,)
        u1, u2, u3 = self.random(tries), self.random(tries), self.random(tries)
        z = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * math.pi * u2)
        v = (1.0 + c * z) ** 3
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = (v > 0) & (np.log1p(-u3) < 0.5 * z * z + d - d * v + d * np.log(np.where(v > 0, v, 1.0)))
        first = ok.argmax(axis=-1)
        pick = np.take_along_axis(v, first[..., None], axis=-1)[..., 0]
        g = np.where(ok.any(axis=-1), d * pick, d)
        if boost:
            g = g * self.random(size) ** (1.0 / shape)
        return g

    def beta(self, a: float, b: float, size: int | tuple[int, ...] | None = None) -> np.ndarray:
        """Beta(a, b); Beta(1, 1) is the uniform distribution exactly."""
        shape = self._shape(size)
        if a == 1.0 and b == 1.0:
            return self.random(shape)
        x, y = self._gamma(a, shape), self._gamma(b, shape)
        return x / (x + y)
