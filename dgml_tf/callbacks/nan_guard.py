"""Stops training at the first non-finite loss and says at which step it happened."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import keras


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss; the message names the step and the last checkpoint."""


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Sets ``model.stop_training`` when a monitored loss is NaN or Inf.

    Unlike ``keras.callbacks.TerminateOnNaN`` it records where it happened (``step``, 1-based
    global optimizer step; ``epoch``; the loss names) so the CLI can report it, and checkpoint
    callbacks consult ``tripped`` so that no weights updated by a non-finite loss are written.

    Args:
        monitor: log keys checked after every batch (missing keys are ignored).
        steps_per_epoch: used to report the global step.

    Example:
        >>> guard = NonFiniteLossGuard()
        >>> model.fit(data, callbacks=[guard, EpochCheckpoint(dir, nan_guard=guard)])
        >>> if guard.tripped: raise guard.error()
    """

    def __init__(self, monitor: Sequence[str] = ("loss", "embedding_loss", "diversity_loss"),
                 steps_per_epoch: Optional[int] = None):
        super().__init__()
        self.monitor = tuple(monitor)
        self.steps_per_epoch = steps_per_epoch
        self.tripped = False
        self.step: Optional[int] = None
        self.epoch: Optional[int] = None
        self.bad: dict = {}
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        logs = logs or {}
        bad = {}
        for key in self.monitor:
            if key in logs:
                value = float(logs[key])
                if not math.isfinite(value):
                    bad[key] = value
        if bad and not self.tripped:
            self.tripped = True
            self.bad = bad
            self.epoch = self._epoch
            if self.steps_per_epoch:
                self.step = self._epoch * self.steps_per_epoch + batch + 1
            else:
                self.step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if self.tripped:
            self.model.stop_training = True

    def error(self, last_checkpoint: Optional[str] = None) -> NonFiniteLossError:
        """The error to raise after training stopped, naming the step and what is kept."""
        values = ", ".join(f"{k}={v}" for k, v in self.bad.items())
        kept = (f"The last good checkpoint is kept at {last_checkpoint}." if last_checkpoint
                else "No checkpoint had been written yet.")
        return NonFiniteLossError(
            f"Non-finite loss at training step {self.step} (epoch {self.epoch + 1}: "
            f"{values}); training stopped and nothing from this epoch was saved. {kept} Lower "
            "the learning rates, check the data, or use --mixed_precision=none, then rerun the "
            "same command to continue from the checkpoint.")
