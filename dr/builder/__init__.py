"""The reinforcement build: configuration, work units, teacher workers on Ray, the job.

Modules: ``config`` (:class:`BuildConfig`), ``units`` (chunks as work units), ``worker``
(the teacher actor), ``ray_runtime`` (connect, size the workers, Ray's errors), ``pool`` (start,
back-off, replace, diagnose workers), ``job`` (:func:`reinforce`: plan -> run -> finalise),
``progress``, ``teacher_probe`` (teachers vs the dataset before a build), ``agreement`` (the
guard's rule, shared with ``verify``), ``dryrun``, ``summary`` (``info``) and ``verify``.
"""

from dr.builder.config import EXAMPLE_CONFIG, BuildConfig, load_config_file
from dr.builder.job import BuildResult, make_header, reinforce
from dr.builder.units import Unit, plan_units
from dr.builder.worker import UnitWorker

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
