"""The reinforcement build: configuration, work units, teacher workers on Ray, the driver.

Modules: ``config`` (:class:`BuildConfig`, the settings declared once), ``units`` (chunks as
work units), ``worker`` (the teacher actor), ``ray_runtime`` (connect, size the workers, Ray's
errors), ``pool`` (start, back-off, replace, diagnose workers), ``driver`` (:func:`reinforce`:
plan -> run -> finalise; the driver is the store's one writer), ``guard`` (the agreement guard),
``extend`` (``--extend``), ``progress``, ``teacher_eval`` (teachers vs the dataset before a
build) and ``dryrun``. Auditing a store (``verify``, ``info``, ``show``) is :mod:`dr.audit`,
which this package never imports.

The package's names load on first use, so ``from dr.builder.config import BuildConfig`` does not
import torch or Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "EXAMPLE_CONFIG",
    "BuildConfig",
    "load_config_file",
    "BuildResult",
    "Unit",
    "UnitWorker",
    "make_header",
    "plan_units",
    "reinforce",
]

_LAZY = {
    "EXAMPLE_CONFIG": "dr.builder.config",
    "BuildConfig": "dr.builder.config",
    "load_config_file": "dr.builder.config",
    "BuildResult": "dr.builder.driver",
    "make_header": "dr.builder.driver",
    "reinforce": "dr.builder.driver",
    "Unit": "dr.builder.units",
    "plan_units": "dr.builder.units",
    "UnitWorker": "dr.builder.worker",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dr.builder' has no attribute {name!r}")
