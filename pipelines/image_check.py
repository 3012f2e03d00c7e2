"""A validation pass that decodes each image file once and remembers which ones are unusable.

Corrupt, truncated and non-image files must never stop training, and must be removed *before*
class-balanced sampling so every batch stays exactly P x K. Decoding every file costs one pass;
the verdicts are cached in a small JSON report (keyed by path, size and modification time) so
later runs only decode new or changed files. Problems are logged once per process.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
from typing import Optional, Sequence

import tensorflow as tf

from pipelines.decoding import read_rgb
from pipelines.records import Record, SkippedFile

logger = logging.getLogger(__name__)

REPORT_NAME = "image_check.json"
_REPORT_VERSION = 1
_reported: set = set()


@dataclasses.dataclass
class ImageCheck:
    """Outcome of :func:`check_image_files`.

    Attributes:
        valid: records whose file decodes, in input order.
        skipped: the other files, each with the decoder's reason.
        report_path: the JSON report written (None when no cache_dir was given).
    """

    valid: list
    skipped: list
    report_path: Optional[str] = None


def _fingerprint(path: str) -> Optional[list]:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _decode_error(path: str) -> Optional[str]:
    """None if ``path`` decodes to a non-empty RGB image, else why not."""
    try:
        shape = read_rgb(tf.constant(path)).shape
    except (tf.errors.OpError, OSError) as error:
        message = getattr(error, "message", str(error)).strip().splitlines()
        return message[0] if message else type(error).__name__
    if shape[0] == 0 or shape[1] == 0:
        return f"decoded to an empty image of shape {tuple(shape)}"
    return None


def _load_report(report_path: Optional[str]) -> dict:
    if not report_path or not os.path.isfile(report_path):
        return {}
    try:
        with open(report_path, encoding="utf-8") as handle:
            report = json.load(handle)
    except (OSError, ValueError):
        return {}  # an unreadable cache is recomputed, never trusted
    if report.get("version") != _REPORT_VERSION:
        return {}
    return report.get("files", {})


def _write_report(report_path: str, files: dict) -> None:
    os.makedirs(os.path.dirname(report_path) or ".", exist_ok=True)
    skipped = {path: entry[2] for path, entry in files.items() if entry[2] is not None}
    temporary = report_path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"version": _REPORT_VERSION, "skipped": skipped, "files": files}, handle)
    os.replace(temporary, report_path)  # atomic: a concurrent reader never sees half a file


def check_image_files(
    records: Sequence[Record],
    cache_dir: Optional[str] = None,
    num_threads: Optional[int] = None,
) -> ImageCheck:
    """Decodes every record's file once and splits the records into valid and skipped.

    Args:
        records: on-disk records (``source`` is a file path).
        cache_dir: folder for ``image_check.json``; verdicts of unchanged files are reused from
            it. None checks without caching.
        num_threads: decoding threads (TF ops release the GIL); defaults to the CPU count.

    Returns:
        ImageCheck. Skipped files are logged (warning) once per process.

    Example:
        >>> check = check_image_files(splits.train, cache_dir="outputs/cache")  # doctest: +SKIP
        >>> [s.reason for s in check.skipped]  # doctest: +SKIP
        ['Unknown image file format. One of JPEG, PNG, GIF, BMP, WebP required.']
    """
    report_path = os.path.join(cache_dir, REPORT_NAME) if cache_dir else None
    known = _load_report(report_path)
    paths = sorted({os.path.abspath(str(r.source)) for r in records})
    verdicts, to_check = {}, []
    for path in paths:
        fingerprint = _fingerprint(path)
        entry = known.get(path)
        if fingerprint is None:
            verdicts[path] = [None, None, "missing on disk or unreadable"]
        elif entry is not None and entry[:2] == fingerprint:
            verdicts[path] = entry
        else:
            to_check.append((path, fingerprint))
    if to_check:
        with concurrent.futures.ThreadPoolExecutor(num_threads or os.cpu_count() or 1) as pool:
            errors = pool.map(_decode_error, [path for path, _ in to_check])
            for (path, fingerprint), error in zip(to_check, errors):
                verdicts[path] = fingerprint + [error]
        if report_path:
            known.update(verdicts)
            _write_report(report_path, known)

    valid, skipped = [], []
    for record in records:
        reason = verdicts[os.path.abspath(str(record.source))][2]
        if reason is None:
            valid.append(record)
        else:
            skipped.append(SkippedFile(str(record.source), reason))
    _report_once(skipped, report_path)
    return ImageCheck(valid, skipped, report_path)


def _report_once(skipped: Sequence[SkippedFile], report_path: Optional[str]) -> None:
    new = [s for s in skipped if (s.path, s.reason) not in _reported]
    if not new:
        return
    _reported.update((s.path, s.reason) for s in new)
    lines = "\n".join(f"  {s.path}: {s.reason}" for s in new)
    where = f" (report: {report_path})" if report_path else ""
    logger.warning("Skipping %d unreadable image file(s)%s:\n%s", len(new), where, lines)
