"""``--extend``: add a source's images to a complete store as a new segment.

The extension is an ordinary build of the new images into ``STORE/segments/<i>`` (resumable,
kill-safe, digested, verified) whose header has the base store's settings and
``dataset.offset`` = the images already in the store, so its views and targets are those a
one-shot build over all the images would hold (see :mod:`dr.storage.segments`). Settings come
from the base header; flags that repeat them must agree; the teachers are given again and must
be the base's (same weights, same math).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from dr.builder.config import BuildConfig
from dr.errors import BadImageError, ConfigError, StoreMismatchError
from dr.sources import content_digest, open_source
from dr.storage import StoreHeader, StoreReader, now_iso
from dr.storage.layout import DIGESTS, SKIPPED, probs_dtype
from dr.storage.segments import SegmentRecord, extension_problems, read_segment_table, segment_location, write_segment_table

__all__ = ["Extension", "extension_settings", "finish_extension", "plan_extension", "refuse_duplicates"]


def _extended(config: BuildConfig) -> str:
    """The store ``config`` extends."""
    if config.extend is None:
        raise ConfigError("this build extends no store: pass --extend STORE (extend= in the config)")
    return config.extend


def _header_settings(header: StoreHeader) -> dict[str, Any]:
    """The build settings an extension takes from the store's header (config field -> value)."""
    return {
        "policy": header.policy.get("name"),
        "crop_scale": _crop_scale(header.policy),
        "views": header.views,
        "topk": header.topk,
        "seed": header.seed,
        "chunk_size": header.chunk_size,
        "forward_group": header.forward_group,
        "output_size": header.output_size,
        "temperature": header.ensemble.get("temperature", 1.0),
        "compile": bool(header.ensemble.get("compile", False)),
        # the store layout: a segment is kept like the store it extends
        "shard_images": (header.layout.shard_images or 0) if header.layout is not None else 0,
        "probs_dtype": probs_dtype(header),
        "params": header.layout.params if header.layout is not None else "stored",
    }


def _crop_scale(policy: dict[str, Any]) -> float | None:
    """The lower bound of the policy's random-resized-crop area (``None``: its crop has no scale)."""
    scale = (policy.get("crop") or {}).get("scale")
    return float(scale[0]) if scale else None


def extension_settings(config: BuildConfig) -> BuildConfig:
    """``config`` with the settings of the store it extends: the base header's policy, V, k,
    seed, chunking, output size, temperature and compile flag, and ``out`` = the store.

    A setting given explicitly (in ``config.model_fields_set``) must equal the header's.

    Raises:
        ConfigError: a given setting differs from the store's (named, with both values), or
            ``--out`` names another store.
        StoreError: the store is missing, not a dr store, or not complete.
    """
    store = _extended(config)
    header = StoreReader(config.location(store)).header
    stored = _header_settings(header)
    given = config.model_fields_set
    differ = [
        f"--{k.replace('_', '-')} {getattr(config, k)!r} (the store has {v!r})"
        for k, v in stored.items()
        if k in given and getattr(config, k) != v
    ]
    if "out" in given and config.out != store:
        differ.append(f"--out {config.out!r} (an extension is written into the store it extends, {store!r})")
    if differ:
        raise ConfigError(
            f"--extend {store!r}: an extension is built with the store's own settings, but "
            + "; ".join(differ)
            + ". Leave these flags out (they come from the store's header) or build a new store"
        )
    return config.model_copy(update={**stored, "out": store})


@dataclass(frozen=True)
class Extension:
    """Where an extension goes: the segment's number, its store URL, its first global index,
    the base header and the segment table (with this segment's row once :func:`plan_extension`
    recorded it)."""

    index: int
    url: str
    offset: int
    base: StoreHeader
    table: tuple[SegmentRecord, ...]


