"""Do the teachers agree with the dataset's labels? The rule a build's guard and ``verify`` share.

* :func:`agreement_threshold` -- the lowest acceptable top-1 agreement (twice chance unless set);
* :func:`agreement_upper_bound` -- the upper confidence bound (Wilson score) of the agreement
  over images, which judges a collapse at any sample size.

The build's guard is :class:`dr.builder.guard.AgreementGuard`; ``verify``'s check is
:func:`dr.audit.agreement.label_agreement`. numpy only.
"""

from __future__ import annotations

import logging
import math

__all__ = ["AGREEMENT_Z", "GUARD_MIN_CLASSES", "LIKELY_CAUSES", "agreement_threshold", "agreement_upper_bound"]

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
