"""``dr-build verify``: prove a store is whole and that its labels are what the teachers say.

Integrity: every chunk done, arrays present with the header's shapes and dtypes, soft labels
sorted and within [0, 1], ids in range, parameters inside image bounds, mixing partners in
the same chunk, the source's fingerprint and content hashes. Replay audit: re-run the teachers
on replayed views of a seeded sample and compare with the stored top-k (top-1 agreement, KL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from dr.errors import ConfigError, DRError
from dr.policy import RA_OPS, Policy
from dr.storage import StoreReader
from dr.storage.layout import IDS, PROBS, SIZES, SKIPPED, array_specs, decode_probs, describe, digest_paths, param_name, param_paths
from dr.storage.segments import SegmentedStore, read_segment_table, segment_location
from dr.urls import Location
from dr.views import parameter_deriver, reader_source

__all__ = ["Finding", "verify_store", "format_report", "replay_tolerance"]

#: FAIL lines listed for damaged chunks before the rest are summed up
MAX_CHUNK_LINES = 20


@dataclass
class Finding:
    """One finding of ``verify`` (a line of its report): ``ok`` False fails the store; ``skipped`` marks a check
    that did not run (it does not fail the store, and the report says how to run it)."""

    name: str
    ok: bool
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


def replay_tolerance(ensemble: dict[str, Any]) -> float:
    """Largest |stored - re-computed| probability the replay audit accepts, from the teachers'
    recorded math: float16 storage rounds by <= 2.5e-4; fp32 on another device (TF32 convs on
    CUDA) adds a little; bf16 bodies move near-tied probabilities by a few percent."""
    precision, device = ensemble.get("precision", "fp32"), ensemble.get("device", "cpu")
    if precision == "bf16":
        return 0.25
    return 0.01 if device == "cpu" else 0.05


def _chunk_checks(r: StoreReader, problems: list[Any]) -> list[Finding]:
    """One FAIL line per damaged (array, chunk), then a summary once there are too many."""
    out = [Finding("chunk", False, f"{p}") for p in problems[:MAX_CHUNK_LINES]]
    chunks = sorted({p.chunk for p in problems})
    more = f"{len(problems) - MAX_CHUNK_LINES} more damaged array chunks not listed; " if len(problems) > MAX_CHUNK_LINES else ""
    out.append(
        Finding(
            "chunks",
            False,
            f"{more}{len(chunks)} damaged chunk(s) {chunks[:20]}{'...' if len(chunks) > 20 else ''}: recompute them with the build's "
            f"command plus `--resume --repair` (dr-build reinforce SOURCE --teacher ... --out {r.url} --resume --repair)",
            {"damaged_chunks": chunks, "problems": [str(p) for p in problems]},
        )
    )
    return out


def _integrity(r: StoreReader) -> list[Finding]:
    h = r.header
    n, v = h.dataset.count, h.views
    out: list[Finding] = []
    done = r.done()
    out.append(
        Finding("complete", h.status == "complete" and bool(done.all()), f"status {h.status!r}, {int(done.sum())}/{done.size} chunks done")
    )
    expected = {s.path: (s.shape, s.dtype) for s in array_specs(h)}
    arrays = r.arrays()
    bad = [
        f"{p}: {'missing' if p not in arrays else f'{tuple(arrays[p].shape)} {arrays[p].dtype}'} (expected {s} {d})"
        for p, (s, d) in expected.items()
        if p not in arrays or tuple(arrays[p].shape) != s or str(arrays[p].dtype) != d
    ]
    out.append(Finding("schema", not bad, "; ".join(bad) or f"{len(expected)} arrays with the header's shapes and dtypes ({describe(h)})"))
    if bad:
        return out
    paths = digest_paths(h)
    try:
        derive = parameter_deriver(h)
    except DRError as e:  # derived parameters from another sampler version
        return [*out, Finding("params", False, str(e))]
    data, damaged = r.load_checked(paths, derive=derive)
    if damaged:
        return out + _chunk_checks(r, damaged)
    derived = " (parameters re-derived with the keyed sampler)" if derive is not None else ""
    out.append(
        Finding(
            "chunks", True, f"{int(done.sum())} chunks x {len(paths)} arrays match the digests recorded when they were written{derived}"
        )
    )
    skipped = data[SKIPPED].astype(bool)
    rows = ~skipped & done.repeat(h.chunk_size)[:n]  # chunks not yet written hold fill values
    stored_probs = data[PROBS][rows]
    probs = decode_probs(h, stored_probs)
    ids = data[IDS][rows]
    problems = []
    if stored_probs.dtype.kind == "f" and not np.isfinite(stored_probs).all():
        problems.append("non-finite probabilities")
    if (probs < 0).any() or (probs > 1).any():
        problems.append("probabilities outside [0, 1]")
    if (np.diff(probs, axis=-1) > 0).any():
        problems.append(f"{int((np.diff(probs, axis=-1) > 0).any(-1).sum())} views with unsorted probabilities")
    if (probs.sum(-1) > 1.01).any():
        problems.append("top-k mass above 1")
    if (ids >= h.num_classes).any():
        problems.append(f"class ids >= {h.num_classes}")
    out.append(
        Finding("targets", not problems, "; ".join(problems) or f"{probs.shape[0] * v} views: sorted, in [0, 1], ids < {h.num_classes}")
    )
    out.append(_param_bounds(r, rows, data))
    return out


def _param_bounds(r: StoreReader, ok: np.ndarray, data: dict[str, np.ndarray]) -> Finding:
    h = r.header
    skipped = ~ok
    policy = Policy.from_dict(h.policy)
    raw = {param_name(p): data[p] for p in param_paths(h)}
    params = {k: a.astype(np.int64) if a.dtype.kind in "iu" else a for k, a in raw.items()}
    sizes = data[SIZES].astype(np.int64)
    problems = []
    pad = int(h.policy["crop"].get("padding", 0))
    hh, ww = sizes[:, 0][:, None], sizes[:, 1][:, None]
    for prefix in ("", "partner_") if policy.mix else ("",):
        box = params.get(prefix + "crop_box")
        if box is None:
            continue
        if prefix:
            partner = np.clip(params["mix_partner"] - h.dataset.offset, 0, h.dataset.count - 1)
            hh, ww = sizes[partner, 0], sizes[partner, 1]
            used = (params["mix_kind"] > 0) & ok[:, None]
        else:
            used = np.broadcast_to(ok[:, None], box.shape[:2])
        top, left, bh, bw = np.moveaxis(box, -1, 0)
        inside = (top >= -pad) & (left >= -pad) & (top + bh <= hh + pad) & (left + bw <= ww + pad) & (bh > 0) & (bw > 0)
        if (~inside & used).any():
            problems.append(f"{int((~inside & used).sum())} {prefix}crop boxes outside their image")
    for name in ("erase_box", "mix_box", "partner_erase_box"):
        if name in params:
            t, left_, bh, bw = np.moveaxis(params[name], -1, 0)
            if ((t + bh > h.output_size) | (left_ + bw > h.output_size)).any():
                problems.append(f"{name} outside the {h.output_size}px view")
    for name in ("ra_ops", "partner_ra_ops"):
        if name in params and (params[name] >= len(RA_OPS)).any():
            problems.append(f"{name} has unknown op ids")
    if policy.mix:
        kind, partner = params["mix_kind"], params["mix_partner"].astype(np.int64) - h.dataset.offset  # partners are global indices
        if (kind > 2).any():
            problems.append("mix_kind outside {0, 1, 2}")
        rows = np.arange(h.dataset.count)[:, None] // h.chunk_size
        mixed = kind > 0
        if (((partner < 0) | (partner >= h.dataset.count)) & mixed).any() or ((partner // h.chunk_size != rows) & mixed).any():
            problems.append("mixing partners outside the image's chunk")
        if (skipped[np.clip(partner, 0, h.dataset.count - 1)] & mixed).any():
            problems.append("mixed with a skipped image")
    return Finding(
        "params", not problems, "; ".join(problems) or "crop, erase and mix boxes inside their images; op ids and partners valid"
    )


def verify_store(
    url: str | Location,
    source: Any = None,
    *,
    teachers: list[str] | None = None,
    fraction: float = 0.01,
    min_views: int = 64,
    max_views: int = 4096,
    content: str = "sample",
    seed: int = 0,
    storage_options: dict[str, Any] | None = None,
    max_dp: float | None = None,
    trust_store_teachers: bool = False,
    min_agreement: float | None = None,
    trust_store_location: bool = False,
) -> list[Finding]:
    """Run every check; returns them (``all(c.ok for c in checks)`` means the store is sound).

    A store is data: the replay audit runs the teachers given in ``teachers`` (the user's own
    specs), and loads the teachers named in the store's header only with
    ``trust_store_teachers=True`` -- a ``python:`` spec imports and runs a module, a
    ``torchscript:``/``export:`` spec runs a program, so a downloaded store must not choose
    them. Without either, the audit is reported as skipped, with how to run it.

    Nor does a store steer reads: a recorded source location is opened by the readers' rule
    (:func:`dr.views.reader_source`), else the ``source`` check fails, naming it and the fix.

    Args:
        url: the store (path, fsspec URL or :class:`~dr.urls.Location`).
        source: the store's source; for an extended store one entry per segment (``None``: the
            location the segment records, by the rule above). Default: the recorded locations.
        teachers: teacher specs for the replay audit.
        fraction: share of views re-labelled (at least ``min_views``, at most ``max_views``).
        min_views: fewest views re-labelled.
        max_views: most views re-labelled.
        content: re-hash a ``sample`` of source files, ``all`` or ``none``.
        seed: seed of the audit's sample.
        storage_options: fsspec options for a remote store or source given by path or URL.
        max_dp: the largest |stored - re-computed| probability the audit accepts (default:
            :func:`replay_tolerance` of the store's recorded teacher precision and device).
        trust_store_teachers: load the teachers named in the header when ``teachers`` is empty.
        min_agreement: the ``labels`` check's threshold (default: twice chance; 0: not judged
            unless the store has a class map). Never read from the store.
        trust_store_location: open the source locations the store records whatever they are
            (URLs, source specs, paths anywhere): only for a store you trust.

    Returns:
        Every check. Damaged chunks come back as one failed ``chunk`` check each, never as an
        exception; a segment table that disagrees with the segment stores is a failed
        ``segments`` check.

    Raises:
        ConfigError: ``source`` is not one entry per segment of an extended store.
        StoreError: not a store, or a header whose sealed fields were edited.
    """
    audit: dict[str, Any] = dict(
        teachers=teachers,
        fraction=fraction,
        min_views=min_views,
        max_views=max_views,
        content=content,
        seed=seed,
        max_dp=max_dp,
        trust_store_teachers=trust_store_teachers,
        min_agreement=min_agreement,
        trust_store_location=trust_store_location,
    )
    loc = Location.of(url, storage_options)
    url = loc.url
    try:
        table = read_segment_table(loc)
    except DRError as e:  # segment stores without a table, an unlisted complete segment, a malformed table
        return [Finding("segments", False, str(e))]
    if not table:
        if isinstance(source, (list, tuple)):
            if len(source) != 1:
                raise ConfigError(f"store {url!r} has one segment (it was never extended): pass one source, not {len(source)}")
            source = source[0]
        return _verify_segment(loc, StoreReader(loc, allow_incomplete=True), source, None, **audit)
    return _verify_segments(loc, len(table) + 1, source, audit)


def _verify_segments(loc: Location, parts: int, source: Any, audit: dict[str, Any]) -> list[Finding]:
    """Every check of an extended store: the segment table, then each segment's checks."""
    if source is not None and (not isinstance(source, (list, tuple)) or len(source) != parts):
        raise ConfigError(
            f"store {loc.url!r} has {parts} segments: pass one source per segment, in order (None: the location a segment records)"
        )
    checks: list[Finding] = [_segments_check(loc, parts)]
    for i in range(parts):
        r = StoreReader(loc if i == 0 else segment_location(loc, i), allow_incomplete=True)
        given = [None] * parts if source is None else list(source)
        checks += [replace(c, detail=f"segment {i}: {c.detail}") for c in _verify_segment(loc, r, given, [i], **audit)]
    return checks


