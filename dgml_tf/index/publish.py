"""Atomic publication of index versions: a crash mid-build never breaks the served index.

Layout of an index directory::

    <index_dir>/
      CURRENT                      one line: the name of the live version
      versions/<version>/          manifest.json, embeddings.npy, ... (complete versions only)
      versions/<version>.tmp-<pid> a build in progress (or left by a crash; ignored, cleaned)

A build writes everything into ``versions/<version>.tmp-<pid>``, fsyncs every file and folder
in it, renames it to ``versions/<version>`` (atomic) and fsyncs ``versions/``, then replaces
``CURRENT`` with the durable atomic write of ``dgml_tf/atomic.py`` (fsync, rename,
fsync of the index folder). Readers resolve ``CURRENT`` once and read that complete version;
until the pointer moves they keep getting the previous version, whatever happens to the build,
and after a power cut ``CURRENT`` names a version whose files are on disk. Staging folders and
pointer temporaries of dead builds are removed when the next build starts and after it ends.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import shutil
from typing import Iterator, List, Optional

from dgml_tf.atomic import (fsync_directory, fsync_tree, pid_alive, remove_stale_temporaries,
                            write_text_atomically)

POINTER_FILE = "CURRENT"
VERSIONS_DIR = "versions"
STAGING_MARK = ".tmp-"
KEEP_VERSIONS = 2


def _new_version_name() -> str:
    # Sortable by time; the pid keeps two concurrent builders apart.
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{now}-{os.getpid()}"


def complete_versions(index_dir: "str | os.PathLike") -> List[str]:
    """Names of the complete versions, oldest first."""
    versions = pathlib.Path(index_dir) / VERSIONS_DIR
    if not versions.is_dir():
        return []
    return sorted(p.name for p in versions.iterdir() if p.is_dir() and STAGING_MARK not in p.name)


def current_version_dir(index_dir: "str | os.PathLike") -> Optional[pathlib.Path]:
    """The live version directory, or None when nothing has been published yet."""
    index_dir = pathlib.Path(index_dir)
    pointer = index_dir / POINTER_FILE
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    path = index_dir / VERSIONS_DIR / name
    if not name or not path.is_dir():
        raise FileNotFoundError(
            f"{pointer} points at {name!r}, which is not a version under {index_dir / VERSIONS_DIR}."
        )
    return path


def _replace_pointer(index_dir: pathlib.Path, name: str) -> None:
    write_text_atomically(str(index_dir / POINTER_FILE), name + "\n")


def _remove_dead_staging(index_dir: pathlib.Path, own: bool = True) -> None:
    """Staging dirs of builds whose process is gone (killed mid-build), and pointer temps;
    with ``own``, also this process's (its build has finished)."""
    versions_dir = index_dir / VERSIONS_DIR
    remove_stale_temporaries(str(index_dir))
    # Pointer temporaries of the earlier layout, CURRENT.tmp-<pid>.
    for path in index_dir.glob(f"{POINTER_FILE}{STAGING_MARK}*"):
        pid = path.name.rsplit(STAGING_MARK, 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)) and path.is_file():
            path.unlink()
    for path in versions_dir.iterdir():
        # Staging dirs of dead builds; a concurrent build's dir belongs to a live pid.
        if STAGING_MARK in path.name:
            pid = path.name.rsplit(STAGING_MARK, 1)[-1]
            mine = pid.isdigit() and int(pid) == os.getpid()
            if pid.isdigit() and ((not mine and pid_alive(int(pid))) or (mine and not own)):
                continue
            shutil.rmtree(path, ignore_errors=True)


def _clean(index_dir: pathlib.Path, keep: int) -> None:
    versions_dir = index_dir / VERSIONS_DIR
    live = current_version_dir(index_dir)
    _remove_dead_staging(index_dir)
    for name in complete_versions(index_dir)[:-keep]:
        if live is None or name != live.name:
            shutil.rmtree(versions_dir / name, ignore_errors=True)


@contextlib.contextmanager
def staged_index_version(index_dir: "str | os.PathLike", keep: int = KEEP_VERSIONS) -> Iterator[pathlib.Path]:
    """Yields a staging directory; on normal exit publishes it as the live version.

    On an exception (a crash) the staging directory is removed and ``CURRENT`` is untouched.
    The ``keep`` newest complete versions are kept (the live one always).

    Example:
        >>> with staged_index_version("indexes/cub") as staging:  # doctest: +SKIP
        ...     write_files(staging)
    """
    index_dir = pathlib.Path(index_dir)
    (index_dir / VERSIONS_DIR).mkdir(parents=True, exist_ok=True)
    _remove_dead_staging(index_dir, own=False)  # another thread of ours may be building
    name = _new_version_name()
    staging = index_dir / VERSIONS_DIR / f"{name}{STAGING_MARK}{os.getpid()}"
    staging.mkdir()
    try:
        yield staging
        fsync_tree(str(staging))  # the version's files are on disk before it becomes visible
        os.rename(staging, index_dir / VERSIONS_DIR / name)
        fsync_directory(str(index_dir / VERSIONS_DIR))
        _replace_pointer(index_dir, name)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    _clean(index_dir, keep)
