"""Durable, atomic file writes: write next to the target, fsync, ``os.replace``, fsync the folder.

``os.replace`` is atomic on POSIX within one file system, so a reader (or a run restarted after
``kill -9``) sees either the old complete file or the new complete file, never a torn one. The
fsyncs make the same hold after a power cut: the data reaches the disk before the rename, and
the rename (a change of the directory) reaches it before the writer goes on.

Temporary names are ``.tmp-<pid>-<name>``; :func:`remove_stale_temporaries` deletes only names
of that pattern whose writer process is gone (a save killed half way), nothing else.

The one atomic-write home of the package (training callbacks, evaluation and explain reports,
the index publisher, TF Serving configs, the main job). It imports neither Keras nor TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Callable, List, Optional, Sequence

TEMPORARY_PREFIX = ".tmp-"
_TEMPORARY = re.compile(r"^\.tmp-(\d+)-.+")


def _temporary_path(path: str, suffix: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    # Keras picks the format from the suffix, so the temporary name must keep it.
    return os.path.join(directory, f"{TEMPORARY_PREFIX}{os.getpid()}-"
                        f"{name[: -len(suffix)] if suffix else name}{suffix}")


def fsync_directory(path: str) -> None:
    """Flushes a directory's entries (renames, creations, removals in it) to disk."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(path: str) -> None:
    """Flushes a file, or every file and folder under a directory, to disk (symlinks skipped).

    Args:
        path: a regular file or a directory (e.g. a SavedModel or an index version).
    """
    if os.path.islink(path):
        return
    if os.path.isdir(path):
        for root, _dirs, files in os.walk(path):
            for name in files:
                full = os.path.join(root, name)
                if not os.path.islink(full):
                    fsync_tree(full)
            fsync_directory(root)
        return
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_atomically(path: str, write: Callable[[str], Any], suffix: str = "") -> None:
    """Calls ``write(temporary_path)``, fsyncs it and moves it to ``path`` atomically.

    Args:
        path: final file path.
        write: function that writes the complete file at the path it is given.
        suffix: ending the temporary path must keep (e.g. ".weights.h5" or ".keras", which
            Keras uses to choose the format); must be a suffix of ``path``.

    Example:
        >>> write_atomically("/tmp/x.txt", lambda tmp: open(tmp, "w").write("hi"))  # doctest: +SKIP
    """
    if suffix and not path.endswith(suffix):
        raise ValueError(f"{path!r} must end with {suffix!r}.")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = _temporary_path(path, suffix)
    try:
        write(temporary)
        fsync_tree(temporary)
        os.replace(temporary, path)
        fsync_directory(directory)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json_atomically(path: str, payload: Any) -> None:
    """Writes ``payload`` as indented JSON to ``path`` atomically and durably."""

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, default=_json_default)
            handle.write("\n")

    write_atomically(path, write)


def write_text_atomically(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically and durably."""

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)

    write_atomically(path, write)


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs (this process, or another user's, counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(directory: str) -> List[str]:
    """Removes ``.tmp-<pid>-*`` files that a killed save of ours left in ``directory``.

    Only names of exactly that pattern whose process no longer runs are removed (a live
    writer's file is left alone); other files and sub-directories are never touched.

    Returns:
        The removed paths.
    """
    removed = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if not match or not entry.is_file(follow_symlinks=False):
            continue
        if pid_alive(int(match.group(1))):
            continue
        os.remove(entry.path)
        removed.append(entry.path)
    if removed:
        fsync_directory(directory)
    return removed


def set_aside(directory: str, names: Sequence[str], reason: str = "set-aside") -> Optional[str]:
    """Moves the entries ``names`` of ``directory`` into ``directory/set_aside/<time>/``.

    Nothing is deleted: each existing entry is renamed (atomic, same file system) into a new
    timestamped folder. Entries that do not exist are ignored.

    Args:
        directory: the folder holding the entries (e.g. a run directory).
        names: entry names (files or folders) directly inside ``directory``.
        reason: a word put in the folder name (``<time>-<reason>``).

    Returns:
        The folder they were moved to, or None when none of them existed.

    Example:
        >>> set_aside("runs/fm", ["checkpoints", "best.keras"], "noresume")  # doctest: +SKIP
        'runs/fm/set_aside/20261201-093000-noresume'
    """
    present = [n for n in names if os.path.lexists(os.path.join(directory, n))]
    if not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = os.path.join(directory, "set_aside", f"{stamp}-{reason}")
    counter = 1
    while os.path.lexists(target):
        counter += 1
        target = os.path.join(directory, "set_aside", f"{stamp}-{reason}-{counter}")
    os.makedirs(target)
    for name in present:
        os.rename(os.path.join(directory, name), os.path.join(target, name))
    fsync_directory(target)
    fsync_directory(directory)
    return target


def _json_default(value: Any) -> Any:
    # NumPy scalars and arrays appear in metric dicts; JSON has no type for them.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class RefusedError(ValueError):
    """A removal was refused because the directory is not provably ours; nothing was removed."""


def create_marked_directory(path: str, marker: str, note: str) -> bool:
    """Creates ``path`` with a ``marker`` file saying who created it (for a later removal).

    An existing directory is left as it is and not marked (it was not created here).

    Returns:
        True when the directory was created (and marked) now.
    """
    if os.path.lexists(path):
        return False
    os.makedirs(path)
    write_text_atomically(os.path.join(path, marker), note.rstrip("\n") + "\n")
    return True


def remove_marked_directory(path: str, marker: str) -> bool:
    """Removes ``path`` only if :func:`create_marked_directory` created it (it holds ``marker``).

    Refused (``RefusedError``, nothing removed): a symbolic link, a non-directory, a directory
    without the marker file (or with a symlink in its place), and any directory that is or holds
    the working, home or root directory. Inside, symbolic links are unlinked, never followed
    (``shutil.rmtree``'s file-descriptor walk), so nothing outside ``path`` is touched.

    Returns:
        True if it was removed, False if it did not exist.
    """
    import shutil

    if not os.path.lexists(path):
        return False
    real = os.path.realpath(path)
    protected = {os.path.realpath(p) for p in (os.getcwd(), os.path.expanduser("~"), os.sep)}
    marker_path = os.path.join(path, marker)
    why = None
    if os.path.islink(path):
        why = "it is a symbolic link"
    elif not os.path.isdir(path):
        why = "it is not a directory"
    elif any(p == real or p.startswith(real.rstrip(os.sep) + os.sep) for p in protected):
        why = "it is (or holds) the working, home or root directory"
    elif os.path.islink(marker_path) or not os.path.isfile(marker_path):
        why = f"it has no {marker} marker file, so this job did not create it"
    elif not shutil.rmtree.avoids_symlink_attacks:
        why = "this platform's rmtree could follow symbolic links out of it"
    if why:
        raise RefusedError(f"refusing to remove {path}: {why}. Nothing was removed.")
    shutil.rmtree(path)
    return True
