"""Glyphs dataset: the on-disk cache of a rendered set.

The set is cached as an ``.npz`` named by a SHA-256 of the render options and of every font
file (path and content checksum), so a changed font, option or renderer is a new entry. The
file holds the arrays, the skipped glyphs and the provenance. A truncated or unreadable entry
is treated as absent (re-rendered and overwritten); writes are atomic (temporary name, fsync,
``os.replace``), so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from pipelines.records import SkippedFile

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "dgml_tf", "glyphs")


def cache_key(options: dict, paths: Sequence[str], checksums: Sequence[str]) -> str:
    """SHA-256 (hex) of the render options and every font's (path, content SHA-256)."""
    return hashlib.sha256(json.dumps(
        [options, list(zip(paths, checksums, strict=True))], sort_keys=True).encode()).hexdigest()


def cache_path(key: str, cache_dir: Optional[str], root: Optional[str]) -> str:
    """Where the set of ``key`` is cached: ``cache_dir``, else ``<root>/glyphs_cache``, else
    :data:`DEFAULT_CACHE_DIR`."""
    cache_dir = cache_dir or (os.path.join(root, "glyphs_cache") if root else DEFAULT_CACHE_DIR)
    return os.path.join(cache_dir, f"glyphs-{key[:20]}.npz")


def read_cache(path: str) -> Optional[Dict[str, object]]:
    """The cached set at ``path`` (codepoints, images, labels, families, styles, provenance,
    skipped), or None when it is absent or unreadable."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            loaded = {name: data[name] for name in data.files}
        skipped = [SkippedFile(p, r) for p, r in zip(loaded["skipped_paths"],
                                                     loaded["skipped_reasons"], strict=True)]
    except (OSError, ValueError, EOFError):
        return None  # a truncated cache is re-rendered and overwritten
    return dict(codepoints=loaded["codepoints"], images=loaded["images"],
                labels=loaded["labels"], families=loaded["families"], styles=loaded["styles"],
                provenance=json.loads(str(loaded["provenance"])), skipped=skipped)


def write_cache(path: str, codepoints: np.ndarray, images: np.ndarray, labels: np.ndarray,
                families: np.ndarray, styles: np.ndarray, provenance: dict,
                skipped: List[SkippedFile]) -> None:
    """Writes a rendered set to ``path`` atomically and durably (creating its folder)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, codepoints=codepoints, images=images, labels=labels,
        families=families, styles=styles, provenance=np.asarray(json.dumps(provenance)),
        skipped_paths=np.asarray([s.path for s in skipped], dtype=str),
        skipped_reasons=np.asarray([s.reason for s in skipped], dtype=str))
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)  # atomic: readers never see half a file
