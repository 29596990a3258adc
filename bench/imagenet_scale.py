#!/usr/bin/env python
"""ImageNet-scale rehearsal on a CPU: does a build, its store and its readers stay flat in N?

A synthetic ImageNet-shaped source -- 1,281,167 64-px JPEGs in 1,000 classes, 1,000 samples
per WebDataset shard, every pixel a function of (seed, image index) -- is reinforced by
``dr-build reinforce`` on its private local Ray with a teacher that costs almost nothing
(``pooled_projection``: 4x4 average pool + a fixed random 1,000-class projection), so what is
measured is everything else a build does: indexing, decoding, sampling, replay, top-k and
store writes. ``rrc`` views at 32 px, V = 10, k = 10, uint8 probabilities, dr's default shards.

    .venv/bin/python bench/imagenet_scale.py all --workdir W [--quick | --tiny] [--out FILE]
    .venv/bin/python bench/imagenet_scale.py STAGE --workdir W [--quick | --tiny]

Stages, each cached in W (a stage that finished is skipped; an interrupted one starts over,
the data stage per shard), in order:

* ``data``: the WebDataset shards (``W/wds/shard-NNNNNN.tar``, keys ``{index:08d}``, image i
  in class ``i * 1000 // N_TOTAL``), made by a pool of 2 processes.
* ``build``: one store per N of the subsets (the first 50 / 320 shards), each read from disk
  (the shards' page cache dropped first, as before every build here): views/s, working
  views/s (from the moment the workers are up), driver and teacher-worker peak RSS (VmHWM,
  polled from /proc every 0.5 s), the build tree's CPU seconds and the load average.
* ``resume``: the full source (N = 1,281,167), SIGKILLed at about half of its chunks, then
  ``--resume``d: seconds from the restart to the first new chunk in ``build/done``; the
  full-N rate is the resumed part's working views/s (the first half's, from the done counts
  over time, is recorded too).
* ``v400``: V = 400 at N = 10,000 (ImageNet+'s largest V): rate, bytes/view, objects.
* ``measure``: on the full-N store: objects per array and in all, bytes/view and the time of
  ``dr-build info`` (median of 3), of ``verify --fraction 0.01`` (with the teacher, so the
  replay audit runs), of opening ``ReinforcedDataset`` in a fresh process (twice: first and
  second open; the goal applies to the second) and one partial epoch's images/s (the first
  100,000 items of ``ds.sampler(seed=0)``, DataLoader with 2 workers, batch 256) in memory
  and at a 256 MB metadata budget (read by chunk), each mode in a fresh process.
* ``report``: the JSON (default ``bench/results/imagenet-scale-cpu.json``), the goals and a
  projection to 10^9 images; prints a table.

Goals (issue): full-N rate >= 0.9x the 50 k rate; driver peak RSS flat in N and <= 1.5 GB;
<= 64 objects per array; resume to the first new chunk <= 30 s; Dataset open <= 5 s.

Presets: the default is the full rehearsal (hours of CPU on 2 cores: run it on an idle
machine). ``--quick`` (20,000 images, N = 5 k / 10 k / 20 k, V = 400 at 1,000 images) and
``--tiny`` (3,000 images, N = 1 k / 3 k, V = 400 at 50 images; what the test runs) are scale models: 1,000 classes as well, store
shards of 1,024 / 256 images (so N_max has ~20 / 12 objects per array, like ImageNet's 20 at
the default 65,536) and the metadata budget scaled by N_TOTAL / 1,281,167 (so it reads by
chunk as 256 MB does at full scale). Their goals are reported but mean little. They write
into W only, unless ``--out`` is given.

The last line of the output is the report JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
DEFAULT_OUT = REPO / "bench" / "results" / "imagenet-scale-cpu.json"
IMAGENET = 1_281_167
STAGES = ("data", "build", "resume", "v400", "measure", "report")
TEACHER = "python:dr.teachers.zoo:pooled_projection?num_classes={classes}&input_size=32"
OUTPUT_SIZE, TOPK, CHUNK = 32, 10, 256  # CHUNK: dr-build's default chunk size, passed explicitly
BUDGET_FULL = 256 << 20
TEACHER_VIEWS_PER_S = 2000.0  # an assumption (ResNet-50-class teacher, 224 px, bf16, one GPU)
MB = 1 << 20


@dataclass(frozen=True)
class Preset:
    """The sizes of one rehearsal."""

    name: str
    total: int  # images in the synthetic source
    sizes: tuple[int, ...]  # N of the V = 10 builds; the last is the whole source (the resume stage)
    v400_images: int
    epoch_items: int  # items of the partial epoch, per mode
    shard_images: int | None  # store shard size (None: dr's default, ~65,536 images)
    per_shard: int = 1000  # samples per WebDataset shard
    classes: int = 1000
    image_size: int = 64

    @property
    def budget(self) -> int:
        """The metadata budget of the by-chunk mode: 256 MB, scaled to the source's size."""
        return BUDGET_FULL if self.total >= IMAGENET else max(1, BUDGET_FULL * self.total // IMAGENET)


PRESETS = {
    "full": Preset("full", IMAGENET, (50_000, 320_000, IMAGENET), 10_000, 100_000, None),
    "quick": Preset("quick", 20_000, (5_000, 10_000, 20_000), 1_000, 5_000, 1024),
    "tiny": Preset("tiny", 3_000, (1_000, 3_000), 50, 1_000, 256, per_shard=50),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def save_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- data --------------------------------------------------------------------------------------------


def label_of(index: int, p: Preset) -> int:
    return index * p.classes // p.total


def synth_jpeg(seed: int, index: int, label: int, size: int) -> bytes:
    """Image ``index``: its class's colour plus a seeded 4x4 grid, upsampled (small JPEGs)."""
    colour = np.random.default_rng([seed, 1, label]).integers(48, 208, 3)
    grid = np.random.default_rng([seed, 0, index]).integers(-56, 57, (4, 4, 3)) + colour
    img = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8), "RGB").resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tf.addfile(info, io.BytesIO(data))


