"""TF Serving's model layout ``<base>/<model_name>/<version>/``, written safely.

TF Serving polls ``<base>/<model_name>`` and loads integer-named subdirectories; anything else
(our ``.tmp-*`` staging directories) is ignored. A version is staged next to its final place and
renamed into it: ``rename`` is atomic on one filesystem and fails if the target exists, so a
server never sees a half-written version and an existing version is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
from typing import Iterator, List, Optional

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class VersionExistsError(FileExistsError):
    """The requested model version directory already exists."""


def check_model_name(model_name: str) -> str:
    """Model names become directory names and TF Serving URL parts: keep them plain."""
    if not isinstance(model_name, str) or not _NAME.match(model_name):
        raise ValueError(
            f"Invalid model_name {model_name!r}: use letters, digits, '_', '-' and '.', starting "
            "with a letter or digit (it becomes a directory and a /v1/models/<name> URL part)."
        )
    return model_name


def existing_versions(model_dir: "str | os.PathLike") -> List[int]:
    """Sorted integer versions under ``model_dir`` (staging and other entries ignored)."""
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        return []
    return sorted(
        int(entry) for entry in os.listdir(model_dir)
        if entry.isdigit() and os.path.isdir(os.path.join(model_dir, entry))
    )


def resolve_version(model_dir: "str | os.PathLike", version: Optional[int]) -> int:
    """``version`` checked to be a new positive integer, or (None) the latest version + 1."""
    versions = existing_versions(model_dir)
    if version is None:
        return (versions[-1] + 1) if versions else 1
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        raise ValueError(f"version must be a positive integer or None, got {version!r}.")
    if version in versions:
        raise VersionExistsError(
            f"Version {version} already exists at {os.path.join(os.fspath(model_dir), str(version))}"
            f"; versions are never overwritten. Omit --version to use {versions[-1] + 1}, or "
            "delete that directory yourself if you really mean to replace it."
        )
    return version


@contextlib.contextmanager
def staged_version_dir(model_dir: "str | os.PathLike", version: int) -> Iterator[pathlib.Path]:
    """Yields a staging directory that becomes ``<model_dir>/<version>`` on success.

    On an exception the staging directory is removed and nothing appears under ``version``.
    """
    model_dir = pathlib.Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    final = model_dir / str(version)
    staging = model_dir / f".tmp-{version}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        yield staging
        if final.exists():
            raise VersionExistsError(
                f"Version directory {final} appeared while exporting; not overwriting it."
            )
        os.rename(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
