"""One error hierarchy for the whole project.

Every error says what was wrong (the bad value) and how to fix it. Validation never uses
``assert``. ``storage`` and ``teachers`` raise these too, so callers catch one base class.
"""

from __future__ import annotations

__all__ = [
    "bounded_int",
    "DRError",
    "ConfigError",
    "SourceError",
    "BadImageError",
    "TeacherError",
    "PolicyError",
    "StoreError",
    "SchemaVersionError",
    "StoreIncompleteError",
    "StoreMismatchError",
    "StoreDamagedError",
    "HeaderSealError",
    "SamplerVersionError",
]


class DRError(Exception):
    """Base class of every error raised on purpose by ``dr``, ``teachers`` and ``storage``."""


class ConfigError(DRError, ValueError):
    """A build or CLI setting is invalid."""


class SourceError(DRError):
    """The input dataset cannot be read (wrong path, empty folder, bad layout)."""


class BadImageError(SourceError):
    """One image cannot be decoded; carries the path (or index) and the reason."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"cannot decode image {where}: {reason}")
        self.where = where
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # survives pickling (Ray task errors)
        return (type(self), (self.where, self.reason))


class TeacherError(DRError):
    """A teacher spec is malformed or the model/weights cannot be loaded."""


class PolicyError(DRError):
    """An augmentation policy name or parameter is invalid."""


class StoreError(DRError):
    """A reinforced-dataset store is missing, malformed or cannot be written."""


class SchemaVersionError(StoreError):
    """The store was written with a schema version this code does not read."""


class StoreIncompleteError(StoreError):
    """The store's build has not finished (status ``building``)."""


class StoreMismatchError(StoreError):
    """The store belongs to another dataset or another build configuration."""


class StoreDamagedError(StoreError):
    """Chunks of the store are missing, unreadable or differ from their recorded digests;
    ``dr-build reinforce ... --resume --repair`` recomputes them."""


class HeaderSealError(StoreError):
    """A sealed header field (policy, views, k, seed, classes, teachers, ...) was changed
    after the build: the stored views and targets no longer belong to the header."""


class SamplerVersionError(StoreError):
    """A store keeps derived parameters (their digests only) from another version of the keyed
    sampler: this dr would re-derive other views than the teachers labelled."""


class WorkerStartError(DRError):
    """No teacher worker could start (Ray's error, the resources asked for and available).

    ``workers_started``: workers that did start before the last one was lost; when it is not
    0 the store is sound and ``--resume`` finishes it (``dr-build`` exits 3, resumable), else
    no worker ever started (exit 1). ``chunks_written``: chunks written by this run.
    """

    chunks_written: int = 0
    workers_started: int = 0


def bounded_int(name: str, value: object, low: int, high: int | None = None, *, bound: str | None = None) -> int:
    """``value`` as an int within ``[low, high]``, or a :class:`ConfigError` naming the argument,
    its value and the bound (``bound`` words it; default ``in [low, high]`` or ``>= low``). Bools
    are refused (``True`` is not a count); numpy integers are accepted.

    Args:
        name: the argument's name, as the caller wrote it.
        value: the value given.
        low: the smallest allowed value.
        high: the largest allowed value (``None``: no upper bound).
        bound: how the message words the bound.

    Returns:
        The value as a Python int.

    Raises:
        ConfigError: not an int, or outside the bound.
    """
    import numbers

    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= int(value) and (high is None or int(value) <= high):
        return int(value)
    bound = bound or (f"in [{low}, {high}]" if high is not None else f">= {low}")
    raise ConfigError(f"{name}={value!r}: must be an int {bound}")