def write_shard(job: tuple[str, str, int, int]) -> int:
    """Write one shard (to a temporary name, then renamed); returns its JPEG bytes (0: it existed)."""
    root, preset, seed, shard = job
    p = PRESETS[preset]
    final = Path(root) / f"shard-{shard:06d}.tar"
    if final.exists():
        return 0
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    jpeg_bytes = 0
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(shard * p.per_shard, min((shard + 1) * p.per_shard, p.total)):
            label = label_of(i, p)
            data = synth_jpeg(seed, i, label, p.image_size)
            jpeg_bytes += len(data)
            _tar_add(tf, f"{i:08d}.jpg", data)
            _tar_add(tf, f"{i:08d}.cls", str(label).encode())
    os.replace(tmp, final)
    return jpeg_bytes


def n_shards(p: Preset, images: int) -> int:
    return -(-images // p.per_shard)


def evict_source(w: Path, p: Preset, images: int) -> None:
    """Drop the page cache of the first ``images`` images' shards (``posix_fadvise``
    DONTNEED), so every build reads its source from disk: one build's reads never speed up the
    next."""
    for s in range(n_shards(p, images)):
        fd = os.open(w / "wds" / f"shard-{s:06d}.tar", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def source_spec(w: Path, p: Preset, images: int) -> str:
    """The wds: spec of the first ``images`` images (whole shards), with the 1,000 class names."""
    last = n_shards(p, images) - 1
    return f"wds:{w / 'wds'}/shard-{{000000..{last:06d}}}.tar?label=cls&classes={w / 'wds' / 'classes.txt'}"


def stage_data(w: Path, p: Preset, seed: int) -> dict[str, Any]:
    done = w / "data.json"
    if done.exists():
        return load_json(done)
    root = w / "wds"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("*.tmp*"):
        stale.unlink()
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in range(p.classes)))
    shards = n_shards(p, p.total)
    log(f"data: {p.total:,} images in {shards:,} shards -> {root}")
    t0, made, jpeg_bytes = time.perf_counter(), 0, 0
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for i, b in enumerate(pool.imap_unordered(write_shard, [(str(root), p.name, seed, s) for s in range(shards)], chunksize=4)):
            made, jpeg_bytes = made + (b > 0), jpeg_bytes + b
            if (i + 1) % 100 == 0:
                log(f"data: {i + 1:,}/{shards:,} shards")
    seconds = time.perf_counter() - t0
    sample = [root / f"shard-{s:06d}.tar" for s in np.linspace(0, shards - 1, min(shards, 8)).astype(int)]
    sizes = [m.size for f in sample for m in tarfile.open(f) if m.name.endswith(".jpg")]
    info = {
        "images": p.total,
        "classes": p.classes,
        "shards": shards,
        "per_shard": p.per_shard,
        "image_size": p.image_size,
        "seed": seed,
        "jpeg_bytes_mean": round(statistics.mean(sizes), 1),
        "tar_bytes": sum(f.stat().st_size for f in root.glob("shard-*.tar")),
        "seconds": round(seconds, 1),
        "shards_made_this_run": made,
        "made_at": now(),
    }
    save_json(done, info)
    return info


# -- watching a build -----------------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:  # the process is gone
        return None


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _read(f"/proc/{name}/stat")
        if stat is None:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a private local Ray's raylet and workers are the driver's)."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def proc_info(pid: int) -> tuple[str, int, int] | None:
    """(argv[0], VmHWM in kB, CPU ticks) of a live process."""
    cmd, status, stat = _read(f"/proc/{pid}/cmdline"), _read(f"/proc/{pid}/status"), _read(f"/proc/{pid}/stat")
    if cmd is None or status is None or stat is None:
        return None
    hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    fields = stat.rsplit(")", 1)[1].split()
    return cmd.split("\0")[0], hwm, int(fields[11]) + int(fields[12])


def done_count(store: Path) -> int:
    """Chunks written so far: the sum of the store's done map (0 before it exists)."""
    import zarr

    from dr.storage.layout import DONE

    if not (store / DONE / "zarr.json").exists():
        return 0
    try:
        return int(np.asarray(zarr.open_array(str(store / DONE), mode="r")[:]).sum())
    except (OSError, ValueError, KeyError):  # caught mid-creation: count it next time
        return 0


@dataclass
class Watch:
    """What polling /proc (and the store's done map) saw during one build process."""

    pid: int
    driver_hwm_kb: int = 0
    worker_hwm_kb: int = 0
    workers: set[int] = field(default_factory=set)
    ticks: dict[int, int] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)
    done: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, count) at each change
    pids: set[int] = field(default_factory=set)

    def sample(self, store: Path | None, t: float) -> None:
        """Poll /proc for the build tree; read the done map too when ``store`` is given (the
        done map of a 1.28 M-image store is 20 objects: ~7 ms of the bench's CPU a read)."""
        for pid in tree(self.pid):
            got = proc_info(pid)
            if got is None:
                continue
            cmd, hwm, ticks = got
            self.pids.add(pid)
            self.ticks[pid] = ticks
            if pid == self.pid:
                self.driver_hwm_kb = max(self.driver_hwm_kb, hwm)
            elif cmd.startswith("ray::UnitWorker"):
                self.workers.add(pid)
                self.worker_hwm_kb = max(self.worker_hwm_kb, hwm)
        self.loads.append(os.getloadavg()[0])
        if store is not None:
            n = done_count(store)
            if not self.done or n != self.done[-1][1]:
                self.done.append((round(t, 2), n))

    @property
    def last_done(self) -> int:
        return self.done[-1][1] if self.done else 0

    def summary(self) -> dict[str, Any]:
        return {
            "driver_peak_rss_mb": round(self.driver_hwm_kb / 1024, 1),
            "worker_peak_rss_mb": round(self.worker_hwm_kb / 1024, 1),
            "teacher_workers": len(self.workers),
            "cpu_s": round(sum(self.ticks.values()) / TICK, 1),
            "load_avg_1min": {
                "start": round(self.loads[0], 2) if self.loads else None,
                "mean": round(statistics.mean(self.loads), 2) if self.loads else None,
                "max": round(max(self.loads), 2) if self.loads else None,
            },
        }


