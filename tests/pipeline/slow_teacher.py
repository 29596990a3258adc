"""A tiny teacher that can sleep before each forward (same weights and outputs as
``tiny_cnn``): the Ray Jobs test stops a build mid-way, so its first job must take a while.
The delay comes from ``DR_TEST_TEACHER_DELAY`` (seconds, default 0), not from the spec, so a
resumed build with the same spec can run at full speed."""

from __future__ import annotations

import os
import time

from torch import nn

from dr.teachers.zoo import tiny_cnn


def slow_tiny_cnn(num_classes: int = 10) -> nn.Module:
    model = tiny_cnn(num_classes=num_classes)
    delay = float(os.environ.get("DR_TEST_TEACHER_DELAY", "0"))
    if delay > 0:
        model.register_forward_pre_hook(lambda module, args: time.sleep(delay))
    return model
