"""Do the teachers agree with the dataset's labels? The rule a build's guard and ``verify`` share.

* :class:`AgreementGuard` -- during a build, stops it when the teachers' top-1 agrees with
  the dataset's labels less than a threshold (default: twice chance): wrong class order,
  wrong preprocessing or wrong weights all look like that. It judges with
  :func:`agreement_upper_bound`, so a collapse is caught after the first chunk on a dataset of
  any size, and a working ensemble is not stopped by a small sample's bad luck.
* :func:`label_agreement` -- the same rule on a finished store (``dr-build verify``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from dr.errors import TeacherError

__all__ = [
    "AGREEMENT_Z",
    "GUARD_MIN_CLASSES",
    "LIKELY_CAUSES",
    "AgreementGuard",
    "agreement_threshold",
    "agreement_upper_bound",
    "guard_for",
    "label_agreement",
]

log = logging.getLogger(__name__)

LIKELY_CAUSES = (
    "Likely causes: (1) class order -- the teachers' class i is not the dataset's class i (compare the class names in "
    "`dr-build info`; pass --class-map); (2) preprocessing -- wrong mean/std or input size, e.g. a program that "
    "normalises inside (?normalize=none) or needs ?mean=...&std=...; (3) wrong or missing weights (a random or "
    "other-dataset network). Measure the teachers first with `dr-build teachers eval SPEC --on VAL_DIR`."
)


def agreement_threshold(num_classes: int, min_agreement: float | None = None) -> float:
    """The lowest acceptable top-1 agreement: ``min_agreement`` if given, else twice chance
    (``2 / classes``), but at most halfway from chance to 100 % (so 75 % for two classes)."""
    if min_agreement is not None:
        return float(min_agreement)
    chance = 1.0 / max(1, num_classes)
    return min(2 * chance, (1 + chance) / 2)


#: the guard's bound judges a sample only once it spans this many classes (all, if fewer)
GUARD_MIN_CLASSES = 10


#: one-sided z of the agreement test: a working ensemble exactly at the threshold is called
#: collapsed by one look with probability 0.05 %
AGREEMENT_Z = 3.29


def agreement_upper_bound(agreement: float, images: int, z: float = AGREEMENT_Z) -> float:
    """Upper confidence bound (Wilson score, one-sided ``z``) of the teachers' true top-1
    agreement with the labels, from the share ``agreement`` of agreeing views over ``images``
    images.

    The image, not the view, is the unit: views of one image are correlated, and an image's
    share of agreeing views lies in [0, 1], so its variance is at most ``p (1 - p)`` -- the
    binomial bound over images is conservative. An ensemble is *collapsed* when this bound is
    below the threshold: 11.5 % agreement over 300 images of 10 classes bounds at 18.9 %, below
    twice chance (20 %).
    """
    if images <= 0:
        return 1.0
    n, p = float(images), min(1.0, max(0.0, float(agreement)))
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z2 / n))


class AgreementGuard:
    """Stops a build whose teachers disagree with the dataset's labels.

    Fed each written chunk's top-1 ids. After every chunk it stops the build when the upper
    confidence bound of the agreement (:func:`agreement_upper_bound`) is below ``threshold``
    -- a collapse the sample already proves, whatever the dataset's size -- once the labelled
    images span :data:`GUARD_MIN_CLASSES` classes (all of them in a smaller dataset): sources
    list images class by class, and a working ensemble's worst class may sit below the
    threshold. When ``after_images`` images are labelled it also compares the plain share with
    ``threshold``, once. Raises :class:`TeacherError`, naming the likely causes.
    """

    def __init__(self, labels: np.ndarray, threshold: float, after_images: int) -> None:
        self.labels = np.asarray(labels)
        self.min_classes = min(GUARD_MIN_CLASSES, len(np.unique(self.labels)))
        self.classes_seen: set[int] = set()
        self.threshold = float(threshold)
        self.after_images = int(after_images)  # when the plain share is judged (once)
        self.images = self.views = self.hits = 0
        self.judged = False  # the plain share has been judged

    def update(self, start: int, arrays: Mapping[str, np.ndarray]) -> None:
        ids = np.asarray(arrays["targets/ids"])
        keep = ~np.asarray(arrays["source/skipped"]).astype(bool)
        top1 = ids[..., 0][keep]
        lab = self.labels[start : start + len(keep)][keep]
        self.images += int(keep.sum())
        self.views += int(top1.size)
        self.hits += int((top1 == lab[:, None]).sum())
        self.classes_seen.update(np.unique(lab).tolist())
        agreement = self.hits / max(1, self.views)
        upper = agreement_upper_bound(agreement, self.images) if len(self.classes_seen) >= self.min_classes else 1.0
        final = not self.judged and self.images >= self.after_images
        self.judged = self.judged or final
        if upper < self.threshold or (final and agreement < self.threshold):
            bound = f" (at most {100 * upper:.2f}% at 99.95% confidence)" if upper < self.threshold else ""
            raise TeacherError(
                f"stopped: the teachers' top-1 agrees with the dataset's labels on {100 * agreement:.2f}% of views over the "
                f"first {self.images} images{bound}, below {100 * self.threshold:.2f}% (twice chance unless --min-agreement): "
                f"the teachers do not predict this dataset's labels. {LIKELY_CAUSES} Chunks written so far are kept; if this is "
                "expected, rerun with --min-agreement 0 --resume."
            )


def guard_for(config: Any, labels: np.ndarray, num_dataset_classes: int, ensemble_desc: Mapping[str, Any]) -> AgreementGuard | None:
    """The build's :class:`AgreementGuard`, or ``None`` when it is off: ``min_agreement`` 0, or
    random teachers (at chance by construction)."""
    if config.min_agreement == 0 or any(t.get("init_seed") is not None for t in ensemble_desc.get("teachers", [])):
        return None
    return AgreementGuard(labels, agreement_threshold(num_dataset_classes, config.min_agreement), config.agreement_check_images)


def label_agreement(reader: Any) -> tuple[bool, str, dict[str, Any]]:
    """``verify``'s ``labels`` check: do the stored top-1 ids agree with the dataset's labels?

    Fails when the stored ids cannot name the dataset's classes (more teacher classes than
    dataset classes and no class map), and when agreement is below the build's threshold (twice
    chance unless ``min_agreement``) by the :class:`AgreementGuard`'s rule: the upper
    confidence bound is below it (any store size), or the plain share is, over at least
    ``agreement_check_images`` images -- or at any size for a store built with a class map.
    Not judged: random teachers, and builds that turned the guard off (``min_agreement: 0``)
    without a class map. Returns ``(ok, detail, figures)``.
    """
    h = reader.header
    n, classes = h.dataset.count, len(h.dataset.classes)
    cfg = dict(h.build.get("config", {})) if isinstance(h.build, Mapping) else {}
    class_map = h.ensemble.get("class_map")
    if h.num_classes != classes and not class_map:
        return (
            False,
            f"the stored ids are the teachers' {h.num_classes} classes but the dataset has {classes} "
            f"({', '.join(list(h.dataset.classes)[:6])}): ids do not name the dataset's classes; rebuild with --class-map",
            {"num_classes": h.num_classes, "dataset_classes": classes},
        )
    labels = reader.load("source/labels")
    skipped = reader.load("source/skipped").astype(bool)
    ids = reader.array("targets/ids")
    hits = views = 0
    for c0 in range(0, n, h.chunk_size):
        top1 = np.asarray(ids[c0 : c0 + h.chunk_size, :, 0])
        keep = ~skipped[c0 : c0 + h.chunk_size]
        hits += int((top1[keep] == labels[c0 : c0 + h.chunk_size][keep, None]).sum())
        views += int(top1[keep].size)
    agreement = hits / max(1, views)
    images = int((~skipped).sum())
    threshold = agreement_threshold(classes, cfg.get("min_agreement") or None)
    upper = agreement_upper_bound(agreement, images)
    figures = {"top1_agreement": agreement, "threshold": threshold, "upper_bound": upper, "images": images}
    random_teachers = any(t.get("init_seed") is not None for t in h.ensemble.get("teachers", []))
    # a class map claims that teacher and dataset classes correspond: always judged (at twice chance
    # when min_agreement is 0); other stores unless the build turned the guard off
    judged = not random_teachers and (bool(class_map) or cfg.get("min_agreement") != 0)
    # the bound at any size; the plain share from agreement_check_images on, and at any size for a
    # class map (the map is a specific claim about which classes correspond)
    collapsed = upper < threshold or ((bool(class_map) or images >= int(cfg.get("agreement_check_images", 512))) and agreement < threshold)
    detail = (
        f"teacher top-1 agrees with the labels on {100 * agreement:.2f}% of views over {images} images "
        f"(threshold {100 * threshold:.2f}%; at most {100 * upper:.2f}% at 99.95% confidence)"
    )
    if agreement >= threshold:
        return True, detail, figures
    if not judged:
        why = "random teachers" if random_teachers else "--min-agreement 0"
        return True, f"{detail}; not judged ({why})", figures
    if not collapsed:
        return True, f"{detail}; below the threshold, but {images} images cannot tell it from a working ensemble", figures
    where = f" with class map {class_map.get('kind')}{' ' + class_map['source'] if class_map.get('source') else ''}" if class_map else ""
    return False, f"{detail}: the stored labels collapsed{where}. {LIKELY_CAUSES}", figures