def fresh(store: Path) -> Path:
    """``store`` removed when a stage builds it anew: the watcher counts its done chunks, and a
    store left by an earlier run would read as done before ``--overwrite`` replaced it."""
    if store.exists():
        shutil.rmtree(store)
    return store


def build_cmd(w: Path, p: Preset, images: int, views: int, store: Path) -> list[str]:
    cmd = [sys.executable, "-m", "dr.cli.main", "reinforce", source_spec(w, p, images)]
    cmd += ["--teacher", TEACHER.format(classes=p.classes), "--allow-random-teachers", "--policy", "rrc"]
    cmd += ["--output-size", str(OUTPUT_SIZE), "--views", str(views), "--topk", str(TOPK), "--probs-dtype", "uint8"]
    cmd += ["--chunk-size", str(CHUNK)]
    cmd += ["--out", str(store), "--json", "-q"]
    return cmd + (["--shard-images", str(p.shard_images)] if p.shard_images else [])


def last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    return None


DONE_EVERY = 2.0  # seconds between the watcher's reads of a build's done map (every poll while waiting for a resume's first chunk)


def watch_build(
    cmd: list[str], store: Path, logs: Path, *, poll: float = 0.5, kill_at: int | None = None, first_after: int | None = None
) -> dict[str, Any]:
    """Run one build process, polling it; SIGKILL it once ``kill_at`` chunks are done, or note
    when the done count first exceeds ``first_after``."""
    logs.parent.mkdir(parents=True, exist_ok=True)
    with open(logs.with_suffix(".out"), "w") as out, open(logs.with_suffix(".err"), "w") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO)
        watch, killed, first, last_read = Watch(proc.pid), False, None, -DONE_EVERY
        while proc.poll() is None:
            t = time.monotonic() - t0
            read = t - last_read >= DONE_EVERY or (first_after is not None and first is None)
            watch.sample(store if read else None, t)
            last_read = t if read else last_read
            if first_after is not None and first is None and watch.last_done > first_after:
                first = time.monotonic() - t0
            if kill_at is not None and watch.last_done >= kill_at:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(poll)
        rc = proc.wait()
        seconds = time.monotonic() - t0
        if not killed:  # the last chunks (and a resume's first) may land between two polls
            watch.sample(store, seconds)
            if first_after is not None and first is None and watch.last_done > first_after:
                first = seconds
    result = last_json(logs.with_suffix(".out").read_text())
    if not killed and (rc != 0 or result is None or not result.get("ok", True)):
        raise SystemExit(f"build failed (exit {rc}): {' '.join(cmd)}\n{logs.with_suffix('.err').read_text()[-3000:]}")
    return {"rc": rc, "killed": killed, "seconds": round(seconds, 2), "first_new_chunk_s": first, "result": result, "watch": watch}


def run_record(images: int, views: int, run: dict[str, Any]) -> dict[str, Any]:
    """One ``runs`` entry: a finished build's figures."""
    r, watch = run["result"], run["watch"]
    rec = {
        "images": images,
        "views": views,
        "views_computed": r["views_computed"],
        "seconds": r["seconds"],
        "wall_s": run["seconds"],
        "views_per_s": r["views_per_second"],
        "working_views_per_s": r["working_views_per_second"],
        "chunks_total": r["chunks_total"],
        "chunks_computed": r["chunks_computed"],
        **watch.summary(),
    }
    rec["views_per_cpu_s"] = round(r["views_computed"] / rec["cpu_s"], 1) if rec["cpu_s"] else None
    rec["views_per_s_by_tenth"] = rate_by_tenth(watch.done, views)
    rec["finished_at"] = now()
    return rec


def rate_by_tenth(done: list[tuple[float, int]], views: int) -> list[float | None]:
    """Views/s over each tenth of the chunks a build wrote (from the done counts the watcher saw,
    every DONE_EVERY seconds): a rate that falls within one run shows here."""
    points = [(t, c) for t, c in done if c > 0]
    if len(points) < 2:
        return []
    c0, c1 = points[0][1], points[-1][1]
    out: list[float | None] = []
    for k in range(10):
        lo, hi = c0 + (c1 - c0) * k / 10, c0 + (c1 - c0) * (k + 1) / 10
        seg = [(t, c) for t, c in points if lo <= c <= hi]
        if len(seg) < 2 or seg[-1][0] <= seg[0][0]:
            out.append(None)
        else:
            out.append(round((seg[-1][1] - seg[0][1]) * CHUNK * views / (seg[-1][0] - seg[0][0]), 1))
    return out


SMALL_REPEATS = 3  # the smallest N's build is short (under a minute): its rate is the median of this many builds