def _segments_check(loc: Location, parts: int) -> Finding:
    """Do the segment table and the segment stores agree, as a reader needs them to?"""
    try:
        whole = SegmentedStore(loc)
    except DRError as e:
        return Finding("segments", False, str(e))
    left = parts - len(whole.segments)
    more = f"; {left} still building (not served until complete)" if left else ""
    return Finding("segments", True, f"{len(whole.segments)} complete segment(s), {whole.count} images; the table agrees with them{more}")


def _verify_segment(
    loc: Location,
    r: StoreReader,
    source: Any,
    segments: list[int] | None,
    *,
    teachers: list[str] | None,
    fraction: float,
    min_views: int,
    max_views: int,
    content: str,
    seed: int,
    max_dp: float | None,
    trust_store_teachers: bool,
    min_agreement: float | None,
    trust_store_location: bool,
) -> list[Finding]:
    """Every check of one store (a segment of the store at ``loc`` when ``segments`` names it;
    ``source`` is then one entry per segment)."""
    url = loc.url
    checks = _integrity(r)
    if not all(c.ok for c in checks):
        return checks
    from dr.dataset import ReinforcedDataset

    h = r.header
    try:
        if segments is None:
            source = reader_source(url, h, source, trust_store_location=trust_store_location)
        else:  # the readers are given the segment's source: the rule is applied here, with the base store as root
            i = segments[0]
            source[i] = reader_source(r.url, h, source[i], root=url, trust_store_location=trust_store_location)
        ds = ReinforcedDataset(
            loc,
            source,
            transform=lambda v: v,
            verify_source=content,  # type: ignore[arg-type]
            segments=segments,
        )
        checks.append(Finding("source", True, f"{h.dataset.count} images; count, classes, labels and content hashes ({content}) match"))
    except DRError as e:
        checks.append(Finding("source", False, str(e)))
        return checks
    from dr.audit.agreement import label_agreement

    checks.append(Finding("labels", *label_agreement(r, min_agreement)))
    audit = _audit_ensemble(h, teachers, trust_store_teachers)
    if isinstance(audit, Finding):
        checks.append(audit)
        return checks
    checks.append(_replay_audit(ds, audit, np.random.default_rng(seed), fraction, min_views, max_views, max_dp))
    return checks


