"""Atomic file writes: write next to the target, then ``os.replace`` it into place.

``os.replace`` is atomic on POSIX within one file system, so a reader (or a run restarted after
``kill -9``) sees either the old complete file or the new complete file, never a torn one.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable


def _temporary_path(path: str, suffix: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    # Keras picks the format from the suffix, so the temporary name must keep it.
    return os.path.join(directory, f".tmp-{os.getpid()}-{name[: -len(suffix)] if suffix else name}"
                        f"{suffix}")


def write_atomically(path: str, write: Callable[[str], Any], suffix: str = "") -> None:
    """Calls ``write(temporary_path)`` and moves the result to ``path`` atomically.

    Args:
        path: final file path.
        write: function that writes the complete file at the path it is given.
        suffix: ending the temporary path must keep (e.g. ".weights.h5" or ".keras", which
            Keras uses to choose the format); must be a suffix of ``path``.
    """
    if suffix and not path.endswith(suffix):
        raise ValueError(f"{path!r} must end with {suffix!r}.")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = _temporary_path(path, suffix)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json_atomically(path: str, payload: Any) -> None:
    """Writes ``payload`` as indented JSON to ``path`` atomically (fsync'ed before the move)."""

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, default=_json_default)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())

    write_atomically(path, write)


def write_text_atomically(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)

    write_atomically(path, write)


def _json_default(value: Any) -> Any:
    # NumPy scalars and arrays appear in metric dicts; JSON has no type for them.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