def stage_build(w: Path, p: Preset) -> list[dict[str, Any]]:
    records = []
    for i, n in enumerate(p.sizes[:-1]):
        path = w / "runs" / f"build-{n}-v10.json"
        if not path.exists():
            reps = []
            for r in range(SMALL_REPEATS if i == 0 else 1):
                store = fresh(w / f"store-{n}.zarr")
                log(f"build: N = {n:,}, V = 10 -> {store}" + (f" (build {r + 1} of {SMALL_REPEATS})" if i == 0 else ""))
                evict_source(w, p, n)
                run = watch_build(build_cmd(w, p, n, 10, store) + ["--overwrite"], store, w / "logs" / f"build-{n}")
                reps.append(run_record(n, 10, run))
                log(f"build: N = {n:,}: {reps[-1]['working_views_per_s']:,.0f} working views/s, load {reps[-1]['load_avg_1min']['mean']}")
            rec = reps[len(reps) // 2] if len(reps) == 1 else sorted(reps, key=lambda x: x["working_views_per_s"])[len(reps) // 2]
            if len(reps) > 1:  # the median build's record, with every build's rate and peaks beside it
                rec = {
                    **rec,
                    "working_views_per_s_builds": [x["working_views_per_s"] for x in reps],
                    "driver_peak_rss_mb_builds": [x["driver_peak_rss_mb"] for x in reps],
                    "worker_peak_rss_mb_builds": [x["worker_peak_rss_mb"] for x in reps],
                    "rate_is": f"the median of {len(reps)} builds",
                }
            save_json(path, rec)
        records.append(load_json(path))
    return records


def _alive(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat")
    return stat is not None and stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: set[int], limit: float) -> tuple[float, int]:
    """Seconds until none of ``pids`` lives (at most ``limit``), and how many still did."""
    t0 = time.monotonic()
    alive = [p for p in pids if _alive(p)]
    while alive and time.monotonic() - t0 < limit:
        time.sleep(0.2)
        alive = [p for p in alive if _alive(p)]
    return round(time.monotonic() - t0, 2), len(alive)


def done_rate(done: list[tuple[float, int]], views: int) -> float | None:
    """Views/s between the first and the last change of the done count."""
    points = [(t, c) for t, c in done if c > 0]
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    return round((points[-1][1] - points[0][1]) * CHUNK * views / (points[-1][0] - points[0][0]), 1)


def stage_resume(w: Path, p: Preset) -> dict[str, Any]:
    path = w / "runs" / f"build-{p.total}-v10.json"
    if path.exists():
        return load_json(path)  # type: ignore[no-any-return]
    n, store = p.total, fresh(w / f"store-{p.total}.zarr")
    cmd, chunks = build_cmd(w, p, n, 10, store), -(-n // CHUNK)
    log(f"resume: N = {n:,}, V = 10 -> {store}; SIGKILL at {chunks // 2:,} of {chunks:,} chunks")
    evict_source(w, p, n)
    first = watch_build(cmd + ["--overwrite"], store, w / "logs" / f"build-{n}-first", poll=0.25, kill_at=chunks // 2)
    done_at_kill = done_count(store)
    if not first["killed"] or done_at_kill >= chunks:
        raise SystemExit(f"resume: the build finished before {chunks // 2} chunks were seen done: use a larger preset")
    cleanup_s, left = wait_gone(first["watch"].pids - {first["watch"].pid}, 60.0)
    log(f"resume: killed at {done_at_kill:,} chunks done; its Ray processes gone in {cleanup_s} s ({left} left)")
    evict_source(w, p, n)
    second = watch_build(cmd + ["--resume"], store, w / "logs" / f"build-{n}-resume", poll=0.25, first_after=done_at_kill)
    rec = run_record(n, 10, second)
    rec["resume"] = {
        "chunks_total": chunks,
        "killed_at_s": first["seconds"],
        "chunks_done_at_kill": done_at_kill,
        "first_half_views_per_s": done_rate(first["watch"].done, 10),
        "first_half": first["watch"].summary(),
        "ray_processes_gone_s": cleanup_s,
        "ray_processes_left": left,
        "resume_to_first_chunk_s": round(second["first_new_chunk_s"], 2) if second["first_new_chunk_s"] is not None else None,
        "rate_note": "working_views_per_s here is the resumed part's (the second half of the chunks)",
    }
    save_json(path, rec)
    log(
        f"resume: first new chunk {rec['resume']['resume_to_first_chunk_s']} s after the restart; {rec['working_views_per_s']:,.0f} working views/s"
    )
    return rec


def cli_json(args: list[str], log_name: Path) -> tuple[float, dict[str, Any] | None, int]:
    """Run ``dr-build ARGS``: (wall seconds, its JSON, exit code)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "dr.cli.main", *args], capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    log_name.parent.mkdir(parents=True, exist_ok=True)
    log_name.with_suffix(".out").write_text(r.stdout)
    log_name.with_suffix(".err").write_text(r.stderr)
    try:
        data = json.loads(r.stdout)
    except json.JSONDecodeError:
        data = last_json(r.stdout)
    return seconds, data, r.returncode


def count_objects(store: Path) -> tuple[dict[str, int], int]:
    """Files under each array's folder (its shard or chunk objects, not ``zarr.json``), and all
    files in the store."""
    per_array = {}
    for meta in sorted(store.rglob("zarr.json")):
        if json.loads(meta.read_text()).get("node_type") == "array":
            rel = meta.parent.relative_to(store).as_posix()
            per_array[rel] = sum(1 for f in meta.parent.rglob("*") if f.is_file() and f.name != "zarr.json")
    return per_array, sum(1 for f in store.rglob("*") if f.is_file())


def store_shape(store: Path) -> dict[str, Any]:
    """What the projection needs of a store: chunk size, shard size, arrays, metadata files and
    the largest array's raw bytes per image."""
    header = json.loads((store / "zarr.json").read_text())["attributes"]
    n, rows, arrays, metas = header["dataset"]["count"], 0, 0, 0
    for meta in store.rglob("zarr.json"):
        metas += 1
        node = json.loads(meta.read_text())
        if node.get("node_type") != "array":
            continue
        arrays += 1
        if node["shape"][0] == n:
            rows = max(rows, math.prod(node["shape"][1:]) * np.dtype(node["data_type"]).itemsize)
    layout = header.get("layout") or {}
    return {
        "chunk_size": header["chunk_size"],
        "shard_images": layout.get("shard_images"),
        "arrays": arrays,
        "metadata_files": metas,
        "row_bytes_max": rows,
    }


def stage_v400(w: Path, p: Preset) -> dict[str, Any]:
    path = w / "runs" / f"build-{p.v400_images}-v400.json"
    if path.exists():
        return load_json(path)  # type: ignore[no-any-return]
    n, store = p.v400_images, fresh(w / "store-v400.zarr")
    log(f"v400: N = {n:,}, V = 400 -> {store}")
    evict_source(w, p, n)
    run = watch_build(build_cmd(w, p, n, 400, store) + ["--overwrite"], store, w / "logs" / "build-v400")
    rec = run_record(n, 400, run)
    _, info, _ = cli_json(["info", str(store), "--json"], w / "logs" / "info-v400")
    per_array, total = count_objects(store)
    rec.update(bytes_per_view=(info or {}).get("bytes_per_view"), objects_per_array_max=max(per_array.values()), objects_total=total)
    rec["shape"] = store_shape(store)
    save_json(path, rec)
    log(f"v400: {rec['working_views_per_s']:,.0f} working views/s, {rec['bytes_per_view']} bytes/view")
    return rec


# -- measure: the full-N store and its readers ------------------------------------------------------------


def _rss_mb(who: int) -> float:
    import resource

    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


def child_open(store: str, spec: str, budget: int) -> None:
    """(In a fresh process.) Time constructing the Dataset (after the imports); print JSON."""
    import resource

    t0 = time.perf_counter()
    from dr import ReinforcedDataset

    t1 = time.perf_counter()
    ds = ReinforcedDataset(store, spec, memory_budget=budget)
    t2 = time.perf_counter()
    out = {"import_s": round(t1 - t0, 2), "open_s": round(t2 - t1, 3), "in_memory": ds.in_memory, "metadata_bytes": ds.metadata_bytes}
    print(json.dumps({**out, "peak_rss_mb": _rss_mb(resource.RUSAGE_SELF)}))


def _vm_kb(key: str) -> int:
    status = _read("/proc/self/status") or ""
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith(key + ":")), 0)


def child_source(spec: str) -> None:
    """(In a fresh process.) Open the source alone (the WebDataset index walk the driver, the
    Dataset and verify all do): seconds, and its memory per image (kept, and at the peak)."""
    from dr.sources import open_source

    base = _vm_kb("VmRSS")
    t0 = time.perf_counter()
    src = open_source(spec)
    seconds = time.perf_counter() - t0
    n = len(src)
    kept, peak = (_vm_kb("VmRSS") - base) * 1024 / n, (_vm_kb("VmHWM") - base) * 1024 / n
    print(
        json.dumps(
            {
                "source_open_s": round(seconds, 3),
                "images": n,
                "kept_bytes_per_image": round(kept, 1),
                "peak_bytes_per_image": round(peak, 1),
            }
        )
    )


def child_epoch(store: str, spec: str, budget: int | None, items: int, batch: int, workers: int) -> None:
    """(In a fresh process.) Images/s over the first ``items`` of ``ds.sampler(seed=0)``'s order
    (after the first batch), and the peak RSS of this process and of its loader workers."""
    import itertools
    import resource

    from torch.utils.data import DataLoader

    from dr import ReinforcedDataset

    base = _rss_mb(resource.RUSAGE_SELF)
    ds = ReinforcedDataset(store, spec, **({"memory_budget": budget} if budget is not None else {}))
    order = list(itertools.islice(iter(ds.sampler(seed=0)), items))
    loader = DataLoader(ds, batch_size=batch, sampler=order, num_workers=workers)
    n, n0, t0 = 0, 0, time.perf_counter()
    t1 = t0
    for views, _ in loader:
        n += len(views)
        if n0 == 0:
            n0, t1 = n, time.perf_counter()
    t2 = time.perf_counter()
    out = {"in_memory": ds.in_memory, "metadata_bytes": ds.metadata_bytes, "items": n, "seconds": round(t2 - t0, 2)}
    out["images_per_s"] = round((n - n0) / (t2 - t1), 1) if t2 > t1 and n > n0 else None
    out.update(baseline_rss_mb=base, main_peak_rss_mb=_rss_mb(resource.RUSAGE_SELF), worker_peak_rss_mb=_rss_mb(resource.RUSAGE_CHILDREN))
    print(json.dumps(out))


def run_child(func: str, *args: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``func(*args)`` of this module in a fresh Python process (``env``: extra variables); its JSON line."""
    code = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import imagenet_scale as m; m.{func}(*{args!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})})
    data = last_json(r.stdout)
    if r.returncode != 0 or data is None:
        raise SystemExit(f"{func}{args!r} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return data


def measure_cli(w: Path, p: Preset, store: Path) -> dict[str, Any]:
    """``dr-build info`` (median of 3) and ``verify --fraction 0.01`` times."""
    info_runs = [cli_json(["info", str(store), "--json"], w / "logs" / f"info-{i}") for i in range(3)]
    info = info_runs[-1][1] or {}
    teacher = TEACHER.format(classes=p.classes)
    args = ["verify", str(store), "--fraction", "0.01", "--source", source_spec(w, p, p.total), "--teacher", teacher]
    verify_s, verify, rc = cli_json([*args, "--min-agreement", "0", "--json"], w / "logs" / "verify")
    checks = {c.get("name", str(i)): c.get("ok") for i, c in enumerate((verify or {}).get("checks", []))}
    return {
        "info_s": round(statistics.median(s for s, _, _ in info_runs), 2),
        "info_s_runs": [round(s, 2) for s, _, _ in info_runs],
        "bytes_per_view": info.get("bytes_per_view"),
        "stored_bytes": info.get("stored_bytes"),
        "verify_fraction_s": round(verify_s, 2),
        "verify_ok": rc == 0 and bool((verify or {}).get("ok")),
        "verify_checks": checks,
    }


def measure_dataset(p: Preset, store: Path, spec: str) -> dict[str, Any]:
    """Dataset open times (first and second open) and the partial epoch in both modes."""
    opens = [run_child("child_open", str(store), spec, p.budget) for _ in range(2)]
    source = run_child("child_source", spec)
    source["uncached"] = run_child("child_source", spec, env={"DR_CACHE_DIR": ""})  # the tar-header walk itself
    log(
        f"measure: Dataset open {opens[0]['open_s']:.2f} s, then {opens[1]['open_s']:.2f} s; the source alone "
        f"{source['source_open_s']:.2f} s, {source['uncached']['source_open_s']:.2f} s without the index cache"
    )
    items = min(p.epoch_items, p.total)
    pairs = []  # two back-to-back pairs (in memory, then at the budget): one pair's ratio moves by a few points
    for _ in range(2):
        mem = run_child("child_epoch", str(store), spec, None, items, 256, 2)
        bud = run_child("child_epoch", str(store), spec, p.budget, items, 256, 2)
        pairs.append((mem, bud))
        log(f"measure: epoch images/s in memory {mem['images_per_s']}, by chunk at {p.budget / MB:.1f} MB {bud['images_per_s']}")
    ratios = [b["images_per_s"] / m["images_per_s"] for m, b in pairs if b["images_per_s"] and m["images_per_s"]]
    ratio = statistics.mean(ratios) if len(ratios) == len(pairs) else None
    mem, bud = pairs[0]
    return {
        "dataset_open_s": round(opens[1]["open_s"], 2),
        "dataset_open_first_s": round(opens[0]["open_s"], 2),
        "dataset_open_runs": opens,
        "source_open": source,
        "memory_budget_mb": round(p.budget / MB, 2),
        "epoch_items": items,
        "epoch_in_memory": mem,
        "epoch_budget": bud,
        "epoch_pairs": [{"in_memory": m, "budget": b} for m, b in pairs],
        "budget_epoch_ratios": [round(r, 3) for r in ratios],
        "budget_epoch_ratio": round(ratio, 3) if ratio else None,
        "budget_epoch_ratio_is": "the mean of two back-to-back pairs' ratios (budget images/s / in-memory images/s)",
    }


def stage_measure(w: Path, p: Preset) -> dict[str, Any]:
    path = w / "measure.json"
    if path.exists():
        return load_json(path)  # type: ignore[no-any-return]
    store = w / f"store-{p.total}.zarr"
    if not (w / "runs" / f"build-{p.total}-v10.json").exists():
        raise SystemExit("measure: the full-N store is not built: run the resume stage first")
    per_array, total = count_objects(store)
    rec: dict[str, Any] = {"objects_per_array": per_array, "objects_per_array_max": max(per_array.values()), "objects_total": total}
    rec["shape"] = store_shape(store)
    log("measure: info x 3, verify --fraction 0.01")
    rec.update(measure_cli(w, p, store))
    rec.update(measure_dataset(p, store, source_spec(w, p, p.total)))
    rec["load_avg_1min"] = round(os.getloadavg()[0], 2)
    rec["measured_at"] = now()
    save_json(path, rec)
    return rec


# -- report -------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import dr

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), platform.processor())
    mem_kb = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:")), 0)
    versions = {name: metadata.version(name) for name in ("torch", "ray", "zarr", "numpy", "pillow")}
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024**2, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "dr": dr.__version__,
        **versions,
    }


def driver_projection(runs: list[dict[str, Any]], key: str, per_image: float | None = None) -> dict[str, Any]:
    """A peak RSS at 10^9 images, two ways: a linear fit against N over the V = 10 builds
    (meaningful only over the full preset's N range), and the largest build's peak plus
    ``per_image`` bytes (the source index's measured peak) for every further image."""
    n = np.asarray([r["images"] for r in runs], dtype=float)
    mb = np.asarray([r[key] for r in runs], dtype=float)
    slope, intercept = np.polyfit(n, mb, 1) if len(set(n.tolist())) > 1 else (0.0, float(mb[0]))
    fits = n[-1] >= 1e6  # below, a few MB of O(N) memory drown in the noise of a 1 GB process
    out = {
        "measured_mb_by_images": {str(int(a)): b for a, b in zip(n, mb)},
        "fit_slope_mb_per_million_images": round(float(slope) * 1e6, 2) if fits else None,
        "fit_projected_mb": round(float(intercept + slope * 1e9), 1) if fits else None,
        "fit_note": None if fits else "no fit: N below 10^6 (the full preset fits)",
        "grew_with_n": bool(mb[-1] > 1.1 * mb[0]),
    }
    if per_image is not None:
        out["index_model_projected_mb"] = round(float(mb[-1]) + per_image * (1e9 - n[-1]) / MB, 1)
    return out


def projection(runs: list[dict[str, Any]], measure: dict[str, Any], v400: dict[str, Any], teacher_vps: float) -> dict[str, Any]:
    """From the measured figures to 10^9 images: objects, bytes, driver memory, GPU-hours."""
    from dr.storage.layout import default_shard_images

    images, out = 10**9, {}
    for views, bpv, shape in ((10, measure["bytes_per_view"], measure["shape"]), (400, v400["bytes_per_view"], v400["shape"])):
        shard = default_shard_images(shape["chunk_size"], shape["row_bytes_max"])
        per_array = -(-images // shard)
        hours = images * views / (100 * teacher_vps) / 3600
        out[f"v{views}"] = {
            "shard_images": shard,
            "objects_per_array": per_array,
            "objects": shape["arrays"] * per_array + shape["metadata_files"],
            "bytes": round(bpv * images * views),
            "tb": round(bpv * images * views / 1e12, 2),
            "hours_per_100_gpus": round(hours, 1),
        }
    big = max(runs, key=lambda r: r["images"])
    vpcs = big.get("views_per_cpu_s")
    src = measure["source_open"]
    index_bytes = max(src["peak_bytes_per_image"], src["uncached"]["peak_bytes_per_image"])
    return {
        "images": images,
        "by_views": out,
        "driver_peak_rss": driver_projection(runs, "driver_peak_rss_mb", index_bytes),
        "worker_peak_rss": driver_projection(runs, "worker_peak_rss_mb"),
        "teacher_views_per_s_per_gpu": teacher_vps,
        "teacher_speed_is": "an assumption, not a measurement: a ResNet-50-class teacher at 224 px in bf16 on one GPU",
        "pipeline_views_per_cpu_s": vpcs,
        "cpu_cores_per_gpu_to_keep_up": round(teacher_vps / vpcs, 1) if vpcs else None,
        "method": (
            "objects = arrays x ceil(1e9 / dr's default shard for the measured row bytes) + metadata files; bytes = "
            "measured bytes/view x 1e9 x V; driver RSS = a linear fit of the V = 10 builds' peaks over N, and (index model) "
            "the largest build's peak + the WebDataset index's measured peak bytes per image x the further images; hours = 1e9 x V / "
            "(100 GPUs x the assumed teacher speed); CPU cores per GPU = the assumed teacher speed / the measured views per "
            "CPU-second of the whole build process tree at the largest N (this CPU, the nearly free teacher, 32-px views: "
            "224-px views cost more to replay)"
        ),
    }


def goals(top: dict[str, Any], runs: list[dict[str, Any]], measure: dict[str, Any], budget_mb: float) -> dict[str, Any]:
    first, last = min(runs, key=lambda r: r["images"]), max(runs, key=lambda r: r["images"])
    grow = {
        f"{mode}_{who}": round(measure[f"epoch_{mode}"][f"{who}_peak_rss_mb"] - measure[f"epoch_{mode}"]["baseline_rss_mb"], 1)
        for mode in ("budget", "in_memory")
        for who in ("main", "worker")
    }

    def goal(text: str, value: Any, met: bool | None) -> dict[str, Any]:
        return {"goal": text, "value": value, "met": met}

    def peak_of(run: dict[str, Any], who: str) -> float:
        """A run's peak RSS: the median of its builds' (the smallest N), or the larger of a
        killed build's two parts (the largest N)."""
        key = f"{who}_peak_rss_mb"
        if run.get(f"{key}_builds"):
            return float(statistics.median(run[f"{key}_builds"]))
        part = (run.get("resume") or {}).get("first_half") or {}
        return float(max(run[key], part.get(key, 0.0)))

    fr, resume, open_s = top["flat_ratio"], top["resume_to_first_chunk_s"], top["dataset_open_s"]
    be = top["budget_epoch_ratio"]
    return {
        "budget_epoch_ratio": goal(">= 0.9 (an epoch read by chunk at the budget vs in memory)", be, be >= 0.9 if be is not None else None),
        "flat_ratio": goal(">= 0.9", fr, fr >= 0.9 if fr is not None else None),
        "driver_peak_rss_mb": goal("<= 1536", top["driver_peak_rss_mb"], top["driver_peak_rss_mb"] <= 1536),
        "driver_rss_flat": goal(
            "largest N's peak (both parts of the killed and resumed build) <= 1.1x the smallest's (the median of its builds)",
            [peak_of(first, "driver"), peak_of(last, "driver")],
            peak_of(last, "driver") <= 1.1 * peak_of(first, "driver"),
        ),
        "worker_rss_flat": goal(
            "largest N's peak (both parts of the killed and resumed build) <= 1.1x the smallest's (the median of its builds)",
            [peak_of(first, "worker"), peak_of(last, "worker")],
            peak_of(last, "worker") <= 1.1 * peak_of(first, "worker"),
        ),
        "objects_per_array_max": goal("<= 64", top["objects_per_array_max"], top["objects_per_array_max"] <= 64),
        "resume_to_first_chunk_s": goal("<= 30", resume, resume <= 30 if resume is not None else None),
        "dataset_open_s": goal("<= 5 (second open)", open_s, open_s <= 5),
        "training_rss_growth_mb": goal(
            f"at the budget, each process's peak minus the main process's RSS after its imports (torch alone is ~700 MB) "
            f"<= the budget ({budget_mb} MB) + 300 MB",
            grow,
            max(grow["budget_main"], grow["budget_worker"]) <= budget_mb + 300,
        ),
    }


def need(path: Path, stage: str) -> Any:
    if not path.exists():
        raise SystemExit(f"report: {path} is missing: run the {stage} stage first")
    return load_json(path)


def stage_report(w: Path, p: Preset, out: Path, teacher_vps: float) -> dict[str, Any]:
    data = need(w / "data.json", "data")
    runs = [need(w / "runs" / f"build-{n}-v10.json", "resume" if n == p.total else "build") for n in p.sizes]
    v400 = need(w / "runs" / f"build-{p.v400_images}-v400.json", "v400")
    measure = need(w / "measure.json", "measure")
    rates = {str(r["images"]): r["working_views_per_s"] for r in runs}
    first_part = runs[-1]["resume"]["first_half"]
    top: dict[str, Any] = {
        "bench": "imagenet_scale",
        "preset": p.name,
        "images": p.total,
        "views_per_s": rates,
        "views_per_s_note": (
            "working views/s (from the moment the teacher workers are up); at the largest N, the resumed part's. "
            "With Ray start and model load: views_per_s_total"
        ),
        "views_per_s_total": {str(r["images"]): r["views_per_s"] for r in runs},
        "largest_first_half_views_per_s": runs[-1]["resume"]["first_half_views_per_s"],
        "flat_ratio": round(runs[-1]["working_views_per_s"] / runs[0]["working_views_per_s"], 3),
        "driver_peak_rss_mb": max([r["driver_peak_rss_mb"] for r in runs] + [first_part["driver_peak_rss_mb"]]),
        "worker_peak_rss_mb": max([r["worker_peak_rss_mb"] for r in runs] + [first_part["worker_peak_rss_mb"]]),
        "objects_per_array_max": measure["objects_per_array_max"],
        "objects_total": measure["objects_total"],
        "bytes_per_view": measure["bytes_per_view"],
        "resume_to_first_chunk_s": runs[-1]["resume"]["resume_to_first_chunk_s"],
        "info_s": measure["info_s"],
        "verify_fraction_s": measure["verify_fraction_s"],
        "verify_ok": measure["verify_ok"],
        "dataset_open_s": measure["dataset_open_s"],
        "dataset_open_first_s": measure["dataset_open_first_s"],
        "source_open_s": measure["source_open"]["source_open_s"],
        "source_open_uncached_s": measure["source_open"]["uncached"]["source_open_s"],
        "budget_epoch_ratio": measure["budget_epoch_ratio"],
        "memory_budget_mb": measure["memory_budget_mb"],
        "epoch_images_per_s": {"in_memory": measure["epoch_in_memory"]["images_per_s"], "budget": measure["epoch_budget"]["images_per_s"]},
        "v400": {
            k: v400[k]
            for k in (
                "images",
                "views",
                "views_per_s",
                "working_views_per_s",
                "bytes_per_view",
                "objects_per_array_max",
                "objects_total",
                "driver_peak_rss_mb",
                "worker_peak_rss_mb",
            )
        },
    }
    top["goals"] = goals(top, runs, measure, measure["memory_budget_mb"])
    top["projection_1e9"] = projection(runs, measure, v400, teacher_vps)
    top["runs"] = [{k: v for k, v in r.items() if k != "resume"} for r in [*runs, v400]]
    top["resume"] = runs[-1]["resume"]
    top["measure"] = measure
    top["data"] = data
    top["setup"] = {
        "teacher": TEACHER.format(classes=p.classes),
        "policy": "rrc",
        "output_size": OUTPUT_SIZE,
        "topk": TOPK,
        "chunk_size": CHUNK,
        "probs_dtype": "uint8",
        "shard_images": p.shard_images or "dr's default",
        "ray": "private local (dr-build's default), one teacher worker (CPU)",
        "index_cache": "DR_CACHE_DIR=WORKDIR/dr-cache: the first build of a shard indexes it, later opens read the cache",
        "source_page_cache": "evicted (posix_fadvise DONTNEED) before every build: each reads its shards from disk",
        "sizes": {**asdict(p), "budget_bytes": p.budget},
    }
    top["machine"] = machine()
    top["load_note"] = "other jobs may share the CPU: every run records the 1-minute load average it saw (runs[].load_avg_1min)"
    top["measured_at"] = measure["measured_at"]
    top["command"] = " ".join(["python", *sys.argv])
    save_json(out, top)
    return top


def print_table(top: dict[str, Any]) -> None:
    g = top["goals"]
    print(f"ImageNet-scale rehearsal ({top['preset']}), {top['machine']['cpu']}, {top['machine']['cores']} cores")
    print(f"{'N':>12} {'V':>5} {'views/s':>10} {'working':>10} {'driver MB':>10} {'worker MB':>10} {'CPU s':>8} {'load':>6}")
    for r in top["runs"]:
        load = r["load_avg_1min"]["mean"]
        print(
            f"{r['images']:>12,} {r['views']:>5} {r['views_per_s']:>10,.0f} {r['working_views_per_s']:>10,.0f} "
            f"{r['driver_peak_rss_mb']:>10,.0f} {r['worker_peak_rss_mb']:>10,.0f} {r['cpu_s']:>8,.0f} {load:>6}"
        )
    for name, v in g.items():
        mark = "ok" if v["met"] else ("--" if v["met"] is None else "MISSED")
        print(f"  {name:<26} {json.dumps(v['value']):<28} {mark:<7} goal: {v['goal']}")
    for key in ("bytes_per_view", "objects_total", "info_s", "verify_fraction_s", "dataset_open_first_s", "budget_epoch_ratio"):
        print(f"  {key:<26} {top[key]}")
    proj = top["projection_1e9"]
    for v, row in proj["by_views"].items():
        print(
            f"  10^9 images, {v}: {row['objects']:,} objects ({row['objects_per_array']:,}/array), {row['tb']} TB, "
            f"{row['hours_per_100_gpus']} h on 100 GPUs at {proj['teacher_views_per_s_per_gpu']:,.0f} views/s/GPU (assumed)"
        )
    d = proj["driver_peak_rss"]
    fit = f"{d['fit_projected_mb']:,} MB (fit over N)" if d["fit_projected_mb"] is not None else "no fit (N < 10^6)"
    print(f"  driver RSS at 10^9: {fit}; {d['index_model_projected_mb']:,} MB (+ the source index's bytes per image)")


def check_workdir(w: Path, p: Preset, seed: int) -> None:
    """A workdir holds one rehearsal: refuse another preset or seed."""
    w.mkdir(parents=True, exist_ok=True)
    marker, want = w / "rehearsal.json", {"preset": p.name, "seed": seed, "total": p.total}
    have = load_json(marker)
    if have is None:
        save_json(marker, want)
    elif have != want:
        raise SystemExit(f"{w} holds another rehearsal ({have}); use another --workdir")


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=[*STAGES, "all"])
    ap.add_argument("--workdir", type=Path, required=True, help="where the data, stores, logs and stage results live")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="20,000 images (a few minutes on an idle 2-core machine)")
    size.add_argument("--tiny", action="store_true", help="3,000 images (the test's preset)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic pixels")
    ap.add_argument(
        "--out", type=Path, default=None, help=f"the report (default {DEFAULT_OUT.relative_to(REPO)}; quick/tiny: WORKDIR/report.json)"
    )
    ap.add_argument("--teacher-views-per-s", type=float, default=TEACHER_VIEWS_PER_S, help="assumed GPU teacher speed for the projection")
    args = ap.parse_args(argv)
    p = PRESETS["quick" if args.quick else "tiny" if args.tiny else "full"]
    w = args.workdir.resolve()
    out = args.out or (DEFAULT_OUT if p.name == "full" else w / "report.json")
    check_workdir(w, p, args.seed)
    os.environ["DR_CACHE_DIR"] = str(w / "dr-cache")  # the WebDataset index cache: in the workdir, like everything else
    todo = STAGES if args.stage == "all" else (args.stage,)
    t0 = time.perf_counter()
    top = None
    for stage in todo:
        if stage == "data":
            stage_data(w, p, args.seed)
        elif stage == "build":
            stage_build(w, p)
        elif stage == "resume":
            stage_resume(w, p)
        elif stage == "v400":
            stage_v400(w, p)
        elif stage == "measure":
            stage_measure(w, p)
        else:
            top = stage_report(w, p, out, args.teacher_views_per_s)
            print_table(top)
            print(json.dumps(top))
    log(f"{args.stage}: {time.perf_counter() - t0:.1f} s")
    return top


if __name__ == "__main__":
    main()
