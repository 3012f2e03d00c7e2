"""Where an export's model comes from: a keras.Model, a ``.keras`` file, or a training run dir.

A run directory (``dgml_tf.train --output_dir``) holds ``best.keras`` (the embedding model with
the best validation score) and/or ``model.keras`` (the final one); ``best.keras`` is preferred.
Per-epoch checkpoints (``checkpoints/epoch-*.weights.h5``) hold the training wrapper and optimizer
state, not a servable model: export ``best.keras`` / ``model.keras`` instead.
"""

from __future__ import annotations

import importlib
import os
from typing import Union

import keras

RUN_DIR_MODEL_FILES = ("best.keras", "model.keras")


def _register_custom_objects() -> None:
    """Imports the modules whose layers are registered Keras serializables.

    A ``.keras`` file names its custom layers ("dgml_tf>AttentiveGrouping"); they deserialize
    only once their modules have been imported.
    """
    for module in ("dgml_tf.layers", "dgml_tf.models", "dgml_tf.losses"):
        try:
            importlib.import_module(module)
        except ImportError:
            # A partial install without that subpackage: models using it fail to load below with
            # Keras' own "unknown layer" message, which names the missing class.
            pass


def resolve_run_dir(run_dir: "str | os.PathLike") -> str:
    """The model file of a training run directory (``best.keras``, else ``model.keras``)."""
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"--run_dir {run_dir!r} is not a directory.")
    for name in RUN_DIR_MODEL_FILES:
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"--run_dir {run_dir!r} has neither {' nor '.join(RUN_DIR_MODEL_FILES)}. Point --run_dir "
        "at a dgml_tf.train output directory, or pass --keras_model=<file.keras>."
    )


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
        path = resolve_run_dir(path)
    if not path.endswith(".keras"):
        raise ValueError(
            f"{path!r} is not a .keras file. Save the model with model.save('model.keras'); "
            "weights-only files (.weights.h5) do not describe the architecture."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model file {path!r} does not exist.")
    _register_custom_objects()
    model = keras.saving.load_model(path, compile=False)
    return model, os.path.abspath(path)
