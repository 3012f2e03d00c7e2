"""Stanford Online Products reader: Ebay_train.txt classes train, Ebay_test.txt classes test."""

from __future__ import annotations

import os
from typing import Optional

from pipelines.errors import DatasetLayoutError
from pipelines.layout import find_root, keep_existing, read_rows, require_file
from pipelines.records import DatasetSplits, Record

SOP_LAYOUT = """\
  <root>/Stanford_Online_Products/   (or <root> itself)
      Ebay_info.txt                  header "image_id class_id super_class_id path"
      Ebay_train.txt                 same columns, classes 1..11318
      Ebay_test.txt                  same columns, classes 11319..22634
      bicycle_final/*.JPG, cabinet_final/*.JPG, ..."""

_HEADER = ["image_id", "class_id", "super_class_id", "path"]


def _read_split(folder: str, filename: str) -> list:
    path = require_file(folder, filename, "sop", SOP_LAYOUT)
    rows = read_rows(path, "sop", SOP_LAYOUT, 4)
    if rows[0][:4] != _HEADER:
        raise DatasetLayoutError(
            "sop", f"{path!r} does not start with the header {' '.join(_HEADER)!r}.", SOP_LAYOUT
        )
    return [
        Record(os.path.join(folder, row[3]), int(row[1]) - 1, row[3]) for row in rows[1:]
    ]


def load_sop(root: Optional[str] = None, **options) -> DatasetSplits:
    """Reads Stanford Online Products.

    Labels are ``class_id - 1``. ``Ebay_info.txt`` must be present (it identifies the layout),
    the splits come from ``Ebay_train.txt`` and ``Ebay_test.txt``.

    Args:
        root: the ``Stanford_Online_Products`` folder or the folder containing it.
        **options: none are used.

    Returns:
        DatasetSplits with ``train`` and ``test`` filled.

    Example:
        >>> splits = load_sop("/data")  # doctest: +SKIP
        >>> len(splits.train), len(splits.test)  # doctest: +SKIP
        (59551, 60502)
    """
    folder = find_root(root, "Ebay_info.txt", ["Stanford_Online_Products"], "sop", SOP_LAYOUT)
    train = _read_split(folder, "Ebay_train.txt")
    test = _read_split(folder, "Ebay_test.txt")
    shared = {r.label for r in train} & {r.label for r in test}
    if shared:
        raise DatasetLayoutError(
            "sop", f"Ebay_train.txt and Ebay_test.txt share {len(shared)} classes; the files "
            "are not the zero-shot split.", SOP_LAYOUT,
        )
    skipped = []
    return DatasetSplits(
        name="sop",
        train=keep_existing(train, skipped),
        val=[],
        test=keep_existing(test, skipped),
        skipped=skipped,
    )
