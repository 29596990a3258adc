"""Source kinds beyond the ImageFolder: WebDataset shards, file lists, saved Hugging Face
datasets and CIFAR's own binary layout (see :mod:`dr.sources` for the spec strings)."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dr.errors import BadImageError, SourceError
from dr.sources.base import is_url
from dr.sources.cifar_pickle import read_cifar_batch
from dr.sources.decode import IMG_EXTENSIONS, content_digest
from dr.sources.indexed import IndexedSource, classes_arg, fs_for, read_text, resolve_labels
from dr.sources.spec import SourceSpec

log = logging.getLogger(__name__)

__all__ = ["CifarSource", "FileListSource", "HFDiskSource", "WebDatasetSource"]

IMAGE_EXTS = tuple(e.lstrip(".") for e in IMG_EXTENSIONS)


def _odd_member(name: str) -> str | None:
    """Why a tar member's name cannot name a WebDataset sample (``None``: it can)."""
    if "\\" in name:
        return "a backslash"
    if name.startswith("/"):
        return "an absolute path"
    if ".." in name.split("/"):
        return "a '..' component"
    if not _split_key(name)[0].rpartition("/")[2]:
        return "no sample key before its extension"
    return None


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's sample key and extension: the extension starts at the first dot of the
    file name (``a/b/img001.seg.png`` -> ``a/b/img001``, ``seg.png``)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


