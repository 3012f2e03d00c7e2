"""Callbacks of the training CLI, one concept per module.

- ``checkpointing``: resumable per-epoch checkpoints (model + optimizer), atomic, NaN-safe.
- ``nan_guard``: stop at the first non-finite loss, naming the step.
- ``validation``: evaluate on the validation split, keep the best model as ``best.keras``.
- ``tensorboard_extras``: per-group learning rates, attention images, embedding projector.
- ``progress``: a per-epoch line with the run's ETA.
- ``atomic``: write-then-``os.replace`` helpers.
"""

from dgml_tf.callbacks.atomic import write_atomically, write_json_atomically
from dgml_tf.callbacks.checkpointing import (EpochCheckpoint, TrainingState, all_finite,
                                             load_training_state, restore_variables)
from dgml_tf.callbacks.nan_guard import NonFiniteLossError, NonFiniteLossGuard
from dgml_tf.callbacks.progress import RunProgbar, RunProgress
from dgml_tf.callbacks.tensorboard_extras import (AttentionImages, LearningRateLogger,
                                                  write_projector)
from dgml_tf.callbacks.validation import (BestModelTracker, ValidationEvaluation, embed_dataset,
                                          save_model_atomically)

__all__ = [
    "AttentionImages",
    "BestModelTracker",
    "EpochCheckpoint",
    "LearningRateLogger",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "RunProgbar",
    "RunProgress",
    "TrainingState",
    "ValidationEvaluation",
    "all_finite",
    "embed_dataset",
    "load_training_state",
    "restore_variables",
    "save_model_atomically",
    "write_atomically",
    "write_json_atomically",
    "write_projector",
]
