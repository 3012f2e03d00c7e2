"""The one loader of ``.keras`` files that hold this package's custom layers.

A ``.keras`` file names its custom objects ("dgml_tf>AttentiveGrouping"); Keras deserialises them
only once the modules that register them have been imported, so every loader goes through here.
"""

from __future__ import annotations

import importlib
import os
from typing import Union

# Modules that define registered serializables (the lazy ``dgml_tf.losses`` package registers
# its own through ``register_serializables``).
_REGISTERING_MODULES = ("dgml_tf.layers", "dgml_tf.models.frozen_batch_norm",
                        "dgml_tf.models.conv_frozen_batch_norm", "dgml_tf.losses")


def register_custom_objects() -> None:
    """Imports the modules whose layers and losses are registered Keras serializables."""
    for module in _REGISTERING_MODULES:
        try:
            imported = importlib.import_module(module)
            getattr(imported, "register_serializables", lambda: None)()
        except ImportError:
            # A partial install without that subpackage: a model using it fails to load with
            # Keras' own "unknown layer" message, which names the missing class.
            pass


def load_keras_model(path: Union[str, os.PathLike], *, compile: bool = False):
    """Loads a ``.keras`` model saved by this package (or holding its layers).

    Args:
        path: the ``.keras`` file.
        compile: restore the training configuration too (off: inference and export need none).

    Returns:
        The ``keras.Model``.

    Raises:
        FileNotFoundError: when ``path`` is not a file, naming how to get one.
        ValueError: when ``path`` is not a ``.keras`` file (e.g. ``.weights.h5``).

    Example:
        >>> model = load_keras_model("runs/fm/best.keras")  # doctest: +SKIP
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(
            f"{path!r} is not a .keras file. Save the model with model.save('model.keras'); "
            "weights-only files (.weights.h5) do not describe the architecture.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model at {path}: train first (python -m dgml_tf.train "
                                "--output_dir=...) or pass --keras_model=<file.keras>.")
    import keras

    register_custom_objects()
    return keras.saving.load_model(path, compile=compile)
