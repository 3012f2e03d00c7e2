"""Durable, atomic file writes: moved to :mod:`dgml_tf.atomic` (its one home); re-exported here.

``from dgml_tf.callbacks.atomic import write_atomically`` keeps working for the callbacks and
for existing code.
"""

from dgml_tf.atomic import (  # noqa: F401 (re-exported)
    TEMPORARY_PREFIX,
    RefusedError,
    create_marked_directory,
    fsync_directory,
    fsync_tree,
    pid_alive,
    remove_marked_directory,
    remove_stale_temporaries,
    set_aside,
    write_atomically,
    write_json_atomically,
    write_text_atomically,
)

__all__ = [
    "TEMPORARY_PREFIX",
    "RefusedError",
    "create_marked_directory",
    "fsync_directory",
    "fsync_tree",
    "pid_alive",
    "remove_marked_directory",
    "remove_stale_temporaries",
    "set_aside",
    "write_atomically",
    "write_json_atomically",
    "write_text_atomically",
]