def _audit_ensemble(h: Any, teachers: list[str] | None, trust_store_teachers: bool) -> Any:
    """The replay audit's teachers (the user's specs, or the header's when trusted), or the
    finding that says why the audit does not run."""
    from dr.teachers import ClassMap, Ensemble

    recorded = h.ensemble.get("teachers", [])
    if not teachers and not trust_store_teachers:
        return Finding(
            "replay",
            True,
            "skipped: the audit runs teachers, and a store never chooses code to run. Pass the teachers yourself "
            "(--teacher SPEC, as built) or, for a store you trust, --trust-store-teachers (loads the "
            f"{len(recorded)} spec(s) in its header; python:, torchscript: and export: specs run code)",
            skipped=True,
        )
    specs = teachers or [t["spec"] for t in recorded]
    seeds = [t.get("init_seed") for t in recorded]  # random teachers are rebuilt with their recorded seeds
    try:
        return Ensemble.from_specs(
            specs,
            float(h.ensemble.get("temperature", 1.0)),
            h.ensemble.get("precision", "fp32"),  # the build's arithmetic (bf16 on CPUs too)
            allow_random=any(s is not None for s in seeds),
            init_seeds=[s or 0 for s in seeds] if len(seeds) == len(specs) else None,
            class_map=ClassMap.from_dict(h.ensemble.get("class_map")),
        )
    except DRError as e:
        return Finding("replay", False, f"cannot load the teachers for the audit ({e}); pass --teacher SPEC")


