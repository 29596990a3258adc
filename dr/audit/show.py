"""Draw an image's stored views with their soft labels (``dr-build show``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from dr.errors import ConfigError

__all__ = ["draw_views", "target_class_names"]


def target_class_names(header: Any) -> list[str]:
    """Names of the stored class ids (``targets/ids``) of a store header.

    With a class map the ids are the dataset's classes; otherwise they are the teachers' ids,
    named by the teachers' class names when the header has them. A store whose ids outnumber
    the dataset's classes and has no names (built before class checks) gets ``class <id>``.
    """
    dataset = [str(c) for c in header.dataset.classes]
    if header.ensemble.get("class_map"):
        return dataset
    teacher = header.ensemble.get("teacher_classes")
    if teacher and len(teacher) == header.num_classes:
        return [str(c) for c in teacher]
    if len(dataset) == header.num_classes:
        return dataset
    return [f"class {i}" for i in range(header.num_classes)]


def draw_views(
    store: str, source: Any, index: int, out: str | Path, *, max_views: int = 32, topn: int = 3, output_size: int | None = None
) -> Path:
    """Replay up to ``max_views`` stored views of image ``index`` and save a PNG grid.

    The first panel is the source image with its label; each view panel shows the replayed
    pixels (as the teachers saw them), the view number, MixUp/CutMix partner if any, and the
    top-``topn`` classes with probabilities.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dr.dataset import ReinforcedDataset

    ds = ReinforcedDataset(store, source, transform=lambda v: v, output_size=output_size, verify_source="none")
    count = ds.header.dataset.count  # --index is a source index: skipped images keep their numbers
    if not 0 <= index < count:
        raise ConfigError(
            f"--index {index} is out of range: it is a source index (the image's position in the source), 0 to {count - 1} "
            f"(the store's {count} images, {int(ds.skipped.sum())} of them skipped by the build)"
        )
    if ds.skipped[index]:
        reason = ds.header.skipped.get(str(index), "no reason recorded")
        raise ConfigError(f"--index {index}: the build skipped this image, so it has no stored views ({reason})")
    classes = ds.header.dataset.classes
    names = target_class_names(ds.header)
    topn = min(topn, ds.header.topk)  # the title and every tile show the same number of labels
    views = min(ds.views, max_views)
    cols = min(8, views + 1)
    rows = math.ceil((views + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 3.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    original = ds.image(index).permute(1, 2, 0).numpy()
    axes[0, 0].imshow(original)
    axes[0, 0].set_title(f"#{index} {classes[int(ds.labels[index])]}\n(original)", fontsize=8)
    for v in range(views):
        params, ids, probs = ds.record(index, v)
        images, partner = [ds.image(index)], None
        note = ""
        if "mix_kind" in params and int(params["mix_kind"][0]):
            p = int(params["mix_partner"][0])
            images.append(ds.image(p))
            partner = np.ones(1, dtype=np.int64)
            note = f" {'mixup' if int(params['mix_kind'][0]) == 1 else 'cutmix'} #{p}"
        view = ds.policy.replay(images, params, np.zeros(1, dtype=np.int64), partner_index=partner, output_size=ds.output_size)[0]
        ax = axes[(v + 1) // cols, (v + 1) % cols]
        ax.imshow(view.permute(1, 2, 0).numpy())
        label = "\n".join(f"{names[int(c)][:10]} {float(q):.2f}" for c, q in zip(ids[:topn], probs[:topn]))
        ax.set_title(f"view {v}{note}\n{label}", fontsize=7)
    fig.suptitle(
        f"{Path(store).name}: policy {ds.policy.name}, {ds.views} views; top-{topn} labels shown (of the stored top-{ds.header.topk})",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
