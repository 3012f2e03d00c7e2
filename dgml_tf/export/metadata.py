"""``assets/dgml_export.json``: what a client needs to know about an exported version.

Written inside the version directory (next to the SavedModel's own ``assets``); TF Serving ignores
it. It records the preprocessing sizes, the dimensions, the output names, the model's source and
its fingerprint.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict

from dgml_tf.export.output_names import METADATA_FILE

METADATA_FORMAT_VERSION = 1


def metadata_path(version_dir: "str | os.PathLike") -> str:
    return os.path.join(os.fspath(version_dir), "assets", METADATA_FILE)


def write_export_metadata(version_dir: "str | os.PathLike", metadata: Dict[str, Any]) -> str:
    """Writes ``metadata`` (JSON-serialisable) to ``<version_dir>/assets/dgml_export.json``."""
    path = metadata_path(version_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"format_version": METADATA_FORMAT_VERSION, **metadata}, f, indent=2, sort_keys=True)
    return path


def read_export_metadata(version_dir: "str | os.PathLike") -> Dict[str, Any]:
    """Reads ``dgml_export.json`` of an exported version, with a clear error if it is missing."""
    path = metadata_path(version_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: {os.fspath(version_dir)!r} was not written by "
            "dgml_tf.export.export_for_serving."
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)