def plan_extension(config: BuildConfig, header: StoreHeader, source: Any = None) -> Extension:
    """Check that ``header`` (the new segment's, offset 0) may extend ``config.extend`` and
    record the segment in the table (status ``building``); a resumed extension continues the
    segment that is still building.

    Before a new segment is recorded, the content digest of every new image is compared with
    those the store holds (``source/digests`` of every segment): the same images twice -- a
    copy, a symbolic link, another folder or list naming the same files -- are refused before
    anything is written. This reads the new images' bytes once in the driver (threads, no
    decoding). A resumed extension was checked when it was planned.

    Args:
        config: the build's configuration (``extend`` names the store).
        header: the new segment's header (offset 0).
        source: the opened new source (default: ``config.source``, opened here).

    Raises:
        StoreMismatchError: a setting or the teachers differ from the store's (each named), the
            classes do not extend the store's, the same source or the same images (by content
            digest) were already added, or another extension is still building.
    """
    store = _extended(config)
    where = config.location(store)
    base = StoreReader(where).header
    table = read_segment_table(where)
    offset = base.dataset.count + sum(r.count for r in table)
    building = table[-1] if table and table[-1].status == "building" else None
    ds = header.dataset
    if building is not None and config.overwrite:  # start the unfinished extension again
        table, offset, building = table[:-1], offset - building.count, None
    if building is not None:
        same = building.labels_sha256 == ds.labels_sha256 and building.count == ds.count
        if not same:
            raise StoreMismatchError(
                f"--extend {store!r}: segment {building.index} (from {building.location}) is still building; finish it first "
                "(its command again with --resume), or replace it with --overwrite -- one extension at a time"
            )
        if not config.resume:
            raise StoreMismatchError(
                f"--extend {store!r}: segment {building.index} from this source is still building: add --resume to finish it"
            )
        offset -= building.count
    for j, (loc, labels, count) in enumerate(
        [(base.dataset.location, base.dataset.labels_sha256, base.dataset.count)]
        + [(r.location, r.labels_sha256, r.count) for r in table if r is not building]
    ):
        if loc == ds.location and labels == ds.labels_sha256 and count == ds.count:
            if j and config.resume:  # --resume (--repair) of a segment that is complete: check / recompute its chunks
                rec = table[j - 1]
                _refuse_mismatch(
                    store, base, header.model_copy(update={"dataset": ds.model_copy(update={"offset": rec.offset})}), rec.offset
                )
                return Extension(j, segment_location(where, j).url, rec.offset, base, tuple(table))
            fix = (
                " (to repair it: this command with --resume --repair)"
                if j
                else " (to repair it: its own build command with --resume --repair)"
            )
            raise StoreMismatchError(f"--extend {store!r}: {ds.location} is already in the store (segment {j}){fix}; add new images only")
    _refuse_mismatch(store, base, header.model_copy(update={"dataset": ds.model_copy(update={"offset": offset})}), offset)
    index = building.index if building is not None else len(table) + 1
    if building is None:
        held = [(0, StoreReader(where))]
        held += [(r.index, StoreReader(segment_location(where, r.index))) for r in table if r.status == "complete"]
        refuse_duplicates(store, held, source if source is not None else open_source(config.source, config.storage_options))
        row = SegmentRecord(
            index=index,
            path=f"segments/{index}",
            offset=offset,
            count=ds.count,
            kind=ds.kind,
            labels_sha256=ds.labels_sha256,
            location=ds.location,
            status="building",
            added_at=now_iso(),
        )
        table = [*table, row]
        write_segment_table(where, table)
    return Extension(index, segment_location(where, index).url, offset, base, tuple(table))


def _digest_of(source: Any, index: int) -> bytes | None:
    """Image ``index``'s content digest as a build records it (``None``: unreadable, a bad image
    the build itself will skip or refuse)."""
    try:
        read_bytes = getattr(source, "read_bytes", None)
        return content_digest(read_bytes(index)) if read_bytes is not None else bytes(source.read(index)[1])
    except BadImageError:
        return None


def refuse_duplicates(store: str, held: list[tuple[int, StoreReader]], source: Any) -> None:
    """Refuse a new source holding images a store already holds, by content digest.

    Args:
        store: the store being extended (for messages).
        held: ``(segment number, reader)`` of every complete segment of the store.
        source: the new images.

    Raises:
        StoreMismatchError: how many new images the store already holds, the first of them and
            where the store holds it, and the fix.
    """
    known = []
    for number, reader in held:
        rows, _ = reader.load_checked([DIGESTS, SKIPPED])
        digests = np.ascontiguousarray(rows[DIGESTS]).view("S16").reshape(-1)  # 16 bytes per image, compared as one
        keep = np.flatnonzero((rows[SKIPPED] == 0) & (digests != b""))  # skipped images hold a zero digest
        known.append((number, digests[keep], keep))
    existing = np.concatenate([d for _, d, _ in known])
    threads = min(16, 4 * (os.cpu_count() or 1)) if hasattr(source, "read_bytes") else 1  # files: I/O on threads; objects: in turn
    with ThreadPoolExecutor(max_workers=threads) as pool:
        fresh = np.asarray([d or b"" for d in pool.map(lambda i: _digest_of(source, i), range(len(source)))], dtype="S16")
    dup = np.flatnonzero(np.isin(fresh, existing) & (fresh != b""))
    if len(dup):
        seg, row = next((n, int(at[d == fresh[dup[0]]][0])) for n, d, at in known if (d == fresh[dup[0]]).any())
        raise StoreMismatchError(
            f"--extend {store!r}: {len(dup)} of the {len(source)} new images are already in the store (the same content digest), "
            f"e.g. {source.describe(int(dup[0]))} is image {row} of segment {seg}. The same images twice would be served twice "
            "as often (a copy or a symbolic link is the same image): extend with new images only -- remove these from the new "
            "source, or list the others (list:FILE.csv)"
        )


def _refuse_mismatch(store: str, base: StoreHeader, new: StoreHeader, offset: int) -> None:
    problems = extension_problems(base, new, offset)
    if problems:
        raise StoreMismatchError(
            f"--extend {store!r}: this build differs from the store's: "
            + "; ".join(problems)
            + ". An extension needs the store's teachers (the same weights, on the same device kind) and settings"
        )


def finish_extension(config: BuildConfig, ext: Extension) -> None:
    """Mark the extension's segment complete in the table (after its store was finalised)."""
    rows = [r.model_copy(update={"status": "complete", "completed_at": now_iso()}) if r.index == ext.index else r for r in ext.table]
    write_segment_table(config.location(_extended(config)), rows)
