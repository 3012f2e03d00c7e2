"""Validation during training: evaluate every few epochs, keep the best model as ``best.keras``.

The callback does not know about datasets: an ``evaluate_fn(embedding_model) -> metrics`` is
injected (the train CLI builds it from the validation split), so it works with any data source.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Optional

import keras

from dgml_tf.callbacks.atomic import write_atomically


class BestModelTracker:
    """Remembers the best value of a validation metric (higher is better) and its epoch.

    Example:
        >>> tracker = BestModelTracker("map@r")
        >>> tracker.update(0, 0.2), tracker.update(1, 0.1), tracker.best_epoch
        (True, False, 0)
    """

    def __init__(self, metric: str):
        self.metric = metric
        self.best_value: Optional[float] = None
        self.best_epoch: Optional[int] = None

    def update(self, epoch: int, value: float) -> bool:
        """Records ``value`` of ``epoch`` (0-based); True if it is a new best."""
        if value is None or not math.isfinite(value):
            return False
        if self.best_value is None or value > self.best_value:
            self.best_value, self.best_epoch = float(value), int(epoch)
            return True
        return False

    def state(self) -> Dict[str, Any]:
        return {"metric": self.metric, "value": self.best_value, "epoch": self.best_epoch}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Restores :meth:`state` output (of the same metric; another metric starts fresh)."""
        if state and state.get("metric") == self.metric:
            self.best_value, self.best_epoch = state.get("value"), state.get("epoch")


def save_model_atomically(model: keras.Model, path: str) -> None:
    """``model.save(path)`` through a temporary file, so ``path`` is never half written."""
    write_atomically(path, lambda tmp: model.save(tmp), ".keras")


class ValidationEvaluation(keras.callbacks.Callback):
    """Evaluates every ``every`` epochs (and after the last) and saves the best embedding model.

    Metrics go into the epoch logs as ``val_<name>`` (so TensorBoard, the progress bar and the
    checkpoint history see them).

    Args:
        evaluate_fn: ``evaluate_fn(embedding_model) -> {"recall@1": ..., "map@r": ...}``.
        embedding_model: the model saved as the best model (not the training wrapper).
        best_path: where the best model is written (``.keras``).
        tracker: a :class:`BestModelTracker` naming the selection metric.
        every: evaluation period in epochs.
        total_epochs: the last epoch is always evaluated.
        nan_guard: optional guard; after a non-finite loss nothing is evaluated or saved.

    Example:
        >>> tracker = BestModelTracker("map@r")
        >>> callback = ValidationEvaluation(fn, embedder, "out/best.keras", tracker, every=5,
        ...                                 total_epochs=100)
    """

    def __init__(self, evaluate_fn: Callable[[keras.Model], Dict[str, float]],
                 embedding_model: keras.Model, best_path: str, tracker: BestModelTracker,
                 every: int = 1, total_epochs: Optional[int] = None, nan_guard=None,
                 log: Callable[[str], None] = print):
        super().__init__()
        if every < 1:
            raise ValueError(f"every={every} must be >= 1.")
        self.evaluate_fn = evaluate_fn
        self.embedding_model = embedding_model
        self.best_path = best_path
        self.tracker = tracker
        self.every = every
        self.total_epochs = total_epochs
        self.nan_guard = nan_guard
        self.log = log
        self.last_metrics: Dict[str, float] = {}

    def should_evaluate(self, epoch: int) -> bool:
        return (epoch + 1) % self.every == 0 or (
            self.total_epochs is not None and epoch + 1 >= self.total_epochs)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self.nan_guard is not None and self.nan_guard.tripped:
            return
        if not self.should_evaluate(epoch):
            return
        metrics = self.evaluate_fn(self.embedding_model)
        self.last_metrics = dict(metrics)
        if logs is not None:
            logs.update({f"val_{k}": float(v) for k, v in metrics.items()
                         if not k.startswith("num_")})
        value = metrics.get(self.tracker.metric)
        if value is None:
            raise KeyError(f"The validation metrics have no {self.tracker.metric!r}; got "
                           f"{sorted(metrics)}. Choose --selection_metric among them.")
        improved = self.tracker.update(epoch, float(value))
        if improved:
            save_model_atomically(self.embedding_model, self.best_path)
        if improved:
            note = " (new best, saved)"
        elif self.tracker.best_value is None:
            note = " (not finite; no best model yet)"
        else:
            note = (f" (best {100 * self.tracker.best_value:.2f} at epoch "
                    f"{self.tracker.best_epoch + 1})")
        self.log(f"epoch {epoch + 1}: validation {self.tracker.metric}={100 * value:.2f}{note}")
