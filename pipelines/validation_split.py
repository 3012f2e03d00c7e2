"""Carving a class-disjoint validation split out of the training classes."""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np

from pipelines.records import DatasetSplits, Record


def number_of_validation_classes(val_classes: Union[int, float], num_classes: int) -> int:
    """Converts ``val_classes`` (a fraction in [0, 1) or a count) to a class count.

    A positive fraction yields at least one class; whatever is asked, at least one training
    class must remain.
    """
    if isinstance(val_classes, bool) or not isinstance(val_classes, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"val_classes must be a fraction in [0, 1) or a number of classes, got {val_classes!r}."
        )
    value = float(val_classes)
    if 0.0 < value < 1.0:
        count = max(1, int(round(value * num_classes)))
    elif value >= 0 and value.is_integer():
        count = int(value)
    else:
        raise ValueError(
            f"val_classes must be a fraction in (0, 1) or a whole number of classes >= 0, "
            f"got {val_classes!r}."
        )
    if count < 0 or count >= num_classes:
        raise ValueError(
            f"val_classes={val_classes} asks for {count} validation classes but there are only "
            f"{num_classes} training classes; at least one must stay for training. Use a "
            "smaller val_classes (0 disables validation)."
        )
    return count


def carve_validation(
    records: Sequence[Record], val_classes: Union[int, float], seed: int = 0
) -> Tuple[list, list]:
    """Splits training records into (train, val) with no class in both.

    Args:
        records: the training-class records.
        val_classes: fraction of the training classes (0 < f < 1) or a number of classes
            (0 disables validation).
        seed: which classes go to validation is a seeded draw.

    Returns:
        (train, val) record lists, order preserved within each.

    Example:
        >>> recs = [Record(i, i % 10) for i in range(100)]
        >>> train, val = carve_validation(recs, 0.2, seed=0)
        >>> len({r.label for r in val}), len(train) + len(val)
        (2, 100)
    """
    classes = np.unique([r.label for r in records])
    if len(classes) == 0:
        raise ValueError("carve_validation got no training records.")
    count = number_of_validation_classes(val_classes, len(classes))
    chosen = set(np.random.default_rng(seed).choice(classes, size=count, replace=False).tolist())
    train = [r for r in records if r.label not in chosen]
    val = [r for r in records if r.label in chosen]
    return train, val


def with_validation(splits: DatasetSplits, val_classes: Union[int, float], seed: int) -> DatasetSplits:
    """Returns ``splits`` with ``val`` carved from ``train`` (in place; returned for chaining)."""
    splits.train, carved = carve_validation(splits.train, val_classes, seed)
    splits.val = list(splits.val) + carved
    return splits
