"""The reinforcement build: configuration, planning, teacher workers, the Ray driver."""

from dr.build.config import EXAMPLE_CONFIG, BuildConfig, load_config_file
from dr.build.pipeline import BuildResult, make_header, reinforce
from dr.build.plan import Unit, plan_units
from dr.build.worker import UnitWorker

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
