"""A store never steers reads: one test per attack of "A store never steers reads" (items 1, 2
and 5), each failing on the code before it.

1. a recorded ``http://`` location was fetched; a ``list:`` naming ``/etc/passwd`` was opened;
   a list row naming ``/dev/zero`` was a raw ``MemoryError``; an ``s3://`` location a traceback;
2. ``show --source OTHER`` drew other images under the store's labels;
5. ``verify``'s labels verdict must never come from the store (``build.config.min_agreement``).

The stores are built in-process (no Ray): a folder ``root/src`` and its store ``root/s.zarr``,
so the recorded location is a local folder beside the store -- the one a reader follows.
"""

from __future__ import annotations

import http.server
import inspect
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zarr
from click.testing import CliRunner

from dr import ReinforcedDataset
from dr.audit.verify import verify_store
from dr.cli.main import cli
from dr.errors import BadImageError, StoreMismatchError
from dr.replay import DeviceReplay
from dr.sources import ImageFolderSource
from dr.views import open_trusted, reader_source
from tests.helpers import build_in_process

READERS = "needs trust_store_location on the readers (lead)"


@pytest.fixture(scope="module")
def beside(cifar64: Path, tiny_teacher: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/src`` (the 64 images) and ``root/s.zarr``, its store, side by side."""
    root = tmp_path_factory.mktemp("beside")
    shutil.copytree(cifar64, root / "src")
    build_in_process(root / "src", tiny_teacher, "cifar", root / "s.zarr")
    return root


def _copy(beside: Path, tmp_path: Path, location: str | None = None) -> Path:
    """A copy of the store (next to a copy of its source, in ``tmp_path``) whose recorded
    location is ``location`` -- an edit anyone can make: the location is not sealed."""
    shutil.copytree(beside / "src", tmp_path / "src", dirs_exist_ok=True)
    out = tmp_path / "s.zarr"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(beside / "s.zarr", out)
    g = zarr.open_group(str(out), mode="r+")
    attrs = json.loads(json.dumps(dict(g.attrs)))
    attrs["dataset"]["location"] = location if location is not None else str(tmp_path / "src")
    g.attrs.put(attrs)
    return out


def _readers(store: Path) -> list[Callable[[], object]]:
    return [lambda: open_trusted(str(store)), lambda: ReinforcedDataset(store), lambda: DeviceReplay(str(store))]


def _trusting_reader_or_skip() -> None:
    if "trust_store_location" not in inspect.signature(ReinforcedDataset.__init__).parameters:
        pytest.skip(READERS)


# 1 -- the recorded location -------------------------------------------------------------------
def test_a_local_folder_beside_the_store_is_followed(beside: Path) -> None:
    assert len(ReinforcedDataset(beside / "s.zarr")) == 64
    assert len(open_trusted(str(beside / "s.zarr")).source) == 64


def test_a_location_outside_the_stores_folder_needs_the_users_word(beside: Path, cifar64: Path, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(cifar64, target_is_directory=True)  # inside by name, outside once resolved
    for location in (str(cifar64), str(tmp_path / "link")):
        store = _copy(beside, tmp_path, location)
        for open_store in _readers(store):
            with pytest.raises(StoreMismatchError, match=r"lies outside .* the folder that holds the store.*--source"):
                open_store()
        assert len(open_trusted(str(store), str(cifar64)).source) == 64  # the user names it
        assert len(open_trusted(str(store), trust_store_location=True).source) == 64  # or trusts the store
        assert len(ReinforcedDataset(store, cifar64)) == 64
    _trusting_reader_or_skip()
    assert len(ReinforcedDataset(store, trust_store_location=True)) == 64  # needs trust_store_location on the readers (lead)
    assert len(DeviceReplay(str(store), trust_store_location=True)) == 64  # needs trust_store_location on the readers (lead)


@pytest.fixture
def web_server() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that serves nothing and records every request."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(404)
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/train", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_location_is_never_fetched(beside: Path, tmp_path: Path, web_server: tuple[str, list[str]]) -> None:
    url, seen = web_server
    store = _copy(beside, tmp_path, url)
    for open_store in _readers(store):
        with pytest.raises(
            StoreMismatchError, match=r"records its source at 'http://127\.0\.0\.1:\d+/train'.*it is a URL.*source=.*--source"
        ):
            open_store()
    source = {c.name: c for c in verify_store(str(store))}["source"]
    assert not source.ok and "it is a URL" in source.detail and "--trust-store-location" in source.detail
    r = CliRunner().invoke(cli, ["verify", str(store)])
    assert r.exit_code == 1 and "FAIL  source" in r.output, r.output
    assert seen == []  # not one request reached the server
    assert len(ReinforcedDataset(store, tmp_path / "src")) == 64  # the user's source: the store is fine


def _list_of(rows: list[tuple[str, int]], path: Path, classes: tuple[str, ...]) -> str:
    path.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    return f"list:{path}?classes={','.join(classes)}"


def test_a_list_location_naming_other_files_is_never_opened(beside: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dr.sources import filelist as kinds

    classes = ImageFolderSource(beside / "src").classes
    tmp_path.mkdir(exist_ok=True)
    # beside the store, yet a list names files anywhere (and URLs)
    spec = _list_of([("/etc/passwd", 0), ("http://127.0.0.1:9/x.jpg", 1)], tmp_path / "rows.csv", classes)
    store = _copy(beside, tmp_path, spec)
    opened: list[str] = []
    real = kinds.FileListSource.__init__

    def spy(self: object, path: str, **kw: object) -> None:
        opened.append(path)
        real(self, path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(kinds.FileListSource, "__init__", spy)
    for open_store in _readers(store):
        with pytest.raises(StoreMismatchError, match=r"it is a list: source spec, whose entries.*may name any file or URL"):
            open_store()
    assert opened == []  # the list was not even read
    failed = {c.name: c for c in verify_store(str(store)) if not c.ok}
    assert set(failed) == {"source"} and "list: source spec" in failed["source"].detail and opened == []
    # a store the user trusts: its list is opened, and refused as another dataset
    with pytest.raises(StoreMismatchError, match="2 images vs 64 in the store"):
        open_trusted(str(store), trust_store_location=True)
    assert opened == [str(tmp_path / "rows.csv")]


def test_a_dev_zero_row_is_a_bad_image_and_reads_stay_bounded(beside: Path, tmp_path: Path) -> None:
    # imported here: before the read limit existed, this test must fail without reading /dev/zero
    from dr.sources.decode import DEFAULT_MAX_IMAGE_BYTES, max_image_bytes, set_max_image_bytes
    from dr.sources.filelist import FileListSource

    src = ImageFolderSource(beside / "src")
    rows = [(src.describe(i), int(src.labels()[i])) for i in range(len(src))]
    rows[5] = ("/dev/zero", rows[5][1])  # same count and labels: only the content differs
    spec = _list_of(rows, tmp_path / "rows.csv", src.classes)
    assert max_image_bytes() == DEFAULT_MAX_IMAGE_BYTES == 256 << 20
    try:
        set_max_image_bytes(1 << 20)  # a small limit keeps the test fast; the default bounds it at 256 MiB
        with pytest.raises(BadImageError, match=r"/dev/zero: more than 1,048,576 bytes, above the read limit"):
            FileListSource(str(tmp_path / "rows.csv")).read(5)
        with pytest.raises(BadImageError, match="/dev/zero"):  # the user named the list: a bad image, not a MemoryError
            open_trusted(str(beside / "s.zarr"), spec, verify_source="all")
        store = _copy(beside, tmp_path, spec)
        with pytest.raises(BadImageError, match="/dev/zero"):  # recorded in the store, followed only when trusted
            open_trusted(str(store), trust_store_location=True, verify_source="all")
        with pytest.raises(StoreMismatchError, match="list: source spec"):
            ReinforcedDataset(store, verify_source="all")
    finally:
        set_max_image_bytes(None)
    assert max_image_bytes() == DEFAULT_MAX_IMAGE_BYTES


def test_a_file_over_the_read_limit_is_a_bad_image_in_every_kind(beside: Path, tmp_path: Path) -> None:
    import io
    import tarfile

    from dr.sources import WebDatasetSource
    from dr.sources.decode import set_max_image_bytes

    folder = ImageFolderSource(beside / "src")
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tf:
        for name, payload in (("s0.jpg", (beside / "src" / folder.files[0]).read_bytes()), ("s0.cls", b"3")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    wds = WebDatasetSource(str(shard))
    size = len(wds.read_bytes(0))
    try:
        set_max_image_bytes(size - 1)
        for source in (folder, wds):
            with pytest.raises(BadImageError, match=f"above the read limit of {size - 1:,} bytes"):
                source.read(0)
    finally:
        set_max_image_bytes(None)


def test_an_s3_location_is_a_one_line_refusal(beside: Path, tmp_path: Path) -> None:
    store = _copy(beside, tmp_path, "s3://bucket/train")
    for open_store in _readers(store):
        with pytest.raises(StoreMismatchError, match="records its source at 's3://bucket/train'"):
            open_store()
    for args in (["verify", str(store)], ["show", str(store), "--out", str(tmp_path / "v.png")]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 1 and "Traceback" not in r.output and isinstance(r.exception, SystemExit), r.output
        line = next(ln for ln in r.output.splitlines() if "s3://bucket/train" in ln)
        assert "--source" in line and "--trust-store-location" in line


def test_the_rule(tmp_path: Path) -> None:
    from types import SimpleNamespace

    def follows(location: str, store: str, **kw: bool) -> bool:
        header = SimpleNamespace(dataset=SimpleNamespace(location=location))
        try:
            reader_source(store, header, **kw)  # type: ignore[arg-type]
        except StoreMismatchError:
            return False
        return True

    (tmp_path / "d").mkdir()
    store = str(tmp_path / "d" / "s.zarr")
    assert follows(str(tmp_path / "d" / "train"), store) and follows(str(tmp_path / "d" / "train"), store + "/")
    assert not follows(str(tmp_path / "train"), store) and not follows(str(tmp_path / "d" / ".." / "x"), store)
    assert not follows("/etc", store) and not follows("/s.zarr/../etc", "/s.zarr")  # a store in / owns no folder
    for location in ("https://x/y", "s3://b/k", "file:///etc", "list:" + str(tmp_path / "d" / "l.csv"), "wds:/d/a.tar", "train"):
        assert not follows(location, store), location
        assert follows(location, store, trust_store_location=True)
    assert not follows(str(tmp_path / "d" / "train"), "s3://bucket/d/s.zarr")  # a store opened by URL: only what you name


# 2 -- show checks the source ----------------------------------------------------------------
@pytest.fixture(scope="module")
def other(beside: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store's folder with other pictures: the same files, classes and labels, each image's
    bytes those of the next image of its class."""
    out = tmp_path_factory.mktemp("other") / "src"
    shutil.copytree(beside / "src", out)
    for cls in sorted(p for p in out.iterdir() if p.is_dir()):
        files = sorted(cls.iterdir())
        data = [f.read_bytes() for f in files]
        for f, payload in zip(files, data[1:] + data[:1]):
            f.write_bytes(payload)
    return out


def test_show_refuses_other_images_under_the_stores_labels(beside: Path, other: Path, tmp_path: Path) -> None:
    store, png = str(beside / "s.zarr"), str(tmp_path / "v.png")
    r = CliRunner().invoke(cli, ["show", store, "--source", str(other), "--index", "3", "--out", png])
    assert r.exit_code == 1 and "is not the dataset store" in r.output and "content of" in r.output, r.output
    assert not Path(png).exists()
    r = CliRunner().invoke(cli, ["show", store, "--source", str(other), "--index", "3", "--out", png, "--no-check"])
    assert r.exit_code == 0 and Path(png).is_file(), r.output  # the opt-out, which says what it skips:
    assert "images are not re-hashed against the digests" in " ".join(CliRunner().invoke(cli, ["show", "--help"]).output.split())
    for args in ([], ["--source", str(beside / "src")]):
        r = CliRunner().invoke(cli, ["show", store, "--index", "3", "--out", png, *args])
        assert r.exit_code == 0, r.output


def test_show_refuses_the_one_image_it_draws_when_it_differs(beside: Path, tmp_path: Path) -> None:
    """The Dataset's check re-hashes 32 seeded images; ``show`` also checks every image it draws."""
    import numpy as np

    from dr.audit.show import draw_views

    src = tmp_path / "src"
    shutil.copytree(beside / "src", src)
    folder = ImageFolderSource(src)
    sampled = set(np.random.default_rng(0).choice(np.arange(len(folder)), size=32, replace=False).tolist())  # refuse_other_source's
    index = min(set(range(len(folder))) - sampled)
    same_class = next(j for j in range(len(folder)) if j != index and folder.labels()[j] == folder.labels()[index])
    (src / folder.files[index]).write_bytes((src / folder.files[same_class]).read_bytes())  # labels unchanged
    with pytest.raises(StoreMismatchError, match=rf"image {index} of the source .* is not the image store .* holds at that index"):
        draw_views(str(beside / "s.zarr"), str(src), index, tmp_path / "v.png")
    assert draw_views(str(beside / "s.zarr"), str(src), index, tmp_path / "v.png", check=False).is_file()


# 5 -- verify's own threshold ----------------------------------------------------------------
def test_an_edited_min_agreement_in_the_store_changes_no_verdict(beside: Path, tmp_path: Path) -> None:
    store = _copy(beside, tmp_path)

    def labels() -> tuple[bool, str]:
        c = {c.name: c for c in verify_store(str(store))}["labels"]
        return c.ok, c.detail

    before = labels()
    for value in (0, 0.99):
        g = zarr.open_group(str(store), mode="r+")
        attrs = json.loads(json.dumps(dict(g.attrs)))
        attrs["build"]["config"]["min_agreement"] = value
        g.attrs.put(attrs)
        assert labels() == before
    # the user's threshold is a flag: 0 leaves the labels unjudged, 0.99 fails them
    r = CliRunner().invoke(cli, ["verify", str(store), "--min-agreement", "0.99"])
    assert r.exit_code == 1 and "FAIL  labels" in r.output, r.output
    r = CliRunner().invoke(cli, ["verify", str(store), "--min-agreement", "0"])
    assert "PASS  labels" in r.output, r.output
