"""Shared helpers for readers of on-disk datasets: locating the root and the listed files."""

from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence

from pipelines.errors import DatasetLayoutError
from pipelines.records import Record, SkippedFile


def find_root(
    root: Optional[str], marker: str, subfolders: Sequence[str], dataset: str, layout: str
) -> str:
    """Returns the folder that holds ``marker`` (a relative file path).

    ``root`` may be that folder itself or a folder containing one of ``subfolders`` (how the
    archive unpacks, e.g. ``CUB_200_2011/``), so users can point at either level.
    """
    if root is None:
        raise DatasetLayoutError(
            dataset, "no root given; pass root=<folder holding the unpacked archive>.", layout
        )
    root = os.path.expanduser(os.fspath(root))
    if not os.path.isdir(root):
        raise DatasetLayoutError(dataset, f"root {root!r} is not a directory.", layout)
    for candidate in [root] + [os.path.join(root, sub) for sub in subfolders]:
        if os.path.isfile(os.path.join(candidate, marker)):
            return candidate
    tried = ", ".join(repr(os.path.join(c, marker)) for c in [root] + list(subfolders))
    raise DatasetLayoutError(
        dataset, f"index file {marker!r} not found under {root!r} (looked for {tried}).", layout
    )


def require_file(folder: str, relative: str, dataset: str, layout: str) -> str:
    """Returns ``folder/relative`` or raises naming the missing index file."""
    path = os.path.join(folder, relative)
    if not os.path.isfile(path):
        raise DatasetLayoutError(dataset, f"index file {path!r} is missing.", layout)
    return path


def read_rows(path: str, dataset: str, layout: str, columns: int, skip: int = 0) -> list:
    """Whitespace-separated rows with at least ``columns`` fields; blank lines are ignored.

    Raises naming the file and line when a row is short, which is how a wrong file shows up.
    """
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if number <= skip or not line.strip():
                continue
            fields = line.split()
            if len(fields) < columns:
                raise DatasetLayoutError(
                    dataset,
                    f"{path!r} line {number} has {len(fields)} fields, expected {columns}: "
                    f"{line.strip()!r}",
                    layout,
                )
            rows.append(fields)
    if not rows:
        raise DatasetLayoutError(dataset, f"index file {path!r} lists no rows.", layout)
    return rows


def keep_existing(records: Iterable[Record], skipped: list) -> list:
    """Records whose file exists; the others are appended to ``skipped`` with the reason."""
    kept = []
    for record in records:
        if os.path.isfile(record.source):
            kept.append(record)
        else:
            skipped.append(SkippedFile(str(record.source), "listed in the index but missing on disk"))
    return kept
