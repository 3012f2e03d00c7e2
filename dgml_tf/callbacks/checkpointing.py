"""Resumable per-epoch checkpoints of the whole training state, durable and atomic.

Layout in ``<output_dir>/checkpoints``::

    epoch-0006.weights.h5   model + optimizer variables after epoch 6 (the one before, kept)
    epoch-0006.json         its state: {"epoch": 6, "weights": ..., "sha256": ..., "best": ...}
    epoch-0007.weights.h5   after epoch 7
    epoch-0007.json
    latest.json             the newest state (same content as epoch-0007.json)

A save writes the weights file (temporary name, fsync, rename, fsync of the folder), then its
state file, then ``latest.json``, each the same way. A run killed at any instant (or a power cut)
therefore finds complete checkpoints of the last finished epochs; training restarts after the
newest readable one. The state records the weights' SHA-256: when the newest weights file is
damaged (truncated, overwritten), :func:`load_training_state` says so and falls back to the
previous checkpoint. The last ``keep`` (default 2) checkpoints are kept; older ones are removed
after the pointer moved on. Temporary files of a save killed half way are removed on start.

Example:
    >>> checkpoint = EpochCheckpoint("runs/cub/checkpoints", nan_guard=guard, best_tracker=best)
    >>> state = load_training_state("runs/cub/checkpoints")   # None for a fresh run
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Callable, Dict, List, Optional

import keras
import numpy as np

from dgml_tf.callbacks.atomic import (remove_stale_temporaries, write_atomically,
                                      write_json_atomically)

POINTER = "latest.json"
WEIGHTS_SUFFIX = ".weights.h5"
STATE_SUFFIX = ".json"
KEEP_CHECKPOINTS = 2
_EPOCH_FILE = re.compile(r"^epoch-(\d{4,})(\.weights\.h5|\.json)$")


class CheckpointError(RuntimeError):
    """No checkpoint in the directory can be read; the message names each file and the fix."""


@dataclasses.dataclass
class TrainingState:
    """What a restarted run needs besides the variables.

    Attributes:
        epoch: number of completed epochs (training continues at this 0-based epoch).
        weights_path: absolute path of the weights file of that epoch.
        best: the best-checkpoint tracker's state (metric, value, epoch).
        history: per-epoch logs so far.
        skipped: "<file>: <why>" for each newer checkpoint that could not be used.
    """

    epoch: int
    weights_path: str
    best: Dict[str, Any]
    history: List[Dict[str, float]]
    skipped: List[str] = dataclasses.field(default_factory=list)


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) and "epoch" in payload and "weights" in payload \
        else None


def _weights_problem(directory: str, payload: dict) -> Optional[str]:
    """Why the weights ``payload`` names cannot be used (None when they can)."""
    path = os.path.join(directory, str(payload["weights"]))
    if os.path.basename(path) != payload["weights"] or not os.path.isfile(path):
        return "the weights file is missing"
    expected = payload.get("sha256")
    if expected is None:  # written before checksums existed: open it at least
        try:
            import h5py

            with h5py.File(path, "r"):
                return None
        except Exception as error:  # noqa: BLE001 (any h5 failure means unreadable)
            return f"unreadable ({type(error).__name__})"
    if file_sha256(path) != expected:
        return ("its content does not match the checksum recorded when it was saved "
                "(truncated or overwritten)")
    return None


def load_training_state(directory: str,
                        report: Optional[Callable[[str], None]] = None) -> Optional[TrainingState]:
    """The newest complete, intact checkpoint in ``directory``, or None if there is none.

    Candidates are ``latest.json`` and every ``epoch-NNNN.json``, newest epoch first; the first
    whose weights file exists and matches its recorded SHA-256 wins. Each newer one passed over
    is reported (``report``, default ``print``) and listed in ``TrainingState.skipped``.

    Raises:
        CheckpointError: checkpoints exist but none of them is usable.
    """
    report = report or print
    candidates = []
    pointer = _read_json(os.path.join(directory, POINTER))
    if pointer is not None:
        candidates.append((int(pointer["epoch"]), POINTER, pointer))
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        names = []
    for name in names:
        match = _EPOCH_FILE.match(name)
        if match and match.group(2) == STATE_SUFFIX:
            payload = _read_json(os.path.join(directory, name))
            if payload is not None:
                candidates.append((int(payload["epoch"]), name, payload))
            else:
                candidates.append((int(match.group(1)), name, None))
    if not candidates and not os.path.exists(os.path.join(directory, POINTER)):
        return None
    # Newest epoch first; for one epoch, its own state file before the pointer.
    candidates.sort(key=lambda c: (c[0], c[1] != POINTER), reverse=True)
    skipped: List[str] = []
    tried = set()
    for epoch, name, payload in candidates:
        if payload is None:
            skipped.append(f"{name}: unreadable state file")
            continue
        key = (epoch, payload["weights"])
        if key in tried:
            continue
        tried.add(key)
        problem = _weights_problem(directory, payload)
        if problem:
            skipped.append(f"{payload['weights']} (epoch {epoch}): {problem}")
            continue
        state = TrainingState(epoch=epoch, weights_path=os.path.join(directory, payload["weights"]),
                              best=payload.get("best", {}), history=payload.get("history", []),
                              skipped=skipped)
        if skipped:
            report("Newer checkpoint(s) cannot be used: " + "; ".join(skipped)
                   + f". Falling back to the previous checkpoint {state.weights_path} "
                   f"({epoch} epochs done).")
        return state
    if os.path.exists(os.path.join(directory, POINTER)) and pointer is None:
        skipped.insert(0, f"{POINTER}: unreadable")
    raise CheckpointError(
        f"No usable checkpoint in {directory}: " + "; ".join(skipped) + ". Restore the files "
        "from a backup, or start over with --noresume (the damaged checkpoints are set aside, "
        "not deleted).")


def restore_variables(model: keras.Model, state: TrainingState) -> None:
    """Loads model and optimizer variables of ``state`` into a built, compiled ``model``."""
    if model.optimizer is not None and not model.optimizer.built:
        # save_weights stored the optimizer slots; they must exist to be loaded into.
        model.optimizer.build(model.trainable_variables)
    model.load_weights(state.weights_path)


def all_finite(model: keras.Model) -> bool:
    """True if every model and optimizer variable is finite (no NaN/Inf)."""
    variables = list(model.variables)
    if model.optimizer is not None:
        variables += list(model.optimizer.variables)
    for variable in variables:
        value = keras.ops.convert_to_numpy(variable)
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            return False
    return True


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the full training state at the end of every epoch, atomically.

    Nothing is written once the loss went non-finite (``nan_guard.tripped``) or if any variable
    is not finite, so the last good checkpoint survives a divergence.

    Args:
        directory: checkpoint directory (created if missing).
        nan_guard: optional :class:`~dgml_tf.callbacks.nan_guard.NonFiniteLossGuard`.
        best_tracker: optional object with ``state()`` (a JSON-able dict) stored alongside.
        keep: how many epoch weight files to keep (>= 1).

    Example:
        >>> model.fit(data, epochs=3, callbacks=[EpochCheckpoint("out/checkpoints")])
    """

    def __init__(self, directory: str, nan_guard=None, best_tracker=None,
                 keep: int = KEEP_CHECKPOINTS, history: Optional[List[Dict[str, float]]] = None):
        super().__init__()
        if keep < 1:
            raise ValueError(f"keep={keep} must be >= 1 (the latest checkpoint is needed).")
        self.directory = directory
        self.nan_guard = nan_guard
        self.best_tracker = best_tracker
        self.keep = keep
        self.history: List[Dict[str, float]] = list(history or [])
        self.skipped_epochs: List[int] = []
        # Saves killed half way (kill -9, power cut) leave .tmp-<pid>-* files; never ours now.
        remove_stale_temporaries(directory)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if (self.nan_guard is not None and self.nan_guard.tripped) or not all_finite(self.model):
            self.skipped_epochs.append(epoch)
            return
        self.history.append({k: float(v) for k, v in (logs or {}).items()
                             if np.isscalar(v) or np.ndim(v) == 0})
        self.save(epoch + 1)

    def save(self, completed_epochs: int) -> str:
        """Writes the checkpoint of ``completed_epochs`` finished epochs; returns its path."""
        os.makedirs(self.directory, exist_ok=True)
        stem = f"epoch-{completed_epochs:04d}"
        name = stem + WEIGHTS_SUFFIX
        path = os.path.join(self.directory, name)
        write_atomically(path, lambda tmp: self.model.save_weights(tmp), WEIGHTS_SUFFIX)
        payload = {"epoch": completed_epochs, "weights": name, "sha256": file_sha256(path),
                   "history": self.history,
                   "best": self.best_tracker.state() if self.best_tracker is not None else {}}
        write_json_atomically(os.path.join(self.directory, stem + STATE_SUFFIX), payload)
        write_json_atomically(os.path.join(self.directory, POINTER), payload)
        self._remove_old(completed_epochs)
        return path

    def _remove_old(self, newest: int) -> None:
        epochs = sorted({int(m.group(1)) for m in map(_EPOCH_FILE.match,
                                                        os.listdir(self.directory)) if m})
        # Only older epochs than the one just saved; the newest `keep` stay.
        older = [e for e in epochs if e < newest]
        for epoch in older[: max(0, len(older) - (self.keep - 1))]:
            for suffix in (STATE_SUFFIX, WEIGHTS_SUFFIX):  # the state first: never a dangling one
                stale = os.path.join(self.directory, f"epoch-{epoch:04d}{suffix}")
                if os.path.exists(stale):
                    os.remove(stale)
