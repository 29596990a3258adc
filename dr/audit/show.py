"""Draw an image's stored views with their soft labels (``dr-build show``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from dr.errors import ConfigError, StoreMismatchError
from dr.urls import Location

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


def _source_arg(store: str, reader: Any, source: Any, trust_store_location: bool) -> Any:
    """The source the Dataset is given: the user's, or the recorded location(s) where
    :func:`dr.views.reader_source` allows (or the user trusts) them."""
    from dr.storage.segments import SegmentedStore
    from dr.views import reader_source

    if not isinstance(reader, SegmentedStore):
        return reader_source(store, reader.header, source, trust_store_location=trust_store_location)
    if source is not None:  # the Dataset checks one entry per segment
        return source
    return [reader_source(s.url, s.reader.header, None, root=store, trust_store_location=trust_store_location) for s in reader.segments]


def _same_image(ds: Any, index: int, digests: np.ndarray | None) -> Any:
    """Source image ``index`` (uint8 ``[3,H,W]``), refused unless it is the image the store holds
    there (its content digest), when ``digests`` are given."""
    import torch

    pixels, digest = ds.source.read(index)
    if digests is not None and digest != digests[index].tobytes():
        raise StoreMismatchError(
            f"image {index} of the source ({ds.source.describe(index)}) is not the image store {ds.store!r} holds at that index "
            "(its content digest differs): the picture would show other images under this store's labels. Pass the source "
            "the store was built from (--source), or draw anyway with --no-check"
        )
    return torch.from_numpy(pixels).permute(2, 0, 1)


def _stored(loc: Location, index: int, check: bool) -> tuple[Any, np.ndarray]:
    """The store's reader (every complete segment) and ``source/digests``, digest-checked;
    refuses an ``index`` without stored views (out of range, or skipped by the build) before any
    source is opened."""
    from dr.storage import StoreReader
    from dr.storage.layout import DIGESTS, SKIPPED
    from dr.storage.segments import SegmentedStore, has_segments

    store = loc.url
    reader: Any = SegmentedStore(loc) if has_segments(loc) else StoreReader(loc)
    rows, damaged = reader.load_checked([SKIPPED, DIGESTS])
    count = reader.header.dataset.count  # --index is a source index: skipped images keep their numbers
    skipped = rows[SKIPPED].astype(bool)
    if not 0 <= index < count:
        raise ConfigError(
            f"--index {index} is out of range: it is a source index (the image's position in the source), 0 to {count - 1} "
            f"(the store's {count} images, {int(skipped.sum())} of them skipped by the build)"
        )
    if skipped[index]:
        reason = reader.header.skipped.get(str(index), "no reason recorded")
        raise ConfigError(f"--index {index}: the build skipped this image, so it has no stored views ({reason})")
    if damaged and check:
        raise StoreMismatchError(
            f"store {store!r}: its source digests are damaged ({damaged[0]}), so the images drawn cannot be checked: repair "
            "the store (`dr-build verify` names the chunks), or draw anyway with --no-check"
        )
    return reader, np.asarray(rows[DIGESTS])


def draw_views(
    store: str | Location,
    source: Any,
    index: int,
    out: str | Path,
    *,
    max_views: int = 32,
    topn: int = 3,
    output_size: int | None = None,
    check: bool = True,
    trust_store_location: bool = False,
) -> Path:
    """Replay up to ``max_views`` stored views of image ``index`` and save a PNG grid.

    The first panel is the source image with its label; each view panel shows the replayed
    pixels (as the teachers saw them), the view number, MixUp/CutMix partner if any, and the
    top-``topn`` classes with probabilities.

    The source is checked as the Dataset checks it (count, classes, labels and 32 seeded
    content hashes), and every image drawn (``index`` and its mixing partners) must have the
    content digest the store recorded for it: the picture shows what the teachers saw, or
    nothing. ``check=False`` skips the content hashes (count, classes and labels are still
    compared). Without ``source``, the recorded location is opened only by the readers' rule
    (:func:`dr.views.reader_source`) or with ``trust_store_location=True``.

    Raises:
        ConfigError: ``index`` out of range, or an image the build skipped.
        StoreMismatchError: the source is not the store's dataset, an image drawn differs from
            the one the store holds, or a recorded location the rule refuses.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dr.dataset import ReinforcedDataset

    loc = Location.of(store)  # a path, or a URL with its fsspec options (a Location)
    reader, stored = _stored(loc, index, check)
    source = _source_arg(loc.url, reader, source, trust_store_location)
    ds = ReinforcedDataset(loc, source, transform=lambda v: v, output_size=output_size, verify_source="sample" if check else "none")
    digests = stored if check else None
    classes = ds.header.dataset.classes
    names = target_class_names(ds.header)
    topn = min(topn, ds.header.topk)  # the title and every tile show the same number of labels
    views = min(ds.views, max_views)
    cols = min(8, views + 1)
    rows = math.ceil((views + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 3.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    image = _same_image(ds, index, digests)
    original = image.permute(1, 2, 0).numpy()
    axes[0, 0].imshow(original)
    axes[0, 0].set_title(f"#{index} {classes[int(ds.labels[index])]}\n(original)", fontsize=8)
    for v in range(views):
        params, ids, probs = ds.record(index, v)
        images, partner = [image], None
        note = ""
        if "mix_kind" in params and int(params["mix_kind"][0]):
            p = int(params["mix_partner"][0])
            images.append(_same_image(ds, p, digests))
            partner = np.ones(1, dtype=np.int64)
            note = f" {'mixup' if int(params['mix_kind'][0]) == 1 else 'cutmix'} #{p}"
        view = ds.policy.replay(images, params, np.zeros(1, dtype=np.int64), partner_index=partner, output_size=ds.output_size)[0]
        ax = axes[(v + 1) // cols, (v + 1) % cols]
        ax.imshow(view.permute(1, 2, 0).numpy())
        label = "\n".join(f"{names[int(c)][:10]} {float(q):.2f}" for c, q in zip(ids[:topn], probs[:topn]))
        ax.set_title(f"view {v}{note}\n{label}", fontsize=7)
    fig.suptitle(
        f"{Path(loc.path).name}: policy {ds.policy.name}, {ds.views} views; top-{topn} labels shown (of the stored top-{ds.header.topk})",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
