"""Summaries of a store for ``dr-build info`` (and anyone who wants the numbers).

Metadata and sampled chunks, never a full read: the header, the done map, each array's shape
and stored bytes (a listing of its objects), and -- over every chunk of a store of up to
:data:`FULL_CHECK_CHUNKS` chunks, else over :data:`SAMPLE_CHUNKS` seeded ones -- the digest check,
label agreement and probability figures. ``dr-build verify`` checks every chunk. numpy and zarr
only: ``info`` imports neither torch nor Ray.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dr.agreement import LIKELY_CAUSES, agreement_threshold
from dr.errors import StoreIncompleteError
from dr.humanize import human_bytes
from dr.storage import StoreReader, store_exists
from dr.storage.layout import IDS, LABELS, PROBS, SKIPPED, TARGET_ARRAYS, decode_probs, describe, is_param
from dr.storage.segments import SegmentedStore, SegmentRecord, read_segment_table, segment_location
from dr.urls import Location

__all__ = ["FULL_CHECK_CHUNKS", "SAMPLE_CHUNKS", "store_summary", "format_summary"]

#: stores of up to this many chunks are summarised over every chunk
FULL_CHECK_CHUNKS = 64
#: larger stores: over this many seeded chunks
SAMPLE_CHUNKS = 32


def _sampled(done: np.ndarray) -> np.ndarray:
    """The done chunks the figures come from: all of them in a small store, else a seeded sample."""
    chunks = np.flatnonzero(done)
    if len(done) <= FULL_CHECK_CHUNKS or len(chunks) <= SAMPLE_CHUNKS:
        return chunks
    return np.sort(np.random.default_rng(0).choice(chunks, size=SAMPLE_CHUNKS, replace=False))


def store_summary(url: str | Location, *, allow_incomplete: bool = False, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Header fields, array shapes/dtypes/stored bytes, bytes per view, skipped images, and --
    over every chunk of a small store or a seeded sample of a large one -- damaged chunks
    (checked against their digests), label agreement and probability figures.

    ``url`` is a path, an fsspec URL (with ``storage_options``) or a :class:`~dr.urls.Location`."""
    loc = Location.of(url, storage_options)
    try:
        r = StoreReader(loc, allow_incomplete=allow_incomplete)
    except StoreIncompleteError as e:
        raise StoreIncompleteError(f"{e}; `dr-build info --allow-incomplete` describes it anyway") from None
    h = r.header
    n, v = h.dataset.count, h.views
    done = r.done()
    arrays: dict[str, dict[str, Any]] = {
        path: {
            "shape": list(a.shape),
            "dtype": str(a.dtype),
            "chunks": list(a.chunks),
            "shards": list(a.shards) if a.shards else None,
            "stored_bytes": int(a.nbytes_stored()),
        }
        for path, a in sorted(r.arrays().items())
    }
    per_view = sum(a["stored_bytes"] for p, a in arrays.items() if is_param(p) or p in TARGET_ARRAYS)
    sample = _sampled(done)
    data, damaged = r.load_checked([LABELS, SKIPPED, *TARGET_ARRAYS], chunks=sample)
    bad_chunks = sorted({p.chunk for p in damaged})
    cs = h.chunk_size
    good = np.concatenate([np.full(min(cs, n - c * cs), c not in bad_chunks) for c in sample]) if len(sample) else np.zeros(0, bool)
    skipped = data[SKIPPED].astype(bool) & good
    rows = good.copy()
    summary: dict[str, Any] = {
        "store": loc.url,
        "format": h.format,
        "schema_version": h.schema_version,
        "seal": h.seal.digest if h.seal is not None else None,
        "status": h.status,
        "tool_version": h.tool_version,
        "created_at": h.created_at,
        "completed_at": h.completed_at,
        "dataset": {"kind": h.dataset.kind, "location": h.dataset.location, "images": n, "classes": len(h.dataset.classes)},
        "policy": h.policy["name"],
        "output_size": h.output_size,
        "views": v,
        "topk": h.topk,
        "seed": h.seed,
        "teachers": [t["spec"] for t in h.ensemble.get("teachers", [])],
        "teacher_details": [
            {k: t.get(k) for k in ("spec", "preprocess", "classes_from", "init_seed", "hub_weights", "weights_sha256")}
            for t in h.ensemble.get("teachers", [])
        ],
        "teacher_classes": len(h.ensemble["teacher_classes"]) if h.ensemble.get("teacher_classes") else None,
        "class_map": {k: v for k, v in (h.ensemble.get("class_map") or {}).items() if k != "teacher_to_dataset"} or None,
        "stored_classes": h.num_classes,
        "temperature": h.ensemble.get("temperature"),
        "layout": describe(h),
        "chunks": {
            "done": int(done.sum()),
            "total": int(done.size),
            "chunk_size": h.chunk_size,
            "checked": len(sample),
            "damaged": bad_chunks,
        },
        "damaged": [str(p) for p in damaged],
        "skipped": {
            "count": len(h.skipped),
            "first": [f"#{i} {h.skipped[i]}" for i in sorted(h.skipped, key=int)[:5]],
        },
        "arrays": arrays,
        "stored_bytes": int(sum(a["stored_bytes"] for a in arrays.values())),
        "bytes_per_view": round(per_view / max(1, int(done.repeat(h.chunk_size)[:n].sum()) * v), 2),
    }
    rows &= ~skipped  # skipped images hold zero targets
    if rows.any():
        summary.update(_label_figures(h, data, rows))
    return {**summary, **_segments(loc, n)}


