"""Where an export's model comes from: a keras.Model, a ``.keras`` file, or a training run dir.

A run directory (``dgml_tf.train --output_dir``) holds ``best.keras`` (the embedding model with
the best validation score) and/or ``model.keras`` (the final one); ``best.keras`` is preferred.
Per-epoch checkpoints (``checkpoints/epoch-*.weights.h5``) hold the training wrapper and optimizer
state, not a servable model: export ``best.keras`` / ``model.keras`` instead.
"""

from __future__ import annotations

import os
from typing import Union

import keras

from dgml_tf.models.saving import load_keras_model
from dgml_tf.run_dir import RunDir


def load_embedder(source: Union[keras.Model, str, os.PathLike]) -> tuple:
    """Returns ``(model, description)`` for a keras.Model, a ``.keras`` path or a run directory.

    Args:
        source: the model itself, a ``.keras`` file, or a run directory holding one.

    Returns:
        The Keras model and a short string recorded as the export's ``source``.
    """
    if isinstance(source, keras.Model):
        return source, f"keras.Model:{source.name}"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"Expected a keras.Model, a .keras file path or a run directory, got "
            f"{type(source).__name__}."
        )
    path = os.fspath(source)
    if os.path.isdir(path):
        path = RunDir(path).model_path()  # best.keras, else model.keras; else names both
    # Checks the suffix, then that the file exists, then registers our layers and loads.
    return load_keras_model(path), os.path.abspath(path)