class WebDatasetSource(IndexedSource):
    """WebDataset tar shards, read at random through an index of member offsets.

    The index (shard, byte offset and size of each sample's image, its label) is built once
    per process by walking the tar headers with :mod:`tarfile` (label members are read; image
    bytes are skipped), then an image is one ranged read: ``seek`` + ``read`` locally,
    ``cat_file(start, end)`` through fsspec.

    Args:
        pattern: shard path or URL, with brace ranges/lists (``train-{000000..000127}.tar``).
        label: where the label lives: an extension (``cls``: the member's text is an integer
            or a class name) or ``json:FIELD`` (a field, dotted for nesting, of ``KEY.json``).
        image: the image extension (default: the first member with an image extension).
        classes: class names (default: ``"0".."C-1"`` for integer labels, else the sorted names).
        storage_options: fsspec options for remote shards.

    Tar members whose names cannot name a sample (a backslash, an absolute path, a ``..``
    component, nothing before the extension) belong to no sample: they are left out, listed in
    ``ignored_members`` and logged, so one odd member never aborts a build.
    """

    kind = "wds"

    def __init__(
        self,
        pattern: str,
        *,
        label: str = "cls",
        image: str | None = None,
        classes: Sequence[str] | str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        from braceexpand import braceexpand

        self.pattern = pattern if is_url(pattern) else os.path.abspath(os.path.expanduser(pattern))
        self.storage_options = dict(storage_options or {})
        names, classes_opt = classes_arg(classes, self.storage_options)
        options = {"label": label, **({"image": image} if image else {}), **classes_opt}
        self.location = SourceSpec("wds", self.pattern, options).text()
        self.label_key, self.image_ext = label, image
        self.shards = list(braceexpand(self.pattern))
        self._fs: Any = None
        if is_url(self.pattern):
            self._fs = fs_for(self.shards[0], self.storage_options)[0]
        shard_ids: list[int] = []
        offsets: list[int] = []
        sizes: list[int] = []
        self.keys: list[str] = []
        self.ignored_members: list[str] = []
        raw_labels: list[Any] = []
        for s, shard in enumerate(self.shards):
            for key, offset, size, lab in self._index_shard(shard):
                shard_ids.append(s)
                offsets.append(offset)
                sizes.append(size)
                self.keys.append(key)
                raw_labels.append(lab)
        if not self.keys:
            raise SourceError(f"source {self.location!r}: the shards hold no samples")
        self._shard = np.asarray(shard_ids, dtype=np.int32)
        self._offset = np.asarray(offsets, dtype=np.int64)
        self._size = np.asarray(sizes, dtype=np.int64)
        self._labels, self._classes = resolve_labels(raw_labels, names, f"source {self.location!r}")

    def _open(self, shard: str) -> Any:
        try:
            if self._fs is not None:
                return self._fs.open(self._fs._strip_protocol(shard), "rb")
            return open(shard, "rb")
        except (OSError, ValueError) as e:
            raise SourceError(f"source {self.location!r}: cannot open shard {shard!r}: {type(e).__name__}: {e}") from e

    def _index_shard(self, shard: str) -> list[tuple[str, int, int, Any]]:
        samples: list[tuple[str, int, int, Any]] = []
        current: str | None = None
        members: dict[str, tarfile.TarInfo] = {}

        def finish(tf: tarfile.TarFile) -> None:
            if current is None:
                return
            where = f"{shard}:{current}"
            if self.image_ext:
                img = members.get(self.image_ext)
            else:
                img = next((members[e] for e in members if e.lower() in IMAGE_EXTS), None)
            if img is None:
                raise SourceError(
                    f"sample {where} has no image member (found {', '.join(sorted(members)) or 'nothing'}; "
                    f"expected {self.image_ext or '/'.join(IMAGE_EXTS)}): pass ?image=EXT"
                )
            samples.append((current, img.offset_data, img.size, self._label_of(tf, members, where)))

        with self._open(shard) as f:
            try:
                with tarfile.open(fileobj=f, mode="r:") as tf:
                    for m in tf:
                        if not m.isfile():
                            continue
                        odd = _odd_member(m.name)
                        if odd is not None:
                            log.warning("source %s: shard %s: ignoring tar member %r (%s)", self.location, shard, m.name, odd)
                            self.ignored_members.append(f"{shard}:{m.name}")
                            continue
                        key, ext = _split_key(m.name)
                        if key != current:
                            finish(tf)
                            current, members = key, {}
                        members[ext] = m
                    finish(tf)
            except tarfile.TarError as e:
                raise SourceError(f"source {self.location!r}: shard {shard!r} is not a readable tar file: {e}") from e
        return samples

    def _label_of(self, tf: tarfile.TarFile, members: dict[str, tarfile.TarInfo], where: str) -> Any:
        ext, _, fieldpath = self.label_key.partition(":")
        member = members.get(ext)
        if member is None:
            raise SourceError(f"sample {where} has no '{ext}' member for label={self.label_key} (found {', '.join(sorted(members))})")
        handle = tf.extractfile(member)
        text = handle.read().decode("utf-8").strip() if handle is not None else ""
        if not fieldpath:
            return text
        try:
            value: Any = json.loads(text)
            for part in fieldpath.split("."):
                value = value[part]
        except (json.JSONDecodeError, KeyError, TypeError, IndexError) as e:
            raise SourceError(f"sample {where}: no field {fieldpath!r} in its .{ext} member ({type(e).__name__}: {e})") from e
        return value

    def describe(self, index: int) -> str:
        return f"{self.shards[int(self._shard[index])]}:{self.keys[index]}"

    def read_bytes(self, index: int) -> bytes:
        shard = self.shards[int(self._shard[index])]
        start, size = int(self._offset[index]), int(self._size[index])
        try:
            if self._fs is not None:
                data = bytes(self._fs.cat_file(self._fs._strip_protocol(shard), start=start, end=start + size))
            else:
                with open(shard, "rb") as f:
                    f.seek(start)
                    data = f.read(size)
        except OSError as e:
            raise BadImageError(self.describe(index), f"cannot read shard member: {e}") from e
        if len(data) != size:
            raise BadImageError(self.describe(index), f"short read ({len(data)} of {size} bytes): the shard changed since it was indexed")
        return data


# ----------------------------------------------------------------------------- file lists


class FileListSource(IndexedSource):
    """A CSV (header with ``path`` and ``label``) or JSONL (``{"path": ..., "label": ...}``)
    file list. Paths are relative to the list's folder, absolute, or URLs (fsspec); labels are
    integers or class names. The order is the list's.
    """

    kind = "list"

    def __init__(self, path: str, *, classes: Sequence[str] | str | None = None, storage_options: Mapping[str, Any] | None = None) -> None:
        self.path = path if is_url(path) else os.path.abspath(os.path.expanduser(path))
        self.storage_options = dict(storage_options or {})
        names, classes_opt = classes_arg(classes, self.storage_options)
        self.location = SourceSpec("list", self.path, classes_opt).text()
        text = read_text(self.path, self.storage_options)
        rows = self._parse(text)
        if not rows:
            raise SourceError(f"file list {self.path!r} lists no images")
        base = self.path.rsplit("/", 1)[0]
        self.files = [p if ("://" in p or os.path.isabs(p)) else f"{base}/{p}" for p, _ in rows]
        self._labels, self._classes = resolve_labels([lab for _, lab in rows], names, f"file list {self.path!r}")
        self._fs: Any = None

    def _parse(self, text: str) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = []
        if self.path.lower().endswith((".jsonl", ".ndjson")):
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    rows.append((str(obj["path"]), obj["label"]))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise SourceError(
                        f'file list {self.path!r} line {n}: expected {{"path": ..., "label": ...}} ({type(e).__name__}: {e})'
                    ) from e
            return rows
        if not self.path.lower().endswith((".csv", ".tsv")):
            raise SourceError(f"file list {self.path!r}: use a .csv (header path,label) or a .jsonl file")
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if self.path.lower().endswith(".tsv") else ",")
        if not reader.fieldnames or "path" not in reader.fieldnames or "label" not in reader.fieldnames:
            raise SourceError(
                f"file list {self.path!r}: the first line must be a header naming the columns path and label (got {reader.fieldnames})"
            )
        for n, row in enumerate(reader, 2):
            if not row.get("path"):
                raise SourceError(f"file list {self.path!r} line {n}: empty path")
            rows.append((row["path"], row["label"]))
        return rows

    def describe(self, index: int) -> str:
        return self.files[index]

    def read_bytes(self, index: int) -> bytes:
        where = self.files[index]
        try:
            if is_url(where):
                import fsspec

                with fsspec.open(where, "rb", **self.storage_options) as f:
                    return bytes(f.read())
            return Path(where.removeprefix("file://")).read_bytes()
        except (OSError, ValueError) as e:
            raise BadImageError(where, f"cannot read file: {e}") from e


