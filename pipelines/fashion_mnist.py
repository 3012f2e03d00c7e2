"""Fashion-MNIST reader, the embedded default dataset: classes 0-4 train, 5-9 test (zero-shot).

Train records are the train-file images of classes 0-4 (30,000); test records are the t10k-file
images of classes 5-9 (5,000). Images are held in memory: ``DatasetSplits.arrays`` is uint8
(N, 28, 28, 1) and each ``Record.source`` is a row of it.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from pipelines.errors import DatasetLayoutError
from pipelines.idx import IdxFormatError, read_idx
from pipelines.records import DatasetSplits, Record

# The Debian package dataset-fashion-mnist installs here; Keras caches its download below.
DEFAULT_ROOTS = (
    "/usr/share/datasets/fashion-mnist",
    os.path.join("~", ".keras", "datasets", "fashion-mnist"),
)
FASHION_MNIST_LAYOUT = """\
  <root>/train-images-idx3-ubyte[.gz]   <root>/train-labels-idx1-ubyte[.gz]
  <root>/t10k-images-idx3-ubyte[.gz]    <root>/t10k-labels-idx1-ubyte[.gz]
  (apt-get install dataset-fashion-mnist puts them in /usr/share/datasets/fashion-mnist)"""
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
TRAIN_CLASSES = (0, 1, 2, 3, 4)
TEST_CLASSES = (5, 6, 7, 8, 9)


def _find(folder: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise DatasetLayoutError(
        "fashion_mnist", f"{os.path.join(folder, stem)!r} (or .gz) is missing.",
        FASHION_MNIST_LAYOUT,
    )


def _read_part(folder: str, part: str) -> tuple:
    try:
        images = read_idx(_find(folder, f"{part}-images-idx3-ubyte"))
        labels = read_idx(_find(folder, f"{part}-labels-idx1-ubyte"))
    except IdxFormatError as error:
        raise DatasetLayoutError("fashion_mnist", str(error), FASHION_MNIST_LAYOUT) from error
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetLayoutError(
            "fashion_mnist", f"{part} images {images.shape} and labels {labels.shape} do not "
            "pair up.", FASHION_MNIST_LAYOUT,
        )
    return images, labels


def resolve_root(root: Optional[str]) -> str:
    """The folder to read: ``root`` if given, else the first default that has the files."""
    if root is not None:
        return os.path.expanduser(os.fspath(root))
    for candidate in (os.path.expanduser(c) for c in DEFAULT_ROOTS):
        if os.path.isdir(candidate):
            return candidate
    raise DatasetLayoutError(
        "fashion_mnist", f"no root given and none of {', '.join(DEFAULT_ROOTS)} exists.",
        FASHION_MNIST_LAYOUT,
    )


def load_fashion_mnist(root: Optional[str] = None, **options) -> DatasetSplits:
    """Reads Fashion-MNIST's IDX files into the zero-shot split.

    Args:
        root: folder with the four IDX files (plain or ``.gz``); defaults to the Debian package
            folder, then the Keras cache.
        **options: none are used.

    Returns:
        DatasetSplits with in-memory ``arrays`` (N, 28, 28, 1) uint8 holding only the images the
        records use; ``item_id`` is ``"train/<row>"`` or ``"t10k/<row>"`` of the original file.

    Example:
        >>> splits = load_fashion_mnist()  # doctest: +SKIP
        >>> len(splits.test), splits.arrays.shape[1:]  # doctest: +SKIP
        (5000, (28, 28, 1))
    """
    folder = resolve_root(root)
    if not os.path.isdir(folder):
        raise DatasetLayoutError(
            "fashion_mnist", f"root {folder!r} is not a directory.", FASHION_MNIST_LAYOUT
        )
    train_images, train_labels = _read_part(folder, "train")
    test_images, test_labels = _read_part(folder, "t10k")
    train_rows = np.flatnonzero(np.isin(train_labels, TRAIN_CLASSES))
    test_rows = np.flatnonzero(np.isin(test_labels, TEST_CLASSES))
    arrays = np.concatenate([train_images[train_rows], test_images[test_rows]])[..., None]
    train = [
        Record(i, int(train_labels[row]), f"train/{row}") for i, row in enumerate(train_rows)
    ]
    offset = len(train_rows)
    test = [
        Record(offset + i, int(test_labels[row]), f"t10k/{row}") for i, row in enumerate(test_rows)
    ]
    return DatasetSplits(
        name="fashion_mnist",
        train=train,
        val=[],
        test=test,
        arrays=np.ascontiguousarray(arrays),
        class_names=dict(enumerate(CLASS_NAMES)),
    )
