"""The teacher pre-flight, "eval": are these teachers right for this dataset? Measured before
any GPU hour is spent.

* :func:`probe_ensemble` -- load the build's teachers and match their classes to the dataset's
  (class names, ``--class-map``).
* :func:`evaluate_teachers` -- each teacher's and the ensemble's top-1 on a labelled folder
  (``dr-build reinforce --eval-on VAL``, ``dr-build teachers eval SPEC --on VAL``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from dr.agreement import LIKELY_CAUSES, agreement_threshold
from dr.errors import ConfigError, TeacherError

__all__ = ["evaluate_teachers", "format_evaluation", "probe_classes", "probe_ensemble", "run_eval_on"]

log = logging.getLogger(__name__)


def _center_view(image: np.ndarray, size: int) -> torch.Tensor:
    """The usual evaluation view: shorter side resized to ``size`` (anti-aliased), centre crop."""
    from torchvision.transforms.v2 import functional as TF

    x = torch.from_numpy(image).permute(2, 0, 1)
    x = TF.resize(x, [size], antialias=True)
    return TF.center_crop(x, [size, size])


def evaluate_teachers(
    ensemble: Any,
    folder: str,
    *,
    size: int,
    max_images: int = 1000,
    seed: int = 0,
    batch: int = 64,
    storage_options: Mapping[str, Any] | None = None,
    expected_classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Top-1 of each teacher and of the ensemble on a labelled ImageFolder.

    Args:
        ensemble: a :class:`teachers.Ensemble` (its class map, if any, is applied).
        folder: labelled ImageFolder (local path or fsspec URL).
        size: view size fed to the teachers (each resizes to its own input size).
        max_images: evaluate a seeded sample of at most this many images.
        expected_classes: the build dataset's classes; the folder must have the same.

    Returns:
        ``{"folder", "images", "classes", "chance", "teachers": [{"spec", "top1"}], "ensemble_top1"}``.
    """
    from dr.sources import open_source

    src = open_source(folder, storage_options)
    if expected_classes is not None and tuple(src.classes) != tuple(expected_classes):
        raise ConfigError(
            f"--eval-on {folder!r} has classes ({', '.join(list(src.classes)[:6])}...) that are not the source's "
            f"({', '.join(list(expected_classes)[:6])}...): use a labelled split of the same dataset"
        )
    n = len(src)
    picks = np.arange(n) if n <= max_images else np.sort(np.random.default_rng(seed).choice(n, size=max_images, replace=False))
    labels = src.labels()[picks]
    hits = np.zeros(len(ensemble.members) + 1, dtype=np.int64)
    for b0 in range(0, len(picks), batch):
        idx = picks[b0 : b0 + batch]
        views = torch.stack([_center_view(src.read(int(i))[0], size) for i in idx])
        lab = torch.from_numpy(labels[b0 : b0 + len(idx)])
        with torch.inference_mode():
            members = ensemble.member_probs(views)
            total = ensemble(views)
        for j, p in enumerate([*members, total]):
            hits[j] += int((p.argmax(1).cpu() == lab).sum())
    count = max(1, len(picks))
    return {
        "folder": folder,
        "images": int(len(picks)),
        "classes": len(src.classes),
        "chance": 1.0 / max(1, len(src.classes)),
        "teachers": [{"spec": str(t.spec), "top1": float(hits[j] / count)} for j, t in enumerate(ensemble.members)],
        "ensemble_top1": float(hits[-1] / count),
    }


def format_evaluation(report: Mapping[str, Any], threshold: float | None = None) -> str:
    """Human-readable table of :func:`evaluate_teachers`."""
    lines = [
        f"teachers on {report['folder']} ({report['images']} images, {report['classes']} classes, chance {100 * report['chance']:.2f}%)"
    ]
    for t in report["teachers"]:
        lines.append(f"  top-1 {100 * t['top1']:6.2f}%  {t['spec']}")
    lines.append(f"  top-1 {100 * report['ensemble_top1']:6.2f}%  ensemble")
    if threshold is not None and report["ensemble_top1"] < threshold:
        lines.append(f"  WARNING: below the {100 * threshold:.2f}% the build requires (twice chance unless --min-agreement)")
    return "\n".join(lines)


def probe_ensemble(config: Any, dataset_classes: Sequence[str]) -> tuple[Any, dict[str, Any], int]:
    """Load the build's ensemble once on the driver: fail fast on bad specs, learn the class
    count, and check the teachers' classes against the dataset's (resolving ``class_map``).

    Returns ``(ensemble, description for the header, number of stored classes)``. Random
    teachers (allowed only with ``allow_random_teachers``) are seeded ``seed + i``.
    """
    from dr.policy import get_policy
    from dr.teachers import Ensemble

    size = get_policy(config.policy, config.output_size, config.crop_scale).output_size  # a bad policy fails before teachers load
    seeds = [int(config.seed) + i for i in range(len(config.teachers))]
    ensemble = Ensemble.from_specs(
        list(config.teachers), config.temperature, config.precision, allow_random=config.allow_random_teachers, init_seeds=seeds
    )
    if config.class_map is None and any(t.init_seed is not None for t in ensemble.members):
        # random teachers predict no real classes: ids stay in their space (tests, benchmarks)
        with torch.inference_mode():
            num_classes = int(ensemble(torch.zeros(1, 3, size, size, dtype=torch.uint8)).shape[1])
        if num_classes != len(dataset_classes):
            log.warning(
                "random teachers: the store's ids are the teachers' %d classes, not the dataset's %d "
                "(no class check; pass --class-map to store dataset ids)",
                num_classes,
                len(dataset_classes),
            )
    else:
        num_classes = probe_classes(ensemble, dataset_classes, config.class_map, size)
    return ensemble, ensemble.describe(), num_classes


def probe_classes(ensemble: Any, dataset_classes: Sequence[str], class_map: str | None, size: int) -> int:
    """Learn how many classes the teachers predict (one dummy forward), check their classes
    against the dataset's and set ``ensemble.class_map``; returns the number of stored classes."""
    from dr.teachers import resolve_class_map

    ensemble.class_map = None
    with torch.inference_mode():
        teacher_classes = int(ensemble(torch.zeros(1, 3, size, size, dtype=torch.uint8)).shape[1])
    ensemble.class_map = resolve_class_map(dataset_classes, ensemble.teacher_classes, teacher_classes, class_map)
    return teacher_classes if ensemble.class_map is None else int(ensemble.class_map.num_dataset)


def run_eval_on(config: Any, ensemble: Any, dataset_classes: Sequence[str], size: int) -> dict[str, Any]:
    """``--eval-on``: evaluate on the labelled folder; raise when the ensemble is below the
    agreement threshold (the report is attached to the error as ``.report``)."""
    report = evaluate_teachers(
        ensemble,
        config.eval_on,
        size=size,
        max_images=config.eval_images,
        seed=config.seed,
        storage_options=config.storage_options,
        expected_classes=dataset_classes,
    )
    threshold = agreement_threshold(len(dataset_classes), config.min_agreement)
    report["threshold"] = threshold
    if report["ensemble_top1"] < threshold and config.min_agreement != 0:
        err = TeacherError(
            f"pre-flight: the ensemble's top-1 on {config.eval_on!r} is {100 * report['ensemble_top1']:.2f}% "
            f"({report['images']} images), below {100 * threshold:.2f}% (twice chance unless --min-agreement); "
            f"nothing was built.\n{format_evaluation(report)}\n{LIKELY_CAUSES}"
        )
        err.report = report  # type: ignore[attr-defined]
        raise err
    return report
