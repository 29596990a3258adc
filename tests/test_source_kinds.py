"""Source kinds: WebDataset shards, file lists, save_to_disk datasets, CIFAR's binary layout.

Each is the bundled CIFAR-10 sample (the session's 64 JPEGs) repacked by the test, so every
kind must give the ImageFolder's labels and pixels (and, where the bytes are the same JPEGs,
its digests); each then builds a store, verifies against its source and trains a step.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dr.errors import BadImageError, SourceError, StoreMismatchError
from dr.sources import ImageFolderSource, absolute_location, open_source

KINDS = ("wds", "wds-json", "csv", "jsonl", "hf-disk", "cifar10", "cifar100")


@pytest.fixture(scope="module")
def folder(cifar64: Path) -> ImageFolderSource:
    return ImageFolderSource(cifar64)


@pytest.fixture(scope="module")
def repacked(folder: ImageFolderSource, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The 64 images as every kind; returns kind -> source spec."""
    import webdataset as wds

    root = tmp_path_factory.mktemp("kinds")
    n = len(folder)
    files = [folder.root / f for f in folder.files]
    labels = folder.labels().tolist()
    specs: dict[str, str] = {}
    # WebDataset: 3 shards (22/21/21 samples), jpg + cls + json
    (root / "wds").mkdir()
    bounds = [0, 22, 43, n]
    for s in range(3):
        with wds.TarWriter(str(root / "wds" / f"train-{s:06d}.tar")) as sink:
            for i in range(bounds[s], bounds[s + 1]):
                sink.write(
                    {"__key__": f"sample{i:05d}", "jpg": files[i].read_bytes(), "cls": labels[i], "json": {"meta": {"y": labels[i]}}}
                )
    (root / "classes.txt").write_text("\n".join(folder.classes))
    specs["wds"] = f"wds:{root}/wds/train-{{000000..000002}}.tar?label=cls&classes={root}/classes.txt"
    specs["wds-json"] = f"wds:{root}/wds/train-{{000000..000002}}.tar?label=json:meta.y&classes={','.join(folder.classes)}"
    # file lists: CSV with class names and relative paths, JSONL with integer labels and absolute paths
    (root / "lists").mkdir()
    rel = [os.path.relpath(f, root / "lists") for f in files]
    (root / "lists" / "train.csv").write_text("path,label\n" + "".join(f"{p},{folder.classes[y]}\n" for p, y in zip(rel, labels)))
    (root / "lists" / "train.jsonl").write_text("".join(json.dumps({"path": str(f), "label": y}) + "\n" for f, y in zip(files, labels)))
    specs["csv"] = f"list:{root}/lists/train.csv"
    specs["jsonl"] = f"list:{root}/lists/train.jsonl?classes={','.join(folder.classes)}"
    # Hugging Face: a real save_to_disk (Image + ClassLabel features)
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets

    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=list(folder.classes))})
    hf = datasets.Dataset.from_dict({"img": [{"bytes": f.read_bytes(), "path": None} for f in files], "label": labels}, features=features)
    hf.save_to_disk(str(root / "hf"), max_shard_size="40KB")  # several Arrow files
    specs["hf-disk"] = f"hf-disk:{root}/hf?image=img&label=label"
    # CIFAR-10/100: torchvision's pickled batches, pixels decoded from the JPEGs
    pixels = np.stack([folder.read(i)[0] for i in range(n)]).transpose(0, 3, 1, 2).reshape(n, -1)
    c10 = root / "c10" / "cifar-10-batches-py"
    c10.mkdir(parents=True)
    for b in range(5):
        part = slice(b * 13, min(n, (b + 1) * 13))
        with open(c10 / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump({b"data": pixels[part], b"labels": labels[part], b"batch_label": b"x"}, f)
    with open(c10 / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": list(folder.classes), b"num_vis": 3072}, f)
    (c10 / "test_batch").write_bytes((c10 / "data_batch_1").read_bytes())
    c100 = root / "c100" / "cifar-100-python"
    c100.mkdir(parents=True)
    with open(c100 / "train", "wb") as f:
        pickle.dump({b"data": pixels, b"fine_labels": labels, b"coarse_labels": [y // 5 for y in labels]}, f)
    with open(c100 / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": list(folder.classes), b"coarse_label_names": ["a", "b"]}, f)
    specs["cifar10"] = f"cifar10:{root}/c10"
    specs["cifar100"] = f"cifar100:{root}/c100/cifar-100-python"
    return specs


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_gives_the_image_folders_images(kind: str, repacked: dict[str, str], folder: ImageFolderSource) -> None:
    src = open_source(repacked[kind])
    assert len(src) == len(folder) == 64
    assert tuple(src.classes) == folder.classes
    np.testing.assert_array_equal(src.labels(), folder.labels())
    for i in (0, 21, 22, 63):
        img, digest = src.read(i)
        want, want_digest = folder.read(i)
        np.testing.assert_array_equal(img, want)
        if not kind.startswith("cifar"):
            assert digest == want_digest  # the same JPEG bytes
    # deterministic, and a store records a spec that re-opens the same source from anywhere
    again = open_source(absolute_location(repacked[kind]))
    assert again.fingerprint() == src.fingerprint()
    assert pickle.loads(pickle.dumps(src)).read(5)[1] == src.read(5)[1]


def test_shards_and_lists_through_fsspec(repacked: dict[str, str], folder: ImageFolderSource) -> None:
    import fsspec

    mem = fsspec.filesystem("memory")
    local = repacked["wds"].split(":", 1)[1].split("?")[0].rsplit("/", 1)[0]
    for f in sorted(Path(local).iterdir()):
        mem.pipe(f"/wds/{f.name}", f.read_bytes())
    src = open_source("wds:memory://wds/train-{000000..000002}.tar?label=cls&classes=" + ",".join(folder.classes))
    assert len(src) == 64 and src.read(40)[1] == folder.read(40)[1]
    assert absolute_location(src.location) == src.location  # URLs are recorded as given
    mem.pipe("/lists/l.jsonl", (json.dumps({"path": "memory://wds/x.jpg", "label": 1}) + "\n").encode())
    mem.pipe("/wds/x.jpg", (folder.root / folder.files[3]).read_bytes())
    assert open_source("list:memory://lists/l.jsonl").read(0)[1] == folder.read(3)[1]


def test_wds_index_cache_opens_the_same_index(
    repacked: dict[str, str], folder: ImageFolderSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shard index cache: a cached open reads no tar header and gives the index the tar
    walk gave (same arrays, same dtypes); a missing or damaged cache file is rebuilt; the
    labels may be names (json) as well as integers."""
    from dr.sources.wds import WebDatasetSource

    def index(src: Any) -> list[tuple[str, bytes]]:
        return [(str(a.dtype), a.tobytes()) for a in (src.keys, src._shard, src._offset, src._size, src.labels())]

    monkeypatch.setenv("DR_CACHE_DIR", "")
    for kind in ("wds", "wds-json"):
        walked = open_source(repacked[kind])
        monkeypatch.setenv("DR_CACHE_DIR", str(tmp_path / kind))
        first = open_source(repacked[kind])  # indexes the shards and caches them
        files = sorted((tmp_path / kind / "wds-index").glob("*.npz"))
        assert len(files) == 3 and index(first) == index(walked)
        with monkeypatch.context() as m:
            m.setattr(WebDatasetSource, "_index_shard", lambda self, shard: pytest.fail(f"{shard} was indexed again"))
            cached = open_source(repacked[kind])
        assert index(cached) == index(walked) and cached.read(50)[1] == walked.read(50)[1]
        files[0].unlink()
        files[1].write_bytes(b"not a zip file")
        rebuilt = open_source(repacked[kind])
        assert index(rebuilt) == index(walked) and len(list((tmp_path / kind / "wds-index").glob("*.npz"))) == 3
        monkeypatch.setenv("DR_CACHE_DIR", "")
    assert walked.labels().dtype == np.int64 and len(set(walked.labels().tolist())) > 1
    # class names after digit strings (the first shard's labels read as integers, the second's
    # cannot): the names are resolved, cached or not, against the classes given
    import webdataset as wds

    jpeg = (folder.root / folder.files[0]).read_bytes()
    for s, names in enumerate((["3", "3"], ["cat", "dog"])):
        with wds.TarWriter(str(tmp_path / f"named-{s}.tar")) as sink:
            for i, name in enumerate(names):
                sink.write({"__key__": f"s{s}i{i}", "jpg": jpeg, "cls": name})
    spec = f"wds:{tmp_path}/named-{{0..1}}.tar?label=cls&classes=3,cat,dog"
    for cache in ("", str(tmp_path / "named-cache"), str(tmp_path / "named-cache")):
        monkeypatch.setenv("DR_CACHE_DIR", cache)
        assert open_source(spec).labels().tolist() == [0, 0, 1, 2]


def test_hf_dataset_dict_splits(repacked: dict[str, str], tmp_path: Path) -> None:
    import datasets

    hf = datasets.load_from_disk(repacked["hf-disk"].split(":", 1)[1].split("?")[0])
    datasets.DatasetDict({"train": hf.select(range(40)), "test": hf.select(range(40, 64))}).save_to_disk(str(tmp_path / "dd"))
    assert len(open_source(f"hf-disk:{tmp_path}/dd?image=img")) == 40  # train by default
    test = open_source(f"hf-disk:{tmp_path}/dd?image=img&split=test")
    assert len(test) == 24 and test.read(0)[1] == open_source(repacked["hf-disk"]).read(40)[1]
    with pytest.raises(SourceError, match=r"splits \['train', 'test'\]: pass \?split=NAME"):
        open_source(f"hf-disk:{tmp_path}/dd?image=img&split=val")


def test_cifar_digests_match_a_wrapped_torchvision_dataset(repacked: dict[str, str]) -> None:
    from dr.sources import TorchDatasetSource

    src = open_source(repacked["cifar10"])
    wrapped = TorchDatasetSource([(src.read(i)[0], int(y)) for i, y in enumerate(src.labels())], classes=src.classes)
    assert wrapped.read(7)[1] == src.read(7)[1]
    assert len(open_source(repacked["cifar10"] + "?split=test")) == 13
    assert open_source(repacked["cifar100"] + "?labels=coarse").classes == ("a", "b")


def test_spec_errors_name_the_kinds_and_options(repacked: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"unknown kind 'wsd'; use one of wds, list, hf-disk, cifar10, cifar100"):
        open_source("wsd:/data/train-{0..3}.tar")
    with pytest.raises(SourceError, match="unknown option 'lable' for wds; accepted: label, image, classes"):
        open_source(repacked["wds"].replace("label=", "lable="))
    with pytest.raises(SourceError, match="no 'txt' member for label=txt"):
        open_source(repacked["wds"].replace("label=cls", "label=txt"))
    with pytest.raises(SourceError, match="header naming the columns path and label"):
        (tmp_path / "l.csv").write_text("file,y\na.jpg,0\n")
        open_source(f"list:{tmp_path}/l.csv")
    with pytest.raises(SourceError, match="never downloaded"):
        open_source(f"cifar10:{tmp_path}")
    # a folder whose name has a colon is still an ImageFolder
    assert absolute_location("s3://bucket/train") == "s3://bucket/train"


def test_bad_images_name_the_member(repacked: dict[str, str], tmp_path: Path) -> None:
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "bad.tar")) as sink:
        sink.write({"__key__": "good", "jpg": b"not a jpeg", "cls": 3})
    src = open_source(f"wds:{tmp_path}/bad.tar")
    with pytest.raises(BadImageError, match="bad.tar:good"):
        src.read(0)
    (tmp_path / "l.jsonl").write_text(json.dumps({"path": "missing.jpg", "label": 0}) + "\n")
    with pytest.raises(BadImageError, match="missing.jpg"):
        open_source(f"list:{tmp_path}/l.jsonl").read(0)


@pytest.mark.parametrize("kind", ["wds", "csv", "hf-disk", "cifar10"])
def test_each_kind_builds_verifies_and_trains(kind: str, repacked: dict[str, str], tiny_teacher: str, ray_session, tmp_path: Path) -> None:
    from dr import ReinforcedDataset
    from dr.builder import BuildConfig, reinforce
    from dr.loss import soft_cross_entropy
    from dr.teachers.zoo import tiny_cnn

    out = tmp_path / "s.zarr"
    config = BuildConfig(
        source=repacked[kind], teachers=[tiny_teacher], policy="cifar", views=2, topk=3, out=str(out), chunk_size=32, workers=1
    )
    assert reinforce(config, progress=False).complete
    # a recorded spec is followed only when the user says so (a spec may name any file or URL)
    with pytest.raises(StoreMismatchError, match="does not open unless you ask"):
        ReinforcedDataset(str(out))
    # then the recorded spec re-opens the source; every image's digest is checked (verify's source check)
    ds = ReinforcedDataset(str(out), verify_source="all", trust_store_location=True)
    assert ds.header.dataset.location == absolute_location(repacked[kind])
    loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True)
    model = tiny_cnn(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for images, targets in loader:
        loss = soft_cross_entropy(model(images), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)


def test_the_cli_takes_source_specs(repacked: dict[str, str], tiny_teacher: str, ray_session, tmp_path: Path) -> None:
    """What a user types: `dr-build reinforce list:FILE.jsonl ...`, then `dr-build verify
    STORE --source wds:...` -- another kind of the same images passes the content check."""
    from click.testing import CliRunner

    from dr.cli.main import cli

    out = str(tmp_path / "cli.zarr")
    args = ["reinforce", repacked["jsonl"], "--teacher", tiny_teacher, "--policy", "cifar"]
    r = CliRunner().invoke(cli, [*args, "--views", "2", "--topk", "3", "--chunk-size", "32", "--out", out, "--quiet"])
    assert r.exit_code == 0, r.output
    info = CliRunner().invoke(cli, ["info", out, "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout)["dataset"]["kind"] == "list"
    r = CliRunner().invoke(cli, ["verify", out, "--source", repacked["wds"], "--content", "all"])
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output and "source" in r.output


def test_cifar_batches_are_read_without_unpickling() -> None:
    """CIFAR's batches are pickles; the reader parses their opcodes and builds only plain data
    and numpy arrays (every protocol), and refuses any other global without importing it."""
    import os

    from dr.sources import read_cifar_batch

    batch = {b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), b"labels": [3, 7], "label_names": ["a", "b"]}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        got = read_cifar_batch(pickle.dumps(batch, protocol=protocol))
        assert np.array_equal(got[b"data"], batch[b"data"]) and got[b"labels"] == [3, 7] and got["label_names"] == ["a", "b"]
    for bad in (os.system, {"x": eval}):
        with pytest.raises(SourceError, match="not allowed in a CIFAR batch"):
            read_cifar_batch(pickle.dumps(bad))