def _label_figures(h: Any, data: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, Any]:
    """Agreement with the labels and probability figures over the sound, checked rows."""
    summary: dict[str, Any] = {}
    labels = data[LABELS][rows]
    top1 = data[IDS][..., 0][rows]
    p = decode_probs(h, data[PROBS][rows])
    summary["teacher_top1_agreement"] = round(float((top1 == labels[:, None]).mean()), 4)
    summary["teacher_top1_agreement_per_image_majority"] = round(
        float((np.apply_along_axis(lambda r_: np.bincount(r_).argmax(), 1, top1.astype(np.int64)) == labels).mean()), 4
    )
    summary["mean_top1_prob"] = round(float(p[..., 0].mean()), 4)
    summary["mean_topk_mass"] = round(float(p.sum(-1).mean()), 4)
    threshold = agreement_threshold(len(h.dataset.classes))
    summary["agreement_threshold"] = round(threshold, 4)
    if h.num_classes != len(h.dataset.classes) and not h.ensemble.get("class_map"):
        summary["warning"] = (
            f"the stored ids are the teachers' {h.num_classes} classes but the dataset has {len(h.dataset.classes)}: "
            "they do not name the dataset's classes; rebuild with --class-map"
        )
    elif summary["teacher_top1_agreement"] < threshold:
        summary["warning"] = (
            f"top-1 agreement is below {100 * threshold:.2f}% (twice chance for {len(h.dataset.classes)} classes): "
            f"the teachers do not seem to predict this dataset's labels. {LIKELY_CAUSES}"
        )
    return summary


def _segments(loc: Location, n: int) -> dict[str, Any]:
    """``segments`` (one row per extension) and ``images_all_segments``, for an extended store.

    Raises:
        StoreError: where a reader would refuse the store: segment stores without a table, a
            table that disagrees with them, a segment that does not extend the store.
    """
    table = read_segment_table(loc)
    if not table:
        return {}
    whole = SegmentedStore(loc)  # the readers' own checks: info refuses what they refuse
    rows = [_segment_row(loc, rec) for rec in table]
    return {"segments": rows, "images_all_segments": whole.count}


def _segment_row(loc: Location, rec: SegmentRecord) -> dict[str, Any]:
    """One extension's line of ``info``: the table row and, once its store exists, its chunks,
    size, damage and label agreement."""
    row: dict[str, Any] = {k: v for k, v in rec.model_dump(mode="json").items() if k not in ("labels_sha256", "path")}
    seg = segment_location(loc, rec.index)
    if store_exists(seg):
        s = store_summary(seg, allow_incomplete=True)
        row.update({k: s.get(k) for k in ("chunks", "stored_bytes", "bytes_per_view", "teacher_top1_agreement", "warning")})
    return row


