"""Resolution of ``--flagfile`` arguments to the flagfiles bundled in ``dgml_tf/configs``.

absl opens a flagfile path relative to the working directory, so ``--flagfile=cub.flags`` would
only work from inside ``dgml_tf/configs``. :func:`resolve_flagfile_args` rewrites ``argv`` before
absl parses it: a path that exists (relative to the working directory) is kept, so a local file
of that name wins; otherwise its base name is looked up among the bundled flagfiles ("cub",
"cub.flags" and "configs/cub.flags" all find ``dgml_tf/configs/cub.flags``); an unknown name is
an error that lists the bundled ones.

Example:
    >>> argv = resolve_flagfile_args(["train", "--flagfile=cub.flags", "--epochs=1"])
    >>> argv[1].endswith("dgml_tf/configs/cub.flags"), argv[2]
    (True, '--epochs=1')
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
SUFFIX = ".flags"


class UnknownFlagfileError(FileNotFoundError):
    """A --flagfile that is neither an existing path nor a bundled flagfile name."""


def bundled_flagfiles() -> List[str]:
    """Names (without ``.flags``) of the flagfiles shipped in ``dgml_tf/configs``, sorted."""
    if not os.path.isdir(CONFIG_DIR):
        return []
    return sorted(f[: -len(SUFFIX)] for f in os.listdir(CONFIG_DIR) if f.endswith(SUFFIX))


def bundled_path(name: str) -> str:
    """Absolute path of bundled flagfile ``name`` ("cub" or "cub.flags")."""
    base = os.path.basename(name)
    if not base.endswith(SUFFIX):
        base += SUFFIX
    path = os.path.join(CONFIG_DIR, base)
    if not os.path.isfile(path):
        raise UnknownFlagfileError(
            f"Flagfile {name!r} is neither a file (relative to {os.getcwd()}) nor a bundled "
            f"flagfile. Bundled: {', '.join(bundled_flagfiles()) or '(none)'}; pass one of these "
            "names (e.g. --flagfile=cub.flags) or a path to your own file.")
    return path


def resolve_flagfile(value: str, cwd: Optional[str] = None) -> str:
    """The file a ``--flagfile`` value refers to: an existing path first, then a bundled name."""
    cwd = cwd or os.getcwd()
    candidate = os.path.expanduser(value)
    local = candidate if os.path.isabs(candidate) else os.path.join(cwd, candidate)
    if os.path.isfile(local):
        return local
    return bundled_path(candidate)


def resolve_flagfile_args(argv: Sequence[str], cwd: Optional[str] = None) -> List[str]:
    """``argv`` with every ``--flagfile`` value replaced by the absolute file it resolves to.

    Both ``--flagfile=X`` and ``--flagfile X`` spellings are handled; order is preserved, so
    flags after the flagfile still override it (absl's left-to-right semantics).

    Raises:
        UnknownFlagfileError: a value is neither an existing file nor a bundled name.
    """
    argv = list(argv)
    out: List[str] = argv[:1]
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out.extend(argv[i:])
            break
        for prefix in ("--flagfile=", "-flagfile="):
            if arg.startswith(prefix):
                out.append(prefix + resolve_flagfile(arg[len(prefix):], cwd))
                break
        else:
            if arg in ("--flagfile", "-flagfile") and i + 1 < len(argv):
                out.extend([arg, resolve_flagfile(argv[i + 1], cwd)])
                i += 1
            else:
                out.append(arg)
        i += 1
    return out
