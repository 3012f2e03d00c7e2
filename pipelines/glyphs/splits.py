"""Glyphs dataset: the class split by character and the query / gallery split by family.

Characters (classes) are shuffled with ``seed`` and cut into disjoint train / val / test class
sets. With every style of a family kept as an instance, the test classes also get a ``query`` /
``gallery`` partition by family, so the styles of one family never sit on both sides of a query
and its match.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from typing import Dict, List, Optional, Tuple

import numpy as np

from pipelines.records import DatasetSplits, Record


@dataclasses.dataclass
class GlyphSplits(DatasetSplits):
    """:class:`DatasetSplits` plus where the glyphs came from.

    Attributes:
        provenance: fonts (path, family, style, sha256, Debian package), package versions,
            options, library versions and cache key that produced the set; also
            ``loaded_from_cache`` for this call.
        instance_families: family name of every row of ``arrays``.
        instance_styles: style (subfamily) name of every row of ``arrays``.
    """

    provenance: dict = dataclasses.field(default_factory=dict)
    instance_families: Optional[np.ndarray] = None
    instance_styles: Optional[np.ndarray] = None


def _split_counts(num_classes: int, val_fraction: float, test_fraction: float) -> Tuple[int, int]:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}.")
    num_test = int(round(num_classes * test_fraction)) if test_fraction else 0
    num_val = int(round(num_classes * val_fraction)) if val_fraction else 0
    num_test = max(num_test, 1 if test_fraction else 0)
    num_val = max(num_val, 1 if val_fraction else 0)
    if num_classes - num_test - num_val < 1:
        raise ValueError(
            f"{num_classes} classes cannot be split into val {val_fraction} / test "
            f"{test_fraction} with at least one training class; lower the fractions or raise "
            "max_classes."
        )
    return num_val, num_test


def _class_name(codepoint: int) -> str:
    return f"U+{codepoint:04X} {chr(codepoint)} ({unicodedata.name(chr(codepoint), '?')})"


def _partition_by_family(records: List[Record], families: np.ndarray, seed: int):
    """Per class, half of its families (with all their styles) to query, the rest to gallery."""
    rng = np.random.default_rng([seed, 1])
    by_class: Dict[int, List[Record]] = {}
    for record in records:
        by_class.setdefault(record.label, []).append(record)
    query, gallery = [], []
    for label in sorted(by_class):
        names = sorted({families[r.source] for r in by_class[label]})
        names = [names[i] for i in rng.permutation(len(names))]
        query_families = set(names[: len(names) // 2])
        for record in by_class[label]:
            (query if families[record.source] in query_families else gallery).append(record)
    return query, gallery


def split_by_character(codepoints: np.ndarray, labels: np.ndarray, families: np.ndarray,
                       styles: np.ndarray, val_fraction: float, test_fraction: float, seed: int,
                       keep_styles: bool) -> Tuple[List[Record], ...]:
    """(train, val, test, query, gallery) records of a rendered set, split by character.

    ``query`` and ``gallery`` partition ``test`` by family when ``keep_styles``, else are empty.
    """
    num_val, num_test = _split_counts(len(codepoints), val_fraction, test_fraction)
    class_order = np.random.default_rng(seed).permutation(len(codepoints))
    test_classes = set(class_order[:num_test].tolist())
    val_classes = set(class_order[num_test:num_test + num_val].tolist())
    train, val, test = [], [], []
    for row, label in enumerate(labels.tolist()):
        record = Record(source=row, label=int(label),
                        item_id=f"U+{int(codepoints[label]):04X}/{families[row]}/{styles[row]}")
        (test if label in test_classes else val if label in val_classes else train).append(record)
    query, gallery = _partition_by_family(test, families, seed) if keep_styles else ([], [])
    return train, val, test, query, gallery
