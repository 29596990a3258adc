"""A ``python:`` factory is a teacher with weights only when it loads them: one that claims
``pretrained=true`` but builds a random network -- its weights follow the seed, or it seeds
the generator itself -- is a random teacher (refused, or recorded with its ``init_seed``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dr.errors import TeacherError
from dr.teachers import load_teacher

INPUTS = "mean=0.5,0.5,0.5&std=0.25,0.25,0.25"


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


def self_seeded() -> nn.Module:
    """Random weights that are the same under every seed: it seeds the generator itself."""
    torch.manual_seed(0)
    return _net()


def self_seeded_then_loaded(path: str) -> nn.Module:
    """Seeds itself too, then loads its weights from a file: a pretrained teacher."""
    torch.manual_seed(0)
    model = _net()
    model.load_state_dict(load_file(path))
    return model


def _spec(factory: str, weights: str = "", options: str = "") -> str:
    return f"python:{__name__}:{factory}{'@' + weights if weights else ''}?{INPUTS}{options}"


def test_a_self_seeding_factory_is_random_unless_the_spec_names_weights(tmp_path: Path) -> None:
    claimed = _spec("self_seeded", options="&pretrained=true")
    with pytest.raises(TeacherError) as refused:
        load_teacher(claimed)
    message = str(refused.value)
    assert "\n" not in message
    assert (
        "says pretrained=true" in message and "loads no weights from a file" in message and "seeds the random generator itself" in message
    )
    assert f"python:{__name__}:self_seeded@/path/weights.safetensors" in message and "--allow-random-teachers" in message
    with pytest.raises(TeacherError, match="has no weights.*--allow-random-teachers"):  # no claim: random, as before
        load_teacher(_spec("self_seeded"))
    allowed = load_teacher(claimed, allow_random=True, init_seed=7)
    assert allowed.init_seed == 7 and allowed.describe()["init_seed"] == 7  # recorded as random
    weights = tmp_path / "weights.safetensors"
    save_file(_net().state_dict(), str(weights))
    named = load_teacher(_spec("self_seeded", str(weights)))  # the spec names weights: a teacher with weights
    assert named.init_seed is None and named.weights_sha256 is not None
    file = load_file(str(weights))
    assert all(torch.equal(v, file[k]) for k, v in named.model.state_dict().items())


def test_a_factory_that_loads_its_weights_is_taken_at_its_word(tmp_path: Path) -> None:
    weights = tmp_path / "own.safetensors"
    save_file(_net().state_dict(), str(weights))
    loaded = load_teacher(_spec("self_seeded_then_loaded", options=f"&pretrained=true&path={weights}"))
    assert loaded.init_seed is None and loaded.weights_sha256 is None
    # the zoo's networks load nothing: their weights follow the seed (the side door of v0.2)
    with pytest.raises(
        TeacherError, match=r"pretrained=true.*weights change with the random seed: it loads no weights.*--allow-random-teachers"
    ):
        load_teacher("python:dr.teachers.zoo:tiny_cnn?num_classes=10&pretrained=true")


def test_watching_the_weight_readers_leaves_torch_as_it_was() -> None:
    readers = (nn.Module.load_state_dict, torch.load, torch.jit.load)
    with pytest.raises(TeacherError):
        load_teacher(_spec("self_seeded", options="&pretrained=true"))
    assert (nn.Module.load_state_dict, torch.load, torch.jit.load) == readers
