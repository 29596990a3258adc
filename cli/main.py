"""``dr-build``: reinforce a dataset into a Zarr store, and inspect stores.

The CLI parses and validates (click + pydantic), calls the library, and prints; no logic here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, NoReturn

import click
from pydantic import ValidationError

from dr import __version__
from dr.errors import ConfigError, DRError, WorkerStartError

__all__ = ["cli", "main", "EXIT_RESUMABLE", "CLI_ONLY_FLAGS"]

#: Exit status of a build that stopped with chunks left to do (``--max-chunks``, or a stop before
#: the end): the store is sound but ``building``; the same command with ``--resume`` finishes it.
#: 1 is an error (the message says what and how to fix it), 2 a usage error.
EXIT_RESUMABLE = 3

#: the flags of ``dr-build reinforce`` that are not build settings (every other flag is generated
#: from a :class:`~dr.builder.config.BuildConfig` field, with its help, bounds and default)
CLI_ONLY_FLAGS = {
    "--config": "YAML build config; flags given on the command line override it",
    "--json": "print the summary (or the error) as JSON on stdout",
    "--quiet": "no progress bar",
    "--dry-run": "plan only: images, chunks, views, projected size, wall-clock and GPU-hours from a timed first unit; writes nothing",
}

EPILOG_REINFORCE = """\b
Examples:
  # CIFAR-style build with the bundled demo teacher (CPU is fine)
  dr-build reinforce examples/assets/cifar10-sample --policy cifar \\
      --teacher 'python:dr.teachers.zoo:cifar_resnet@examples/assets/teacher/cifar_resnet20.safetensors?depth=20' \\
      --views 8 --topk 5 --out runs/demo.zarr --overwrite
  # ImageNet-style, an ensemble of two timm teachers with local weights, on a Ray cluster
  dr-build reinforce /data/imagenet/train --policy rrc --views 50 --topk 10 \\
      --teacher timm:resnet50@/w/r50.safetensors --teacher timm:vit_base_patch16_224@/w/vit.safetensors \\
      --address auto --out /shared/imagenet+.zarr
  # a killed build continues where it stopped
  dr-build reinforce ... --resume

