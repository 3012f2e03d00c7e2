"""A pause at a chosen training step, so tests can kill the process at a point it reports.

Enabled only through the ``DGML_TEST_PAUSE_AT_STEP`` environment variable (tests set it; it is
not a user option): ``"<step>:<marker path>"``. After optimizer step ``<step>`` the callback
writes the marker file and then waits until ``<marker path>.release`` exists. A test that
SIGKILLs the process once the marker appears therefore always kills it at exactly that step,
however fast or slow the machine is.
"""

from __future__ import annotations

import os
import time
from typing import Optional

import keras

from dgml_tf.callbacks.atomic import write_text_atomically

ENVIRONMENT_VARIABLE = "DGML_TEST_PAUSE_AT_STEP"


class PauseAtStep(keras.callbacks.Callback):
    """Writes ``marker`` after optimizer step ``step``, then blocks until ``marker.release``.

    Args:
        step: 1-based optimizer step (``optimizer.iterations`` after the step).
        marker: file written (atomically, with the step number) when the pause begins.
    """

    def __init__(self, step: int, marker: str):
        super().__init__()
        if step < 1:
            raise ValueError(f"step={step} must be >= 1.")
        self.step = int(step)
        self.marker = marker

    def on_train_batch_end(self, batch, logs=None) -> None:
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) != self.step:
            return
        write_text_atomically(self.marker, f"{self.step}\n")
        release = self.marker + ".release"
        while not os.path.exists(release):
            time.sleep(0.05)  # waiting for the test to kill us (or release us)


def pause_from_environment(environ=os.environ) -> Optional[PauseAtStep]:
    """The pause ``DGML_TEST_PAUSE_AT_STEP`` asks for, or None when it is unset."""
    value = environ.get(ENVIRONMENT_VARIABLE)
    if not value:
        return None
    step, _, marker = value.partition(":")
    if not step.isdigit() or not marker:
        raise ValueError(f"{ENVIRONMENT_VARIABLE}={value!r} must be '<step>:<marker path>'.")
    return PauseAtStep(int(step), marker)
