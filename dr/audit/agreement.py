"""``verify``'s ``labels`` check: do a finished store's top-1 ids agree with the dataset's
labels, by the rule the build's guard uses (:mod:`dr.agreement`)?"""

from __future__ import annotations

from typing import Any

import numpy as np

from dr.agreement import LIKELY_CAUSES, agreement_threshold, agreement_upper_bound
from dr.storage.layout import IDS, LABELS, SKIPPED

__all__ = ["label_agreement"]


def label_agreement(reader: Any, min_agreement: float | None = None, check_images: int = 512) -> tuple[bool, str, dict[str, Any]]:
    """``verify``'s ``labels`` check: do the stored top-1 ids agree with the dataset's labels?

    The verdict uses the caller's threshold, never one read from the store (a build's settings
    are not sealed: an edited ``min_agreement`` must not flip a verdict).

    Fails when the stored ids cannot name the dataset's classes (more teacher classes than
    dataset classes and no class map), and when agreement is below ``min_agreement`` (default:
    twice chance) by the build guard's rule (:mod:`dr.builder.guard`): the upper confidence
    bound is below it (any store size), or the plain share is, over at least ``check_images``
    images -- or at any size for a store built with a class map (a sealed claim about which
    classes correspond). Not judged: random teachers (sealed in the ensemble record), and
    ``min_agreement=0`` without a class map. Returns ``(ok, detail, figures)``.
    """
    h = reader.header
    n, classes = h.dataset.count, len(h.dataset.classes)
    class_map = h.ensemble.get("class_map")
    if h.num_classes != classes and not class_map:
        return (
            False,
            f"the stored ids are the teachers' {h.num_classes} classes but the dataset has {classes} "
            f"({', '.join(list(h.dataset.classes)[:6])}): ids do not name the dataset's classes; rebuild with --class-map",
            {"num_classes": h.num_classes, "dataset_classes": classes},
        )
    labels = reader.load(LABELS)
    skipped = reader.load(SKIPPED).astype(bool)
    ids = reader.array(IDS)
    hits = views = 0
    for c0 in range(0, n, h.chunk_size):
        top1 = np.asarray(ids[c0 : c0 + h.chunk_size, :, 0])
        keep = ~skipped[c0 : c0 + h.chunk_size]
        hits += int((top1[keep] == labels[c0 : c0 + h.chunk_size][keep, None]).sum())
        views += int(top1[keep].size)
    agreement = hits / max(1, views)
    images = int((~skipped).sum())
    threshold = agreement_threshold(classes, min_agreement or None)
    upper = agreement_upper_bound(agreement, images)
    figures = {"top1_agreement": agreement, "threshold": threshold, "upper_bound": upper, "images": images}
    random_teachers = any(t.get("init_seed") is not None for t in h.ensemble.get("teachers", []))
    # a class map claims that teacher and dataset classes correspond: always judged (at twice chance
    # when min_agreement is 0); other stores unless the build turned the guard off
    judged = not random_teachers and (bool(class_map) or min_agreement != 0)
    # the bound at any size; the plain share from agreement_check_images on, and at any size for a
    # class map (the map is a specific claim about which classes correspond)
    collapsed = upper < threshold or ((bool(class_map) or images >= int(check_images)) and agreement < threshold)
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
