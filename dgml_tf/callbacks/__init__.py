"""Callbacks of the training CLI, one concept per module.

- ``checkpointing``: resumable per-epoch checkpoints (model + optimizer), durable, NaN-safe.
- ``nan_guard``: stop at the first non-finite loss, naming the step.
- ``validation``: evaluate on the validation split, keep the best model as ``best.keras``.
- ``tensorboard_extras``: per-group learning rates, attention images, embedding projector.
- ``progress``: a per-epoch line with the run's ETA.
- ``atomic``: durable write-then-``os.replace`` helpers, stale temporaries, setting files aside,
  directories a job may remove because it created them. Imports no Keras/TensorFlow.
- ``pause``: a kill point at a chosen step, for the preemption tests only.

Names are imported lazily (PEP 562), so ``dgml_tf.callbacks.atomic`` can be used by code that
must not load TensorFlow yet (the main job decides oneDNN before TensorFlow is imported).
"""

import importlib

_EXPORTS = {
    "atomic": ("create_marked_directory", "remove_marked_directory", "remove_stale_temporaries",
               "set_aside", "write_atomically", "write_json_atomically"),
    "checkpointing": ("CheckpointError", "EpochCheckpoint", "TrainingState", "all_finite",
                      "load_training_state", "restore_variables"),
    "nan_guard": ("NonFiniteLossError", "NonFiniteLossGuard"),
    "pause": ("PauseAtStep", "pause_from_environment"),
    "progress": ("RunProgbar", "RunProgress"),
    "tensorboard_extras": ("AttentionImages", "LearningRateLogger", "write_projector"),
    "validation": ("BestModelTracker", "ValidationEvaluation", "save_model_atomically"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name):
    if name in _EXPORTS:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(__all__) | set(_EXPORTS))
