"""The reinforcement build: configuration, planning, teacher workers, the Ray driver."""

from dr.build.config import BuildConfig
from dr.build.pipeline import BuildResult, make_header, reinforce
from dr.build.plan import Unit, plan_units
from dr.build.worker import UnitWorker

__all__ = ["BuildConfig", "BuildResult", "Unit", "UnitWorker", "make_header", "plan_units", "reinforce"]
