"""The build's agreement guard: stop a build whose teachers disagree with the dataset's labels
(wrong class order, wrong preprocessing or wrong weights all look like that), judged after every
chunk by the rule of :mod:`dr.agreement`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dr.agreement import GUARD_MIN_CLASSES, LIKELY_CAUSES, agreement_threshold, agreement_upper_bound
from dr.errors import TeacherError
from dr.storage.layout import IDS, SKIPPED

__all__ = ["AgreementGuard", "guard_for"]


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
        ids = np.asarray(arrays[IDS])
        keep = ~np.asarray(arrays[SKIPPED]).astype(bool)
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