\b
Teacher specs: KIND:NAME[@WEIGHTS][?key=value&...] with KIND one of
  timm, torchvision, torchscript, export, python. Options: input_size, mean, std,
  normalize=none, interpolation, weight (ensemble weight), classes=FILE, pretrained=true and
  torchvision's weights=IMAGENET1K_V1 (downloads: only when asked); other keys go to the
  model factory (num_classes=10, depth=20). WEIGHTS may be an fsspec URL (s3://...).
  Specs without weights need --allow-random-teachers; programs need mean/std or
  normalize=none. Check teachers first: dr-build teachers eval SPEC --on VAL_DIR.

\b
Sources: a bare path or URL is an ImageFolder (SOURCE/<class>/<image>); otherwise
KIND:LOCATION[?key=value&...] with KIND one of
  wds:/data/train-{000000..000127}.tar?label=cls   WebDataset shards (local or s3://...);
      label=cls or json:FIELD, image=EXT, classes=FILE|a,b,c
  list:/data/train.csv  or  list:/data/train.jsonl  path,label rows (paths relative to the
      list, absolute, or URLs; labels are ids or class names); classes=FILE|a,b,c
  hf-disk:/data/hf?image=img&label=label           a Hugging Face save_to_disk folder
      (split=NAME for a DatasetDict; read with pyarrow, no network)
  cifar10:/data/cifar  cifar100:/data/cifar        torchvision's CIFAR layout (never
      downloaded); split=train|test, cifar100: labels=fine|coarse
"""


def yaml_scalar(value: str) -> Any:
    """Parse a command-line value the way YAML would (numbers, booleans, strings)."""
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _storage_options(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, Any]:
    """``--storage-option KEY=VALUE`` (repeated) -> fsspec options; values read as YAML scalars."""
    pairs = [o.split("=", 1) for o in value]
    for given, pair in zip(value, pairs):
        if len(pair) != 2 or not pair[0]:
            raise click.BadParameter(f"takes KEY=VALUE (e.g. endpoint_url=http://127.0.0.1:9000 or anon=true), got {given!r}")
    return {k: yaml_scalar(v) for k, v in pairs}


_STORAGE_OPTION = click.option(
    "--storage-option",
    "storage_options",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_storage_options,
    help="An fsspec option for a remote store or source (repeat the flag), e.g. endpoint_url=http://127.0.0.1:9000.",
)


def _fail(e: Exception, as_json: bool = False, kind: str | None = None) -> NoReturn:
    """Raise ``e`` as a click error (text on stderr); with ``--json`` also print
    ``{"ok": false, "error": ..., "kind": ..., "exit_code": ...}`` on stdout."""
    if isinstance(e, click.ClickException):
        exc = e
    elif isinstance(e, ValidationError):
        problems = [f"invalid {'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})" for err in e.errors()]
        exc = click.UsageError("; ".join(problems))
    else:
        exc = click.ClickException(str(e))
    if as_json:
        _echo_json_error(exc, kind or type(e).__name__)
    raise exc


def _echo_json_error(exc: click.ClickException, kind: str) -> None:
    click.echo(json.dumps({"ok": False, "error": exc.format_message(), "kind": kind, "exit_code": exc.exit_code}))
    exc.dr_json_printed = True  # type: ignore[attr-defined]


class _Resumable(click.ClickException):
    """A build that stopped with chunks left: exit code 3 (``EXIT_RESUMABLE``)."""

    exit_code = 3


class _Group(click.Group):
    """The ``dr-build`` group: under ``--json`` even errors click finds while it parses the
    command line (a bad ``--teacher`` spec, a ``--precision`` that is not a choice) are also a
    JSON object on stdout, like every other error."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["dr.json"] = "--json" in args
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        as_json = bool(ctx.meta.get("dr.json"))
        try:
            return super().invoke(ctx)
        except click.ClickException as e:
            if as_json and not getattr(e, "dr_json_printed", False):
                _echo_json_error(e, type(e).__name__)
            raise


class _PolicyOption(click.Option):
    """``--policy``: its help lists every preset, read when help is shown (dr.policy imports torch)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from dr.policy import list_policies

        base = (self.help or "").split(" Presets:")[0]
        self.help = f"{base} Presets: {', '.join(list_policies())}."
        return super().get_help_record(ctx)


def _validate_teacher(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    from dr.teachers.spec import parse_teacher_spec

    for spec in value:
        try:
            parse_teacher_spec(spec)
        except DRError as e:
            raise click.BadParameter(str(e)) from None
    return value


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="dr-build")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Reinforce an image dataset: run a teacher ensemble once over many augmented views of
    every image and store each view's augmentation parameters and top-k soft labels in a Zarr
    store. Train on it later with dr.ReinforcedDataset at the cost of plain training.

    Start with `dr-build reinforce --help`; inspect a store with `dr-build info STORE`.
    """
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)], format="%(levelname)s %(name)s: %(message)s")


def _click_type(name: str, f: Any) -> Any:
    """The click type of a BuildConfig field: its choices, or its numeric bounds."""
    import typing

    from dr.builder.config import field_bounds

    kind = f.annotation
    if typing.get_origin(kind) is not typing.Literal:  # X | None -> X
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
    if typing.get_origin(kind) is typing.Literal:
        return click.Choice(list(typing.get_args(kind)))
    b = field_bounds(f)
    lo, hi = b.get(">=", b.get(">")), b.get("<=")
    if kind is int:
        return click.IntRange(lo, hi)
    if kind is float:
        return click.FloatRange(lo, hi, min_open=">" in b)
    return None


