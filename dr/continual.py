"""Continual training on a store that grows: rehearse old segments while learning the new one.

After ``dr-build reinforce NEW --extend STORE`` a model trained on the old segments continues
from its checkpoint instead of starting over (TiC-CLIP's recipe: warm start + rehearsal of old
data). :class:`dr.samplers.RehearsalSampler` gives each epoch a fixed share of items from the
new segments and the rest from the old ones, every item of a pool once per pass over that pool::

    ds = ReinforcedDataset("store.zarr")                      # every segment
    sampler = RehearsalSampler(ds, new_fraction=0.5)          # the last segment is new
    loader = DataLoader(ds, batch_size=256, sampler=sampler)
    for epoch in range(epochs):
        ds.set_epoch(epoch); sampler.set_epoch(epoch)
        ...

It yields dataset item positions, so it drives :class:`dr.ReinforcedDataset` (as a
``DataLoader`` sampler) and :class:`dr.replay.DeviceReplay` (``replay.batch(items, epoch)``)
alike. ("Replay" in dr means re-creating a stored view from its parameters; going back over old
data is *rehearsal*.)

``ReplayMixSampler``, this sampler's name in dr 0.2, still works for this release and warns.
"""

from __future__ import annotations

import warnings
from typing import Any

from dr.samplers import MAX_DRAWS_PER_ITEM, RehearsalSampler

__all__ = ["MAX_DRAWS_PER_ITEM", "RehearsalSampler", "ReplayMixSampler"]


class ReplayMixSampler(RehearsalSampler):
    """Deprecated: :class:`dr.samplers.RehearsalSampler`'s name in dr 0.2 (removed in 0.4).

    Args:
        *args: :class:`~dr.samplers.RehearsalSampler`'s arguments.
        **kwargs: :class:`~dr.samplers.RehearsalSampler`'s keyword arguments.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn(
            "dr.continual.ReplayMixSampler is renamed dr.samplers.RehearsalSampler (also dr.RehearsalSampler); the old name goes in dr 0.4",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)
