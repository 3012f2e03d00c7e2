"""The records every dataset reader returns: what an example is, and what a split is.

A reader turns a dataset's own on-disk layout into :class:`DatasetSplits`. Downstream code
(tf.data pipelines, evaluation, indexing) only ever sees these types, never a dataset's layout.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Record:
    """One example.

    Attributes:
        source: an image file path (str) for on-disk datasets, or an integer row index into
            ``DatasetSplits.arrays`` for in-memory datasets (Fashion-MNIST, rendered glyphs).
        label: integer class id, unique across the whole dataset (train and test classes differ).
        item_id: a stable identifier of the example (its relative path or "<split>/<index>").
    """

    source: object
    label: int
    item_id: str = ""


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    """A file a reader (or the decoder) left out, and why."""

    path: str
    reason: str


@dataclasses.dataclass
class DatasetSplits:
    """All splits of one dataset.

    Attributes:
        name: dataset name as registered ("cub", "cars196", "sop", "inshop", "fashion_mnist", ...).
        train: records of the training classes (validation classes removed).
        val: records of the validation classes, carved from the training classes (class-disjoint).
        test: records of the test classes (zero-shot: no class shared with train/val).
        query, gallery: for query-vs-gallery datasets (In-Shop); empty otherwise, in which case
            retrieval is "test against itself, the query excluded".
        skipped: files the reader left out, each with its reason.
        arrays: for in-memory datasets, uint8 images (N, H, W, C) that integer ``Record.source``
            values index; None for on-disk datasets.
        class_names: optional mapping label -> human-readable name.
    """

    name: str
    train: list
    val: list
    test: list
    query: list = dataclasses.field(default_factory=list)
    gallery: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    arrays: Optional[np.ndarray] = None
    class_names: dict = dataclasses.field(default_factory=dict)

    def split(self, name: str) -> list:
        """Returns the records of split ``name`` with a clear error for an unknown name."""
        if name not in ("train", "val", "test", "query", "gallery"):
            raise ValueError(
                f"Unknown split {name!r}; expected one of train, val, test, query, gallery."
            )
        return getattr(self, name)


def labels_of(records: Sequence[Record]) -> np.ndarray:
    return np.asarray([r.label for r in records], dtype=np.int64)
