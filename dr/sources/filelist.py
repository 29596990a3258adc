"""A file list as a source (``list:FILE.csv`` / ``list:FILE.jsonl``: path and label rows)."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from dr.errors import BadImageError, SourceError
from dr.sources.base import is_url
from dr.sources.decode import read_image_file
from dr.sources.indexed import IndexedSource, classes_arg, read_text, resolve_labels
from dr.sources.spec import SourceSpec
from dr.urls import Location

log = logging.getLogger(__name__)

__all__ = ["FileListSource"]


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
                with Location(where, self.storage_options).open("rb") as f:
                    return read_image_file(f, where)
            with open(where.removeprefix("file://"), "rb") as f:
                return read_image_file(f, where)
        except (OSError, ValueError) as e:
            raise BadImageError(where, f"cannot read file: {e}") from e


# ----------------------------------------------------------------------------- Hugging Face save_to_disk
