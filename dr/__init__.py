"""dr -- dataset reinforcement: build reinforced datasets once, train on them cheaply.

Importing ``dr`` is light: it imports neither Ray, nor torch, nor the build machinery;
``dr.ReinforcedDataset`` is loaded on first use.
"""

from typing import Any

__version__ = "0.3.0"
"""The release of dr; stores record it as ``tool_version``."""

__all__ = [
    "__version__",
    "ReinforcedDataset",
    "ChunkAwareSampler",
    "DeviceReplay",
    "MultiScaleBatchSampler",
    "RehearsalSampler",
    "ReplayMixSampler",
]

_LAZY = {
    "ReinforcedDataset": "dr.dataset",
    "ChunkAwareSampler": "dr.samplers",
    "DeviceReplay": "dr.replay",
    "MultiScaleBatchSampler": "dr.multiscale",
    "RehearsalSampler": "dr.samplers",
    "ReplayMixSampler": "dr.continual",  # deprecated: RehearsalSampler
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dr' has no attribute {name!r}")