def _build_options(command: Any) -> Any:
    """Apply one click option per :class:`~dr.builder.config.BuildConfig` field (and the SOURCE
    argument), generated from the field: its flag, type, bounds, default and help."""
    from dr.builder.config import RENAMED_KEYS, BuildConfig

    for name, f in reversed(list(BuildConfig.model_fields.items())):
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        flags = str(extra.get("flag") or "--" + name.replace("_", "-")).split("/")
        if flags == ["SOURCE"]:
            command = click.argument(name, required=False)(command)
            continue
        default = None if f.is_required() or f.default_factory is not None else f.default
        kw: dict[str, Any] = {"help": f"{f.description}."}
        if name == "teachers":
            kw.update(multiple=True, callback=_validate_teacher)
        elif name == "storage_options":
            kw.update(multiple=True, callback=_storage_options)
        elif f.annotation is bool:
            kw.update(is_flag=True)
        else:
            kw.update(type=_click_type(name, f), default=default, show_default=default is not None)
        if name == "policy":
            kw["cls"] = _PolicyOption
        if extra.get("metavar"):
            kw["metavar"] = extra["metavar"]
        command = click.option(*flags, name, **kw)(command)
    for old, new in RENAMED_KEYS.items():  # renamed settings: the old flag, hidden, for one release
        f = BuildConfig.model_fields[new]
        command = click.option("--" + old.replace("_", "-"), old, hidden=True, type=_click_type(new, f))(command)
    return command


@cli.command(epilog=EPILOG_REINFORCE)
@_build_options
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="YAML build config (see `dr-build config`); flags given on the command line override it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the build summary (or the error) as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Plan only: images, chunks, views, projected store size, and -- after timing the first unit on one worker -- "
    "projected wall-clock and GPU-hours. Writes nothing.",
)
def reinforce(
    source: str | None,
    config_file: str | None,
    teachers: tuple[str, ...],
    storage_options: dict[str, Any],
    as_json: bool,
    quiet: bool,
    dry_run: bool,
    **options: Any,
) -> None:
    """Reinforce SOURCE into --out: an ImageFolder-layout directory (SOURCE/<class>/<image>) or a
    source spec -- wds:SHARDS?label=cls, list:FILE.csv|.jsonl, hf-disk:PATH?image=img&label=label,
    cifar10:DIR, cifar100:DIR (see "Sources" below).

    Each image gets --views augmented views sampled with --policy (seeded per image, so the
    store is identical for any number of workers); the teacher ensemble labels every view and
    the top --topk probabilities are stored with the view's parameters. Settings may come
    from --config build.yaml; flags given on the command line override the file.

    Exit status: 0 the store is complete; 3 stopped with chunks left (--max-chunks, Ctrl-C,
    `ray job stop`, the last worker lost mid-build): the same command with --resume finishes
    it; 1 an error (no worker ever started, a bad image, ...); 2 bad usage or a bad config file.
    """
    from dr.builder import reinforce as run_build

    try:
        config = _build_config(source, config_file, teachers, storage_options, options)
        if dry_run:
            from dr.builder.dryrun import dry_run as plan_build
            from dr.builder.dryrun import format_dry_run

            plan = plan_build(config)
            click.echo(json.dumps(plan.to_dict()) if as_json else format_dry_run(plan))
            return
        with _sigterm_as_interrupt():
            result = run_build(config, progress=not quiet, echo=lambda m: click.echo(m, err=as_json))
    except WorkerStartError as e:
        if not e.workers_started:
            _fail(e, as_json)  # no worker ever started: an error
        # the last worker was lost mid-build: the store is sound and --resume finishes it
        _fail(_Resumable(f"{e}\n  the store is sound but not complete (exit code {EXIT_RESUMABLE})"), as_json, "WorkerStartError")
    except (DRError, ValidationError, click.ClickException) as e:
        _fail(e, as_json)
    except KeyboardInterrupt:
        click.echo(
            f"interrupted: finished chunks are kept; run the same command with --resume to finish the store (exit code {EXIT_RESUMABLE})",
            err=True,
        )
        sys.exit(EXIT_RESUMABLE)
    _report_build(result, as_json)


