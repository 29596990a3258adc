"""Source folders: empty classes are refused, bad images are named, locations are absolute."""

import os
import shutil
from pathlib import Path

import fsspec
import pytest

from dr.errors import BadImageError, SourceError
from dr.sources import ImageFolderSource, absolute_location, decode_image


def test_an_empty_class_folder_is_refused(cifar64: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(cifar64, src)
    (src / "zz empty").mkdir()
    (src / "notes only").mkdir()
    (src / "notes only" / "README.txt").write_text("not an image")
    with pytest.raises(SourceError, match=r"2 class folder\(s\) without images \('notes only', 'zz empty'.*remove the folder"):
        ImageFolderSource(src)
    shutil.rmtree(src / "zz empty")
    shutil.rmtree(src / "notes only")
    assert len(ImageFolderSource(src).classes) == 10


def test_an_empty_class_folder_is_refused_remotely_too(cifar64: Path) -> None:
    fs = fsspec.filesystem("memory")
    for f in sorted(cifar64.rglob("*.jpg"))[:4]:
        fs.pipe(f"/dr-src/{f.parent.name}/{f.name}", f.read_bytes())
    fs.pipe("/dr-src/empty class/notes.txt", b"no image here")
    with pytest.raises(SourceError, match="without images \\('empty class'"):
        ImageFolderSource("memory://dr-src")
    fs.rm("/dr-src/empty class", recursive=True)
    assert len(ImageFolderSource("memory://dr-src")) == 4


def test_bad_image_messages_name_the_file_not_a_buffer() -> None:
    with pytest.raises(BadImageError) as e:
        decode_image(b"this is a text file", "/data/cat/notes.jpg")
    assert "BytesIO" not in str(e.value) and "'notes.jpg'" in str(e.value) and "/data/cat/notes.jpg" in str(e.value)


def test_locations_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_location("sub") == os.path.join(str(tmp_path), "sub")
    assert absolute_location("s3://bucket/train") == "s3://bucket/train"
