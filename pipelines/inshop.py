"""In-Shop Clothes Retrieval reader: train classes, and query vs gallery on the test classes."""

from __future__ import annotations

import os
from typing import Optional

from pipelines.errors import DatasetLayoutError
from pipelines.layout import find_root, keep_existing, read_rows, require_file
from pipelines.records import DatasetSplits, Record

INSHOP_LAYOUT = """\
  <root>/                            (or <root>/In-shop Clothes Retrieval Benchmark/ or <root>/inshop/)
      Eval/list_eval_partition.txt   line 1: count, line 2: "image_name item_id evaluation_status",
                                     then "img/<...>/<file>.jpg id_NNNNNNNN train|query|gallery"
      img/WOMEN/..., img/MEN/..."""

_STATUSES = ("train", "query", "gallery")
_PARTITION = os.path.join("Eval", "list_eval_partition.txt")


def load_inshop(root: Optional[str] = None, **options) -> DatasetSplits:
    """Reads In-Shop Clothes Retrieval.

    Item ids become labels (0.. in sorted id order), so train and test labels are disjoint as the
    ids are. ``test`` holds the query records followed by the gallery records (all test-class
    images); retrieval uses ``query`` against ``gallery``.

    Args:
        root: the benchmark folder (holding ``Eval/`` and ``img/``) or its parent.
        **options: none are used.

    Returns:
        DatasetSplits with ``train``, ``query``, ``gallery`` and ``test`` filled.

    Example:
        >>> splits = load_inshop("/data/inshop")  # doctest: +SKIP
        >>> len(splits.query), len(splits.gallery)  # doctest: +SKIP
        (14218, 12612)
    """
    folder = find_root(
        root, _PARTITION, ["In-shop Clothes Retrieval Benchmark", "inshop"], "inshop",
        INSHOP_LAYOUT,
    )
    path = require_file(folder, _PARTITION, "inshop", INSHOP_LAYOUT)
    with open(path, encoding="utf-8") as handle:
        head = [handle.readline().strip() for _ in range(2)]
    if not head[0].isdigit() or head[1].split()[:3] != ["image_name", "item_id", "evaluation_status"]:
        raise DatasetLayoutError(
            "inshop", f"{path!r} must start with a count line and the header "
            f"'image_name item_id evaluation_status'; found {head!r}.", INSHOP_LAYOUT,
        )
    rows = read_rows(path, "inshop", INSHOP_LAYOUT, 3, skip=2)
    ids = sorted({row[1] for row in rows})
    label_of = {item: i for i, item in enumerate(ids)}
    by_status = {status: [] for status in _STATUSES}
    for relative, item, status in (row[:3] for row in rows):
        if status not in by_status:
            raise DatasetLayoutError(
                "inshop", f"{path!r} has evaluation_status {status!r}; expected one of "
                f"{', '.join(_STATUSES)}.", INSHOP_LAYOUT,
            )
        by_status[status].append(Record(os.path.join(folder, relative), label_of[item], relative))
    train_labels = {r.label for r in by_status["train"]}
    test_labels = {r.label for r in by_status["query"] + by_status["gallery"]}
    if train_labels & test_labels:
        raise DatasetLayoutError(
            "inshop", f"{path!r} puts {len(train_labels & test_labels)} item ids in both train "
            "and query/gallery; not the zero-shot partition.", INSHOP_LAYOUT,
        )
    skipped = []
    kept = {status: keep_existing(records, skipped) for status, records in by_status.items()}
    return DatasetSplits(
        name="inshop",
        train=kept["train"],
        val=[],
        test=kept["query"] + kept["gallery"],
        query=kept["query"],
        gallery=kept["gallery"],
        skipped=skipped,
        class_names={i: item for item, i in label_of.items()},
    )
