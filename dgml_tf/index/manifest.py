"""``manifest.json`` of an index version: what was indexed, by which model, and how.

Keys (``FORMAT_VERSION`` 1): ``format_version``, ``num_items``, ``embedding_dim``,
``num_groups``, ``group_dim``, ``model_fingerprint`` (SavedModel fingerprint of the embedder
version that produced the embeddings), ``model_dir``, ``backend`` ("scann" or "exact"),
``scann_params`` (None for exact), ``similarity`` ("cosine": full embeddings and group slices are
L2-normalised), ``recall_at_10`` (``{"value", "num_queries", "k", "queries": "held_out", "gallery_items"}``:
ScaNN vs exact with queries held out of the searched gallery, see
:func:`dgml_tf.index.retrieval_index.held_out_recall`; None for exact), ``expose_paths``
(clients may see ``paths``; absent in older indexes, read as False), ``images`` (the version
stores each item's encoded image, :mod:`dgml_tf.index.image_store`; absent: False), ``build_seconds``,
``built_at``, ``files``, ``extra``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
EMBEDDINGS_FILE = "embeddings.npy"
LABELS_FILE = "labels.npy"
IDS_FILE = "ids.json"
PATHS_FILE = "paths.json"
SCANN_DIR = "scann"

REQUIRED_KEYS = ("format_version", "num_items", "embedding_dim", "num_groups", "group_dim",
                 "model_fingerprint", "backend")


class IndexFormatError(ValueError):
    """An index directory is missing files or has an unreadable manifest."""


class IndexModelMismatchError(ValueError):
    """The index was built with embeddings of a different model version than expected."""


def write_manifest(version_dir: "str | os.PathLike", manifest: Dict[str, Any]) -> str:
    path = os.path.join(os.fspath(version_dir), MANIFEST_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return path


def read_manifest(version_dir: "str | os.PathLike") -> Dict[str, Any]:
    """Reads and checks ``manifest.json`` of one index version."""
    path = os.path.join(os.fspath(version_dir), MANIFEST_FILE)
    if not os.path.isfile(path):
        raise IndexFormatError(
            f"{path} not found: {os.fspath(version_dir)!r} is not a dgml_tf index version. "
            "Build one with `python -m dgml_tf.index`."
        )
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise IndexFormatError(f"{path} lacks {missing}; rebuild the index.")
    if manifest["format_version"] != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} has format_version {manifest['format_version']}, this code reads "
            f"{FORMAT_VERSION}; rebuild the index with this version of dgml_tf."
        )
    return manifest
