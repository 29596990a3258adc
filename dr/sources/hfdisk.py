"""A Hugging Face dataset saved with ``save_to_disk`` as a source (``hf-disk:PATH``), read with pyarrow."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from dr.errors import BadImageError, SourceError
from dr.sources.decode import read_image_file
from dr.sources.indexed import IndexedSource, resolve_labels
from dr.sources.spec import SourceSpec

log = logging.getLogger(__name__)

__all__ = ["HFDiskSource"]


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
                    with open(path, "rb") as f:
                        return read_image_file(f, self.describe(index))
                except OSError as e:
                    raise BadImageError(self.describe(index), f"no embedded bytes and cannot read {path!r}: {e}") from e
            value = data
        if not isinstance(value, (bytes, bytearray)):
            raise BadImageError(self.describe(index), f"column {self.image_column!r} holds {type(value).__name__}, not encoded image bytes")
        return bytes(value)


# ----------------------------------------------------------------------------- CIFAR binary layout
