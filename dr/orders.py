"""Orders as pure functions: which stored view an image serves at an epoch, the chunk-aware
permutation of an epoch, a DDP rank's share, endless cycles of a pool.

Every function here is a function of its arguments alone (seeds, epochs, sizes) -- no state, no
randomness of its own -- so DataLoader workers, DDP ranks and restarted jobs compute the same
orders (as mosaicml-streaming keeps its shuffles). The samplers (:mod:`dr.samplers`) and the
readers (:mod:`dr.views`) are thin objects over them.
"""

from __future__ import annotations

import functools

import numpy as np

from dr.policy.rng import splitmix64, splitmix64_int, view_keys

__all__ = ["chunk_aware_order", "cycled", "ddp_share", "view_choice"]


def view_choice(seed: int, index: np.ndarray, epoch: int, views: int) -> np.ndarray:
    """The stored view each image in ``index`` uses at ``epoch``, vectorised: per image and
    *cycle* of ``views`` epochs a seeded permutation of its views (each view once per cycle),
    a pure function of ``(seed, index, cycle)``."""
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    cycle, pos = divmod(int(epoch), int(views))
    if len(index) == 1 and views <= 64:  # one item (a DataLoader worker's call): plain ints are faster
        key = int(view_keys(seed, index, cycle)[0])
        rank = [splitmix64_int(key ^ salt) for salt in _salts_int(int(views))]
        return np.asarray([sorted(range(views), key=rank.__getitem__)[pos]], dtype=np.int64)
    keys = view_keys(seed, index, cycle)
    order = splitmix64(keys[:, None] ^ _salts(int(views))[None, :])
    return np.argsort(order, axis=1, kind="stable")[:, pos].astype(np.int64)


@functools.lru_cache(maxsize=64)
def _salts(views: int) -> np.ndarray:
    return splitmix64(np.arange(views, dtype=np.uint64))


@functools.lru_cache(maxsize=64)
def _salts_int(views: int) -> tuple[int, ...]:
    return tuple(int(x) for x in _salts(views))


def chunk_aware_order(chunk_of_item: np.ndarray, window: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """An epoch's permutation of the items that reads the store chunk by chunk: the chunks in a
    seeded order, the items of each ``window`` consecutive chunks shuffled together, so a cache
    of ``window`` chunks per process serves every read.

    Args:
        chunk_of_item: the store chunk of each item (any integers; items of one chunk share it).
        window: chunks whose items are shuffled together.
        seed: the order's seed.
        epoch: the epoch (another epoch, another order).
        shuffle: ``False``: the items in order.

    Returns:
        A permutation of ``range(len(chunk_of_item))``.
    """
    chunk_of_item = np.asarray(chunk_of_item, dtype=np.int64)
    n = len(chunk_of_item)
    if not shuffle:
        return np.arange(n)
    rng = np.random.default_rng([int(seed), int(epoch)])
    chunks, first = np.unique(chunk_of_item, return_index=True)
    chunks = chunks[np.argsort(first)]  # the chunks in item order
    by_chunk = np.argsort(chunk_of_item, kind="stable")
    starts = np.searchsorted(chunk_of_item[by_chunk], chunks)
    stops = np.searchsorted(chunk_of_item[by_chunk], chunks, side="right")
    visit = rng.permutation(len(chunks))
    out = []
    for w in range(0, len(chunks), max(1, int(window))):
        rows = np.concatenate([by_chunk[starts[c] : stops[c]] for c in visit[w : w + window]])
        out.append(rng.permutation(rows))
    return np.concatenate(out) if out else np.arange(0)


def ddp_share(order: np.ndarray, num_replicas: int, rank: int) -> np.ndarray:
    """A rank's share of an epoch's order, as ``DistributedSampler`` splits it: the order padded
    from its start to a multiple of ``num_replicas``, then every ``num_replicas``-th item."""
    order = np.asarray(order)
    per = -(-len(order) // num_replicas)
    padded = np.concatenate([order, order[: per * num_replicas - len(order)]])
    return padded[rank::num_replicas]


def cycled(pool: np.ndarray, per_epoch: int, epoch: int, seed: int, tag: int) -> np.ndarray:
    """Items ``[epoch * per_epoch, (epoch + 1) * per_epoch)`` of the endless sequence of seeded
    permutations of ``pool`` (one permutation per pass): every item of the pool once before any
    is used again, across epoch boundaries."""
    pool = np.asarray(pool)
    if per_epoch == 0 or len(pool) == 0:
        return pool[:0]
    start, stop = epoch * per_epoch, (epoch + 1) * per_epoch
    n = len(pool)
    parts = [
        np.random.default_rng([seed, tag, p]).permutation(pool)[max(start - p * n, 0) : min(stop - p * n, n)]
        for p in range(start // n, -(-stop // n))
    ]
    return np.concatenate(parts)
