"""Input datasets for a build and for training.

A *source* is an indexed, labelled collection of images:

* :class:`ImageFolderSource` -- a directory in the ImageFolder layout
  (``root/<class>/<image>``, the ImageNet layout); ordering is identical to
  ``torchvision.datasets.ImageFolder`` (sorted classes, sorted files);
* :class:`TorchDatasetSource` -- any map-style dataset returning ``(image, label)`` where
  the image is a PIL image, an ``HxWxC`` uint8 array or a ``CxHxW`` uint8 tensor;
* WebDataset shards, file lists, saved Hugging Face datasets and CIFAR's binary layout,
  named by spec strings ``KIND:LOCATION[?opts]`` (:func:`open_source` opens any of them).

Every pixel that enters the build or the training loader goes through :func:`decode_image`
(PIL / libjpeg on CPU), so build-time and train-time views come from identical pixels.

Source specs (:mod:`dr.sources.spec`)::

    ========================================  ==============================================
    ``wds:PATTERN?label=cls``                 WebDataset tar shards, local or fsspec; PATTERN
                                              may use braces (``train-{000000..000127}.tar``)
    ``list:FILE.csv`` / ``list:FILE.jsonl``   a file list with ``path`` and ``label``; paths
                                              relative to the list, absolute, or URLs
    ``hf-disk:PATH?image=img&label=label``    a Hugging Face dataset saved with ``save_to_disk``
    ``cifar10:DIR`` / ``cifar100:DIR``        torchvision's CIFAR layout (``cifar-10-batches-py``)
    a bare path or URL                        an ImageFolder (:class:`ImageFolderSource`)
    ========================================  ==============================================

Every kind gives the guarantees of :class:`ImageFolderSource`: a deterministic order, a
per-image content digest, random access by index (so the training Dataset and ``verify
--source`` work), decoding through :func:`decode_image`, and :class:`~dr.errors.BadImageError`
naming the image for undecodable bytes (the build's ``--on-bad-image fail|skip``). Sources
pickle without open files or big arrays, so they travel to Ray and DataLoader workers cheaply
and re-open what they need there.

Modules, each importing only those before it: :mod:`~dr.sources.decode`,
:mod:`~dr.sources.base`, :mod:`~dr.sources.spec`, :mod:`~dr.sources.folder`,
:mod:`~dr.sources.cifar_pickle`, :mod:`~dr.sources.indexed`, one module per kind (:mod:`~dr.sources.wds`,
:mod:`~dr.sources.filelist`, :mod:`~dr.sources.hfdisk`, :mod:`~dr.sources.cifar`),
:mod:`~dr.sources.open`, :mod:`~dr.sources.concat` (the images of a store's segments as one source).
"""

from dr.sources.base import Source, SourceFingerprint, is_url
from dr.sources.cifar import CifarSource
from dr.sources.cifar_pickle import read_cifar_batch
from dr.sources.concat import ConcatSource
from dr.sources.decode import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    IMG_EXTENSIONS,
    content_digest,
    decode_image,
    max_image_bytes,
    max_image_pixels,
    set_max_image_bytes,
    set_max_image_pixels,
    to_rgb_array,
)
from dr.sources.filelist import FileListSource
from dr.sources.folder import ImageFolderSource, TorchDatasetSource
from dr.sources.hfdisk import HFDiskSource
from dr.sources.open import open_source, open_spec
from dr.sources.spec import SOURCE_KINDS, SourceSpec, absolute_location, canonical_spec, looks_like_spec, parse_source_spec
from dr.sources.wds import WebDatasetSource

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "IMG_EXTENSIONS",
    "SOURCE_KINDS",
    "CifarSource",
    "ConcatSource",
    "FileListSource",
    "HFDiskSource",
    "ImageFolderSource",
    "Source",
    "SourceFingerprint",
    "SourceSpec",
    "TorchDatasetSource",
    "WebDatasetSource",
    "absolute_location",
    "canonical_spec",
    "content_digest",
    "decode_image",
    "is_url",
    "looks_like_spec",
    "max_image_bytes",
    "max_image_pixels",
    "open_source",
    "open_spec",
    "parse_source_spec",
    "read_cifar_batch",
    "set_max_image_bytes",
    "set_max_image_pixels",
    "to_rgb_array",
]