def _replay_audit(
    ds: Any, ensemble: Any, rng: np.random.Generator, fraction: float, min_views: int, max_views: int, max_dp: float | None
) -> Finding:
    """Re-label a sample of stored views with ``ensemble`` and compare with the stored targets."""
    h = ds.header
    total = len(ds) * h.views
    count = int(min(max(min_views, round(fraction * total)), max_views, total))
    agree, kls, max_abs = 0, [], 0.0
    for flat in rng.choice(total, size=count, replace=False):
        same_top1, kl, dp = _replay_view(ds, ensemble, int(flat))
        agree += same_top1
        kls.append(kl)
        if math.isfinite(max_abs):  # a NaN, once seen, stays (it must fail the check)
            max_abs = dp if not math.isfinite(dp) else max(max_abs, dp)
    agreement = agree / count
    mean_kl = float(np.mean(kls))
    tol = replay_tolerance(h.ensemble) if max_dp is None else float(max_dp)
    ok = agreement >= 0.98 and mean_kl <= 0.01 and math.isfinite(max_abs) and max_abs <= tol  # NaN fails
    return Finding(
        "replay",
        ok,
        f"{count} views re-labelled: top-1 agreement {100 * agreement:.2f}% (>= 98%), mean KL {mean_kl:.2e} (<= 0.01), "
        f"max |dp| {max_abs:.3g} (<= {tol:g})",
        {"views": count, "top1_agreement": agreement, "mean_kl": mean_kl, "max_abs_prob_diff": max_abs, "max_dp_tolerance": tol},
    )