def _build_config(
    source: str | None, config_file: str | None, teachers: tuple[str, ...], storage_options: dict[str, Any], options: dict[str, Any]
) -> Any:
    """The BuildConfig of ``reinforce``'s arguments: --config FILE overridden by the flags given
    on the command line."""
    from click.core import ParameterSource

    from dr.builder import BuildConfig, load_config_file

    ctx = click.get_current_context()
    given: dict[str, Any] = {k: v for k, v in options.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    if source:
        given["source"] = source
    if teachers:
        given["teachers"] = teachers
    if storage_options:
        given["storage_options"] = storage_options
    if config_file:
        try:
            return load_config_file(config_file, given)
        except ConfigError as e:  # an invalid config file is bad usage (exit code 2), like a bad flag
            raise click.UsageError(str(e)) from e
    need = {"source": "SOURCE", "teachers": "--teacher SPEC", "out": "--out STORE (or --extend STORE)"}
    if options.get("extend"):
        need.pop("out")
    missing = [flag for name, flag in need.items() if not given.get(name) and not options.get(name)]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or pass --config build.yaml)")
    if options.get("extend"):  # only the flags given: the rest comes from the store's header
        from dr.builder.extend import extension_settings

        try:
            return extension_settings(BuildConfig(**given))
        except ConfigError as e:  # a flag that contradicts the store is bad usage (exit code 2)
            raise click.UsageError(str(e)) from e
    return BuildConfig(**{**options, **given})


def _report_build(result: Any, as_json: bool) -> None:
    """Print a finished build's line; exit 3 (resumable) when chunks are left."""
    r = result.to_dict()
    if as_json:
        click.echo(json.dumps(r))
    else:
        click.echo(
            f"{r['status']}: {r['out']} -- computed {r['chunks_computed']} chunk(s), skipped {r['chunks_skipped']} done, "
            f"{r['views_computed']} views in {r['seconds']:.1f}s ({r['views_per_second']:.0f} views/s overall, {r['working_views_per_second']:.0f} views/s once workers were up) on {len(r['workers'])} worker(s)"
        )
    if result.complete:
        if not as_json:
            click.echo(f"inspect it with: dr-build info {result.out}")
        return
    left = r["chunks_total"] - r["chunks_skipped"] - r["chunks_computed"]
    click.echo(
        f"stopped with {left} of {r['chunks_total']} chunk(s) left: the store is sound but not complete; "
        f"run the same command with --resume to finish it (exit code {EXIT_RESUMABLE})",
        err=True,
    )
    sys.exit(EXIT_RESUMABLE)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`ray job stop`, `kill`, a scheduler's preemption) stops a build like Ctrl-C:
    the workers are killed, the writer lock is released, finished chunks are kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--allow-incomplete", is_flag=True, help="Also describe a store whose build has not finished.")
@_STORAGE_OPTION
def info(store: str, as_json: bool, allow_incomplete: bool, storage_options: dict[str, Any]) -> None:
    """Describe STORE: header, counts, sizes, bytes/view, teacher agreement with labels."""
    from dr.audit.summary import format_summary, store_summary
    from dr.errors import StoreIncompleteError

    try:
        s = store_summary(store, allow_incomplete=allow_incomplete, storage_options=storage_options)
    except StoreIncompleteError as e:
        message = str(e).replace("allow_incomplete=True", "--allow-incomplete")
        if "--allow-incomplete" not in message:
            message += f"; or describe it as it is with `dr-build info {store} --allow-incomplete`"
        _fail(StoreIncompleteError(message), as_json)
    except DRError as e:
        _fail(e, as_json)
    click.echo(json.dumps(s, indent=2) if as_json else format_summary(s))


_TRUST_LOCATION_HELP = (
    "Open the source location the store records whatever it is (a URL, a list:/wds:/hf-disk: spec, a path anywhere). "
    "Only for a store you trust: without it a recorded location is opened only when it is a local folder inside the "
    "store's own directory; otherwise pass --source."
)


