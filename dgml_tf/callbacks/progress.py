"""A one-line-per-epoch progress report of the whole run (Keras' bar covers the steps)."""

from __future__ import annotations

import time
from typing import Callable, Optional

import keras


# Learning rates are logged per parameter group, and one group is called "loss" (the margin
# loss' betas): "learning_rate_loss" / "lr_loss" end in "loss" but are rates.
_RATE_PREFIXES = ("learning_rate", "lr_")


def _is_loss(key: str) -> bool:
    return key.endswith("loss") and not key.startswith(_RATE_PREFIXES)


class RunProgress(keras.callbacks.Callback):
    """Prints ``epoch e/E, losses, elapsed, ETA of the run`` after each epoch.

    Keras' progress bar counts steps within one ``fit`` call; this reports the run as a whole,
    including after a resume (``initial_epoch``), from the mean duration of finished epochs.

    Args:
        total_epochs: epochs of the full run.
        log: where lines go (``print`` by default).
    """

    def __init__(self, total_epochs: int, log: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.total_epochs = total_epochs
        self.log = log
        self.clock = clock
        self._durations = []
        self._start: Optional[float] = None

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._start = self.clock()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self._start is not None:
            self._durations.append(self.clock() - self._start)
        mean = sum(self._durations) / max(1, len(self._durations))
        remaining = mean * max(0, self.total_epochs - epoch - 1)
        shown = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted((logs or {}).items())
                          if _is_loss(k))
        self.log(f"epoch {epoch + 1}/{self.total_epochs}: {shown}; "
                 f"{mean:.1f} s/epoch, ETA {remaining / 60:.1f} min")


class RunProgbar(keras.callbacks.ProgbarLogger):
    """Keras' step progress bar, headed ``Epoch e/E`` with E the run's total epochs.

    The train CLI calls ``fit`` once per epoch (each epoch's stream is re-seeded), so Keras' own
    bar would read ``Epoch e/e``; passing this one replaces it.
    """

    def __init__(self, total_epochs: int):
        super().__init__()
        self.total_epochs = total_epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total_epochs
