"""How a source's raw labels become class ids (``dr.sources.indexed.resolve_labels``): integers
and digit strings are ids, anything else is a class name. ImageNet-sized indexes take a
vectorised path; it must decide exactly as the per-item rule does."""

from __future__ import annotations

import numpy as np
import pytest

from dr.errors import SourceError
from dr.sources.indexed import resolve_labels


@pytest.mark.parametrize(
    ("raw", "labels", "names"),
    [
        (["3", " 1", "0"], [3, 1, 0], ("0", "1", "2", "3")),  # digit strings, spaces allowed
        ([2, 0, 1], [2, 0, 1], ("0", "1", "2")),
        (np.array([1, 0], dtype=np.uint16), [1, 0], ("0", "1")),
        ([1, "0"], [1, 0], ("0", "1")),  # ints and digit strings together
        (["b", "a", "b"], [1, 0, 1], ("a", "b")),  # names, sorted like ImageFolder's folders
        (["+5", "7"], [0, 1], ("+5", "7")),  # "+5" is a name, not an id
        ([True, False], [1, 0], ("False", "True")),  # booleans are names
        ([1.0, 2.0], [0, 1], ("1.0", "2.0")),  # floats are names
    ],
)
def test_ids_and_names(raw: object, labels: list[int], names: tuple[str, ...]) -> None:
    got, got_names = resolve_labels(raw, None, "test")  # type: ignore[arg-type]
    assert got.dtype == np.int64 and got.tolist() == labels and got_names == names


def test_a_million_digit_labels_resolve_like_the_per_item_rule() -> None:
    rng = np.random.default_rng(0)
    ints = rng.integers(0, 1000, 1_000_000)
    labels, names = resolve_labels([str(i) for i in ints], [f"c{i}" for i in range(1000)], "test")
    assert np.array_equal(labels, ints) and names[:2] == ("c0", "c1")


def test_an_id_outside_the_classes_names_the_item() -> None:
    with pytest.raises(SourceError, match="label 3 of item 1 is outside the 2 classes"):
        resolve_labels(["0", "3"], ["a", "b"], "test")