def _teacher_lines(s: dict[str, Any]) -> list[str]:
    """Per teacher: resolved preprocessing and where its class names came from; the class map."""
    from dr.teachers.preprocess import describe_preprocess

    lines = []
    for i, t in enumerate(s.get("teacher_details", [])):
        pre = describe_preprocess(t["preprocess"]) if t.get("preprocess") else "unknown"
        extra = f"; classes from {t['classes_from']}" if t.get("classes_from") else "; class names unknown"
        if t.get("init_seed") is not None:
            extra += f"; RANDOM init, seed {t['init_seed']}"
        lines.append(f"  [{i}] input {pre}{extra}")
    if s.get("class_map"):
        cm = s["class_map"]
        lines.append(
            f"class map    {cm.get('kind')}{' ' + cm['source'] if cm.get('source') else ''}: "
            f"{s.get('teacher_classes') or '?'} teacher classes -> {s['dataset']['classes']} dataset classes (stored ids)"
        )
    return lines


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable rendering of :func:`store_summary`."""
    ds = s["dataset"]
    lines = [
        f"store        {s['store']}",
        f"format       {s['format']} v{s['schema_version']}  status={s['status']}  (dr {s['tool_version']}, created {s['created_at']}, completed {s['completed_at'] or '-'})",
        f"seal         {s['seal'][:16]}... (sealed header fields checked on open)" if s.get("seal") else "seal         none",
        f"dataset      {ds['images']} images, {ds['classes']} classes  [{ds['kind']}] {ds['location'] or ''}",
        f"policy       {s['policy']} at {s['output_size']}px, V={s['views']} views/image, top-k={s['topk']}, seed={s['seed']}",
        f"teachers     {', '.join(s['teachers'])}  (T={s['temperature']})",
        *_teacher_lines(s),
        f"chunks       {s['chunks']['done']}/{s['chunks']['total']} done ({s['chunks']['chunk_size']} images each)"
        + (f", {len(s['chunks']['damaged'])} DAMAGED: {s['chunks']['damaged'][:10]}" if s["chunks"]["damaged"] else "")
        + (
            ""
            if s["chunks"]["checked"] >= s["chunks"]["done"]
            else f"; figures below from {s['chunks']['checked']} sampled chunks (`dr-build verify` checks every chunk)"
        ),
        f"layout       {s['layout']}",
        f"size         {human_bytes(s['stored_bytes'])} stored; {s['bytes_per_view']} B/view (params + targets)",
    ]
    if s["damaged"]:
        lines.append(
            f"DAMAGED      {'; '.join(s['damaged'][:3])}{' ...' if len(s['damaged']) > 3 else ''} -- figures below leave these "
            "chunks out; `dr-build verify` lists them, `dr-build reinforce ... --resume --repair` recomputes them"
        )
    sk = s["skipped"]
    lines.append(
        f"skipped      {sk['count']} image(s) the build could not use"
        + (": " + "; ".join(sk["first"]) + (" ..." if sk["count"] > len(sk["first"]) else "") if sk["count"] else "")
    )
    if "teacher_top1_agreement" in s:
        lines.append(
            f"teachers vs labels  top-1 agreement {100 * s['teacher_top1_agreement']:.2f}% of views "
            f"({100 * s['teacher_top1_agreement_per_image_majority']:.2f}% of images by majority view); "
            f"mean top-1 prob {s['mean_top1_prob']:.3f}, mean top-k mass {s['mean_topk_mass']:.3f}"
        )
    if s.get("warning"):
        lines.append(f"  WARNING: {s['warning']}")
    for seg in s.get("segments", []):
        ch = seg.get("chunks") or {}
        agree = seg.get("teacher_top1_agreement")
        lines.append(
            f"segment {seg['index']:<4} {seg['count']} images from {seg['location']} (images {seg['offset']}-{seg['offset'] + seg['count'] - 1}), "
            f"{seg['status']}, added {seg['added_at']}; chunks {ch.get('done', 0)}/{ch.get('total', '?')}"
            + (f", {len(ch['damaged'])} DAMAGED" if ch.get("damaged") else "")
            + (f", {human_bytes(seg['stored_bytes'])}" if seg.get("stored_bytes") else "")
            + (f", top-1 agreement {100 * agree:.2f}%" if agree is not None else "")
        )
    if "segments" in s:
        lines.append(f"all segments {s['images_all_segments']} images served (segment 0 is the store above)")
    lines.append("arrays")
    for path, a in s["arrays"].items():
        shape = "x".join(str(d) for d in a["shape"])
        lines.append(f"  {path:<20} {a['dtype']:<8} {shape:<16} {human_bytes(a['stored_bytes']):>10}")
    return "\n".join(lines)