@cli.command()
@click.argument("store")
@click.option(
    "--source",
    help="The store's source. Default: the location the store records, when it is a local folder inside the store's directory "
    "(see --trust-store-location).",
)
@click.option("--trust-store-location", is_flag=True, help=_TRUST_LOCATION_HELP)
@click.option(
    "--no-check",
    is_flag=True,
    help="Skip the content check: the source's images are not re-hashed against the digests the store recorded (count, "
    "classes and labels are still compared), so the picture may show other images than the teachers saw.",
)
@click.option(
    "--index",
    "-i",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Source index of the image (its position in the source's order, images the build skipped included).",
)
@click.option("--out", "-o", default="views.png", show_default=True, help="PNG to write.")
@click.option("--max-views", default=31, show_default=True, type=click.IntRange(1))
@_STORAGE_OPTION
def show(
    store: str,
    source: str | None,
    trust_store_location: bool,
    no_check: bool,
    index: int,
    out: str,
    max_views: int,
    storage_options: dict[str, Any],
) -> None:
    """Draw image --index's stored views (replayed) with their top-3 soft labels into a PNG.

    Check this picture before spending GPU hours: the views are exactly what the teachers saw.
    The source is checked as the Dataset checks it, and the images drawn must have the content
    digests the store recorded (--no-check skips the content check).
    """
    from dr.audit.show import draw_views
    from dr.urls import Location

    try:
        path = draw_views(
            Location.of(store, storage_options),
            source,
            index,
            out,
            max_views=max_views,
            check=not no_check,
            trust_store_location=trust_store_location,
        )
    except DRError as e:
        _fail(e)
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("store")
@click.option(
    "--source",
    "sources",
    multiple=True,
    help="The store's source; for an extended store once per segment, in order. Default: the location each segment records, "
    "when it is a local folder inside the store's directory (see --trust-store-location).",
)
@click.option("--trust-store-location", is_flag=True, help=_TRUST_LOCATION_HELP)
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    callback=_validate_teacher,
    metavar="SPEC",
    help="Teachers for the replay audit (your own specs, as built). Without it the audit is skipped, unless --trust-store-teachers.",
)
@click.option(
    "--trust-store-teachers",
    is_flag=True,
    help="Run the replay audit with the teachers named in the store's header. Only for a store you trust: "
    "a python: spec imports and runs a module, torchscript:/export: specs run a program.",
)
@click.option(
    "--fraction",
    default=0.01,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of views re-labelled (at least 64, at most 4096).",
)
@click.option(
    "--content",
    type=click.Choice(["sample", "all", "none"]),
    default="sample",
    show_default=True,
    help="Re-hash 32 seeded source files, all of them, or none.",
)
@click.option(
    "--max-dp",
    type=click.FloatRange(0, 1),
    help="Largest |stored - re-computed| probability the replay audit accepts "
    "(default: 0.01 for fp32 CPU builds, 0.05 fp32 CUDA, 0.25 bf16).",
)
@click.option(
    "--min-agreement",
    type=click.FloatRange(0, 1),
    help="The labels check's threshold: the teachers' top-1 agreement with the labels below which the store fails "
    "(default: twice chance; 0: not judged unless the store has a class map). Never read from the store.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_STORAGE_OPTION
def verify(
    store: str,
    sources: tuple[str, ...],
    trust_store_location: bool,
    teachers: tuple[str, ...],
    trust_store_teachers: bool,
    fraction: float,
    content: str,
    max_dp: float | None,
    min_agreement: float | None,
    as_json: bool,
    storage_options: dict[str, Any],
) -> None:
    """Prove STORE: integrity (the sealed header, chunks, shapes, dtypes, sorted
    probabilities, ids, parameter bounds, mixing partners, source fingerprint), every chunk of
    every array against the digest recorded when it was written (one FAIL line per damaged
    chunk; repair with `dr-build reinforce ... --resume --repair`), the teachers' agreement
    with the labels (a statistical test, any store size) and a replay audit (teachers re-run
    on replayed views vs the stored top-k).

    A store is data: the audit runs the teachers you pass with --teacher, or the store's own
    with --trust-store-teachers; otherwise it is skipped (SKIP line). The source is --source,
    or the location the store records when it is a local folder inside the store's directory
    (--trust-store-location: any recorded location). The labels check judges with
    --min-agreement, never with a threshold read from the store. Exits non-zero on any failure.

    \b
    dr-build verify runs/demo.zarr --teacher 'python:dr.teachers.zoo:cifar_resnet@w.safetensors?depth=20'
    """
    from dr.audit.verify import format_report, verify_store

    try:
        checks = verify_store(
            store,
            (sources[0] if len(sources) == 1 else list(sources)) if sources else None,
            teachers=list(teachers) or None,
            fraction=fraction,
            content=content,
            max_dp=max_dp,
            trust_store_teachers=trust_store_teachers,
            min_agreement=min_agreement,
            trust_store_location=trust_store_location,
            storage_options=storage_options,
        )
    except DRError as e:
        _fail(e, as_json)
    if as_json:
        click.echo(json.dumps({"store": store, "ok": all(c.ok for c in checks), "checks": [c.__dict__ for c in checks]}, indent=2))
    else:
        click.echo(format_report(store, checks))
    if not all(c.ok for c in checks):
        sys.exit(1)


@cli.group()
def teachers() -> None:
    """Check teachers before a build (`dr-build teachers eval SPEC --on VAL_DIR`)."""


@teachers.command("eval")
@click.argument("specs", nargs=-1, required=True, callback=_validate_teacher, metavar="SPEC...")
@click.option("--on", "folder", required=True, metavar="VAL_DIR", help="Labelled ImageFolder (VAL_DIR/<class>/<image>).")
@click.option("--class-map", metavar="identity|names|FILE", help="Map teacher classes to the folder's (see reinforce --help).")
@click.option(
    "--size",
    type=click.IntRange(1, 8192),
    help="View size: shorter side resized, centre crop (default: the first teacher's input size, else 224).",
)
@click.option("--images", default=1000, show_default=True, type=click.IntRange(1), help="At most this many images (seeded sample).")
@click.option("--temperature", default=1.0, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--allow-random-teachers", is_flag=True, help="Accept specs without weights (seeded random init).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def teachers_eval(
    specs: tuple[str, ...],
    folder: str,
    class_map: str | None,
    size: int | None,
    images: int,
    temperature: float,
    allow_random_teachers: bool,
    as_json: bool,
) -> None:
    """Top-1 of each teacher SPEC and of their ensemble on a labelled folder VAL_DIR: a minute
    here saves a wasted build (wrong class order, preprocessing or weights all show up).
    The teachers' classes must be the folder's, or be mapped with --class-map."""
    from dr.agreement import agreement_threshold
    from dr.builder.teacher_eval import evaluate_teachers, format_evaluation, probe_classes
    from dr.sources import open_source
    from dr.teachers import Ensemble

    try:
        src = open_source(folder)
        ensemble = Ensemble.from_specs(list(specs), temperature, allow_random=allow_random_teachers)
        first = ensemble.members[0].preprocess.input_size
        view = size or (first[0] if first else 224)
        probe_classes(ensemble, src.classes, class_map, view)
        report = evaluate_teachers(ensemble, folder, size=view, max_images=images)
    except DRError as e:
        _fail(e, as_json)
    threshold = agreement_threshold(report["classes"])
    if as_json:
        click.echo(json.dumps({"ok": True, **report, "threshold": threshold}, indent=2))
    else:
        click.echo(format_evaluation(report, threshold))


@cli.command()
@click.option("--example", is_flag=True, help="Print a commented example build.yaml (the default; kept for scripts).")
def config(example: bool) -> None:
    """Print a commented example build config (every key) for `dr-build reinforce --config`:
    `dr-build config > build.yaml`."""
    from dr.builder.config import EXAMPLE_CONFIG

    click.echo(EXAMPLE_CONFIG, nl=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def policies(as_json: bool) -> None:
    """List the augmentation presets and their parameters."""
    from dr.policy import get_policy, list_policies

    out = {name: {"description": desc, **get_policy(name).to_dict()} for name, desc in list_policies().items()}
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    for name, d in out.items():
        ops = " -> ".join([d["crop"]["kind"]] + [o["kind"] for o in d["ops"]])
        click.echo(f"{name:<8} {d['description']}\n         ops: {ops}; fields: {', '.join(f.name for f in get_policy(name).fields())}")


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(prog_name="dr-build", standalone_mode=True))


if __name__ == "__main__":
    main()