# ----------------------------------------------------------------------------- Hugging Face save_to_disk


class HFDiskSource(IndexedSource):
    """A Hugging Face dataset saved with ``Dataset.save_to_disk`` (or a split of a
    ``DatasetDict``), read with pyarrow alone: the Arrow files listed in ``state.json``,
    memory-mapped; class names from ``dataset_info.json`` (``ClassLabel``). No network.

    Args:
        path: the folder ``save_to_disk`` wrote.
        image: the image column (``Image`` feature: ``{bytes, path}``, or plain bytes).
        label: the label column (``ClassLabel``, integers or strings).
        split: for a ``DatasetDict``: the split folder (default ``train`` when there is one).
    """

    kind = "hf-disk"

    def __init__(self, path: str, *, image: str = "image", label: str = "label", split: str | None = None) -> None:
        root = Path(os.path.abspath(os.path.expanduser(path)))
        if not root.is_dir():
            raise SourceError(f"source 'hf-disk:{path}': {str(root)!r} is not a folder written by save_to_disk")
        options = {"image": image, "label": label, **({"split": split} if split else {})}
        self.location = SourceSpec("hf-disk", str(root), options).text()
        if (root / "dataset_dict.json").exists():
            splits = json.loads((root / "dataset_dict.json").read_text())["splits"]
            split = split or ("train" if "train" in splits else None)
            if split is None or split not in splits:
                raise SourceError(f"source {self.location!r} is a DatasetDict with splits {splits}: pass ?split=NAME")
            root = root / split
        elif split:
            raise SourceError(f"source {self.location!r} is a single Dataset, not a DatasetDict: drop ?split=")
        try:
            state = json.loads((root / "state.json").read_text())
            info = json.loads((root / "dataset_info.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SourceError(f"source {self.location!r}: not a save_to_disk folder (state.json / dataset_info.json: {e})") from e
        self.files = [str(root / f["filename"]) for f in state.get("_data_files", [])]
        if not self.files:
            raise SourceError(f"source {self.location!r}: state.json lists no Arrow files")
        self.image_column, self.label_column = image, label
        table = self._table()
        for col in (image, label):
            if col not in table.column_names:
                raise SourceError(
                    f"source {self.location!r}: no column {col!r}; columns: {', '.join(table.column_names)} (use ?image=...&label=...)"
                )
        feature = (info.get("features") or {}).get(label) or {}
        names = feature.get("names") if feature.get("_type") == "ClassLabel" else None
        raw = table.column(label).to_pylist()
        if any(v is None for v in raw):
            raise SourceError(f"source {self.location!r}: column {label!r} has missing labels")
        self._labels, self._classes = resolve_labels(raw, names, f"source {self.location!r}")
        self._tbl: Any = None

    def _table(self) -> Any:
        import pyarrow as pa

        batches = []
        for f in self.files:
            source = pa.memory_map(f, "r")
            try:
                batches.append(pa.ipc.open_stream(source).read_all())
            except pa.ArrowInvalid:
                batches.append(pa.ipc.open_file(source).read_all())
        return pa.concat_tables(batches) if len(batches) > 1 else batches[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tbl": None}  # workers re-map the files

    def describe(self, index: int) -> str:
        return f"{self.location}[{index}]"

    def read_bytes(self, index: int) -> bytes:
        if self._tbl is None:
            self._tbl = self._table()
        value = self._tbl.column(self.image_column)[index].as_py()
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is None and path:
                try:
                    return Path(path).read_bytes()
                except OSError as e:
                    raise BadImageError(self.describe(index), f"no embedded bytes and cannot read {path!r}: {e}") from e
            value = data
        if not isinstance(value, (bytes, bytearray)):
            raise BadImageError(self.describe(index), f"column {self.image_column!r} holds {type(value).__name__}, not encoded image bytes")
        return bytes(value)


# ----------------------------------------------------------------------------- CIFAR binary layout


_CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}, "batches.meta"),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "meta"),
}