def _replay_view(ds: Any, ensemble: Any, flat: int) -> tuple[int, float, float]:
    """One stored view replayed through the teachers: (same top-1, KL, max |dp|)."""
    item, view = divmod(flat, ds.header.views)
    index = int(ds.indices[item])
    params, ids, probs = ds.record(index, view)
    images, partner = [ds.image(index)], None
    if "mix_kind" in params and int(params["mix_kind"][0]):
        images.append(ds.image(int(params["mix_partner"][0]) - ds.header.dataset.offset))
        partner = np.ones(1, dtype=np.int64)
    replayed = ds.policy.replay(images, params, np.zeros(1, dtype=np.int64), partner_index=partner)
    with torch.inference_mode():
        q = ensemble(replayed)[0].double()
    p = torch.from_numpy(probs.astype(np.float64))
    t_ids = torch.from_numpy(ids.astype(np.int64))
    # KL of the stored top-k plus one "rest" bucket against the same buckets of the re-run: a
    # true divergence, >= 0 (a top-k-only sum goes negative when float16 rounds p down); the
    # clamp only absorbs p summing a hair above 1 after rounding.
    qk = q[t_ids]
    p_rest, q_rest = max(0.0, 1.0 - float(p.sum())), max(0.0, 1.0 - float(qk.sum()))
    kl = float((p * (p.clamp_min(1e-12).log() - qk.clamp_min(1e-12).log())).sum())
    kl += p_rest * (math.log(p_rest) - math.log(max(q_rest, 1e-12))) if p_rest > 0 else 0.0
    return int(int(q.argmax()) == int(t_ids[0])), max(0.0, kl), float((p - qk).abs().max())


def format_report(url: str, checks: list[Finding]) -> str:
    """The human-readable report: one PASS/FAIL/SKIP line per check and a verdict."""
    lines = [f"verify {url}"]
    lines += [f"  {'SKIP' if c.skipped else 'PASS' if c.ok else 'FAIL'}  {c.name:<9} {c.detail}" for c in checks]
    skipped = [c.name for c in checks if c.skipped]
    if not all(c.ok for c in checks):
        lines.append("FAILED: see the lines marked FAIL")
    elif skipped:
        lines.append(f"OK: the store is complete and sound in every check that ran ({', '.join(skipped)} skipped: see SKIP)")
    else:
        lines.append("OK: the store is complete and sound")
    return "\n".join(lines)
