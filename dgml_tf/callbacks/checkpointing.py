"""Resumable per-epoch checkpoints of the whole training state, written atomically.

Layout in ``<output_dir>/checkpoints``::

    epoch-0007.weights.h5   model + optimizer variables after epoch 7 (Keras ``save_weights``)
    latest.json             {"epoch": 7, "weights": "epoch-0007.weights.h5", "best": {...}, ...}

The weights file is written first (under a temporary name, then moved into place), and only then
``latest.json`` is replaced to point at it. A run killed at any instant therefore finds a pointer
to a complete checkpoint of the last finished epoch; training restarts at the following epoch.
Older weight files are removed after the pointer moves on.

Example:
    >>> checkpoint = EpochCheckpoint("runs/cub/checkpoints", nan_guard=guard, best_tracker=best)
    >>> state = load_training_state("runs/cub/checkpoints")   # None for a fresh run
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional

import keras
import numpy as np

from dgml_tf.callbacks.atomic import write_atomically, write_json_atomically

POINTER = "latest.json"
WEIGHTS_SUFFIX = ".weights.h5"


@dataclasses.dataclass
class TrainingState:
    """What a restarted run needs besides the variables.

    Attributes:
        epoch: number of completed epochs (training continues at this 0-based epoch).
        weights_path: absolute path of the weights file of that epoch.
        best: the best-checkpoint tracker's state (metric, value, epoch).
        history: per-epoch logs so far.
    """

    epoch: int
    weights_path: str
    best: Dict[str, Any]
    history: List[Dict[str, float]]


def load_training_state(directory: str) -> Optional[TrainingState]:
    """The last complete checkpoint in ``directory``, or None if there is none."""
    pointer = os.path.join(directory, POINTER)
    if not os.path.isfile(pointer):
        return None
    with open(pointer, encoding="utf-8") as handle:
        payload = json.load(handle)
    weights_path = os.path.join(directory, payload["weights"])
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(
            f"{pointer} points at {weights_path}, which is missing; the run directory was "
            "modified by hand. Restore the file or start over with --noresume.")
    return TrainingState(epoch=int(payload["epoch"]), weights_path=weights_path,
                         best=payload.get("best", {}), history=payload.get("history", []))


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

    def __init__(self, directory: str, nan_guard=None, best_tracker=None, keep: int = 1,
                 history: Optional[List[Dict[str, float]]] = None):
        super().__init__()
        if keep < 1:
            raise ValueError(f"keep={keep} must be >= 1 (the latest checkpoint is needed).")
        self.directory = directory
        self.nan_guard = nan_guard
        self.best_tracker = best_tracker
        self.keep = keep
        self.history: List[Dict[str, float]] = list(history or [])
        self.skipped_epochs: List[int] = []

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
        name = f"epoch-{completed_epochs:04d}{WEIGHTS_SUFFIX}"
        path = os.path.join(self.directory, name)
        write_atomically(path, lambda tmp: self.model.save_weights(tmp), WEIGHTS_SUFFIX)
        payload = {"epoch": completed_epochs, "weights": name, "history": self.history,
                   "best": self.best_tracker.state() if self.best_tracker is not None else {}}
        write_json_atomically(os.path.join(self.directory, POINTER), payload)
        self._remove_old(keep_name=name)
        return path

    def _remove_old(self, keep_name: str) -> None:
        names = sorted(n for n in os.listdir(self.directory)
                       if n.startswith("epoch-") and n.endswith(WEIGHTS_SUFFIX))
        stale = [n for n in names if n != keep_name][: max(0, len(names) - self.keep)]
        for name in stale:
            os.remove(os.path.join(self.directory, name))
