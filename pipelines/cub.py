"""CUB-200-2011 reader: classes 1-100 train, 101-200 test (zero-shot protocol)."""

from __future__ import annotations

import os
from typing import Optional

from pipelines.errors import DatasetLayoutError
from pipelines.layout import find_root, keep_existing, read_rows, require_file
from pipelines.records import DatasetSplits, Record

CUB_LAYOUT = """\
  <root>/CUB_200_2011/            (or <root> itself)
      images.txt                  "<image_id> <class folder>/<file>.jpg"
      image_class_labels.txt      "<image_id> <class 1..200>"
      classes.txt                 "<class> <NNN.Name>" (optional, for names)
      images/NNN.Name/*.jpg"""

NUM_TRAIN_CLASSES = 100


def load_cub(root: Optional[str] = None, **options) -> DatasetSplits:
    """Reads CUB-200-2011 from its unpacked archive.

    Labels are the archive's class ids minus one (0..199): 0..99 train, 100..199 test.

    Args:
        root: the ``CUB_200_2011`` folder or the folder containing it.
        **options: none are used; accepted so ``load_dataset`` can pass shared options.

    Returns:
        DatasetSplits with ``train`` and ``test`` filled (``val`` is carved by ``load_dataset``).

    Example:
        >>> splits = load_cub("/data/CUB_200_2011")  # doctest: +SKIP
        >>> len(splits.train), len(splits.test)  # doctest: +SKIP
        (5864, 5924)
    """
    folder = find_root(root, "images.txt", ["CUB_200_2011"], "cub", CUB_LAYOUT)
    images = read_rows(require_file(folder, "images.txt", "cub", CUB_LAYOUT), "cub", CUB_LAYOUT, 2)
    labels_path = require_file(folder, "image_class_labels.txt", "cub", CUB_LAYOUT)
    labels = dict(read_rows(labels_path, "cub", CUB_LAYOUT, 2))
    class_names = {}
    classes_path = os.path.join(folder, "classes.txt")
    if os.path.isfile(classes_path):
        for class_id, name in read_rows(classes_path, "cub", CUB_LAYOUT, 2):
            class_names[int(class_id) - 1] = name.split(".", 1)[-1].replace("_", " ")
    image_dir = os.path.join(folder, "images")
    if not os.path.isdir(image_dir):
        raise DatasetLayoutError("cub", f"image folder {image_dir!r} is missing.", CUB_LAYOUT)

    train, test = [], []
    for image_id, relative in ((row[0], row[1]) for row in images):
        if image_id not in labels:
            raise DatasetLayoutError(
                "cub", f"image id {image_id} of images.txt has no row in {labels_path!r}.",
                CUB_LAYOUT,
            )
        label = int(labels[image_id]) - 1
        record = Record(os.path.join(image_dir, relative), label, relative)
        (train if label < NUM_TRAIN_CLASSES else test).append(record)
    skipped = []
    return DatasetSplits(
        name="cub",
        train=keep_existing(train, skipped),
        val=[],
        test=keep_existing(test, skipped),
        skipped=skipped,
        class_names=class_names,
    )