class CifarSource(IndexedSource):
    """CIFAR-10/100 in torchvision's own local layout (``DIR/cifar-10-batches-py/data_batch_1``
    ..., ``DIR/cifar-100-python/train``); ``DIR`` may also be that folder itself. Never
    downloads. Pixels are the stored uint8 values; the digest hashes them with the shape (as
    :class:`dr.sources.TorchDatasetSource` does, so a wrapped ``torchvision.datasets.CIFAR10``
    has the same digests)."""

    def __init__(self, root: str, *, kind: str = "cifar10", split: str = "train", labels: str = "fine") -> None:
        folder_name, splits, meta_name = _CIFAR_LAYOUT[kind]
        self.kind = kind
        root = os.path.abspath(os.path.expanduser(root))
        self.folder = root if os.path.basename(root.rstrip("/")) == folder_name else os.path.join(root, folder_name)
        if split not in splits:
            raise SourceError(f"source '{kind}:{root}': split={split!r}; use train or test")
        if kind == "cifar10" and labels != "fine":
            raise SourceError(f"source '{kind}:{root}': labels= is a cifar100 option (fine or coarse)")
        if labels not in ("fine", "coarse"):
            raise SourceError(f"source '{kind}:{root}': labels={labels!r}; use fine or coarse")
        options = {"split": split, **({"labels": labels} if kind == "cifar100" and labels != "fine" else {})}
        self.location = SourceSpec(kind, root, options).text()
        self.files = [os.path.join(self.folder, f) for f in splits[split]]
        missing = [f for f in self.files + [os.path.join(self.folder, meta_name)] if not os.path.exists(f)]
        if missing:
            raise SourceError(
                f"source {self.location!r}: missing {', '.join(missing[:3])}: expected torchvision's layout "
                f"DIR/{folder_name}/ (it is never downloaded; extract the python version of the archive there)"
            )
        self.label_field = "labels" if kind == "cifar10" else f"{labels}_labels"
        meta = self._load(os.path.join(self.folder, meta_name))
        name_key = "label_names" if kind == "cifar10" else f"{labels}_label_names"
        self._classes = tuple(str(n) for n in meta[name_key])
        self._data: np.ndarray | None = None
        label_list: list[int] = []
        for f in self.files:
            label_list.extend(int(v) for v in self._load(f)[self.label_field])
        self._labels = np.asarray(label_list, dtype=np.int64)

    def _load(self, path: str) -> dict[str, Any]:
        try:
            with open(path, "rb") as f:
                raw = read_cifar_batch(f.read())
            if not isinstance(raw, dict):
                raise SourceError(f"a CIFAR batch is a dict, this holds a {type(raw).__name__}")
        except (OSError, SourceError, ValueError, KeyError, IndexError, TypeError) as e:
            raise SourceError(f"source {self.location!r}: cannot read {path!r}: {type(e).__name__}: {e}") from e
        return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}

    def _pixels(self) -> np.ndarray:
        if self._data is None:
            parts = [np.asarray(self._load(f)["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for f in self.files]
            self._data = np.ascontiguousarray(np.concatenate(parts).transpose(0, 2, 3, 1))
        return self._data

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}  # workers re-read the batches (~150 MB)

    def describe(self, index: int) -> str:
        return f"{self.location}[{index}]"

    def read(self, index: int) -> tuple[np.ndarray, bytes]:
        arr = self._pixels()[index]
        return arr, content_digest(arr.tobytes() + np.asarray(arr.shape, dtype="<i8").tobytes())
