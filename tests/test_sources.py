from pathlib import Path

import numpy as np
import pytest
import torchvision

from dr.errors import BadImageError, SourceError
from dr.sources import ImageFolderSource, TorchDatasetSource, decode_image, open_source


def test_image_folder_matches_torchvision_order(cifar64: Path) -> None:
    src = ImageFolderSource(cifar64)
    tv = torchvision.datasets.ImageFolder(str(cifar64))
    assert len(src) == len(tv) == 64
    assert list(src.classes) == tv.classes
    assert src.labels().tolist() == [t for _, t in tv.samples]
    assert [str(cifar64 / f) for f in src.files] == [p for p, _ in tv.samples]


def test_decode_matches_pil_and_wrapping_a_dataset_gives_same_pixels(cifar64: Path) -> None:
    src = ImageFolderSource(cifar64)
    wrapped = TorchDatasetSource(torchvision.datasets.ImageFolder(str(cifar64)))
    for i in (0, 17, 63):
        a, digest = src.read(i)
        b, _ = wrapped.read(i)
        assert a.shape == (32, 32, 3) and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
        assert len(digest) == 16
    assert wrapped.fingerprint().labels_sha256 == src.fingerprint().labels_sha256


def test_fingerprint_changes_with_labels(cifar64: Path, tmp_path: Path) -> None:
    a = ImageFolderSource(cifar64).fingerprint()
    assert a == ImageFolderSource(cifar64).fingerprint()
    other = tmp_path / "x"
    for cls in ("airplane", "bird"):
        (other / cls).mkdir(parents=True)
    for f in sorted((cifar64 / "airplane").iterdir())[:2]:
        (other / "bird" / f.name).write_bytes(f.read_bytes())
    (other / "airplane" / "a.jpg").write_bytes(f.read_bytes())  # an empty class folder is refused
    b = ImageFolderSource(other).fingerprint()
    assert b.count == 3 and b.labels_sha256 != a.labels_sha256


def test_missing_and_empty_sources_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does-not-exist"):
        open_source(tmp_path / "does-not-exist")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(SourceError, match="no images"):
        ImageFolderSource(tmp_path / "empty")


def test_bad_bytes_raise_bad_image_error_with_location() -> None:
    with pytest.raises(BadImageError, match="broken.jpg"):
        decode_image(b"this is not a jpeg", "broken.jpg")
