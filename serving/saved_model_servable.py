"""A TF Serving-layout SavedModel version (``<base_path>/<version>/saved_model.pb``) as a servable."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dgml_tf.export.tf_serving_layout import SAVED_MODEL_FILE
from serving.errors import from_tf_error
from serving.servable import Servable
from serving.signature_defs import read_signature_defs


class SavedModelServable(Servable):
    """Loads one SavedModel version once and runs its signatures.

    Args:
        name: model name.
        version: integer version (the directory name).
        path: the version directory.

    Example:
        >>> servable = SavedModelServable("dgml", 1, "/models/dgml/1")  # doctest: +SKIP
        >>> servable.run("serving_default", {"image_bytes": np.array([jpeg], object)}, {})
    """

    def __init__(self, name: str, version: int, path: str | Path):
        import tensorflow as tf

        super().__init__(name, version)
        self.path = Path(path)
        # Lets a reload tell an unchanged version (reused) from one re-exported in place.
        self.source_mtime_ns = (self.path / SAVED_MODEL_FILE).stat().st_mtime_ns
        self._signature_defs = read_signature_defs(self.path)
        self._loaded = tf.saved_model.load(str(self.path))
        self._functions = dict(self._loaded.signatures)

    @property
    def signature_defs(self) -> Mapping[str, Any]:
        return self._signature_defs

    def run(self, signature_name, inputs, options) -> dict[str, np.ndarray]:
        import tensorflow as tf

        function = self._functions[signature_name]
        spec = function.structured_input_signature[1]
        try:
            tensors = {key: tf.constant(value, dtype=spec[key].dtype) for key, value in inputs.items()}
            outputs = function(**tensors)
        except Exception as error:  # TF op errors carry their own canonical code
            raise from_tf_error(error) from error
        return {key: value.numpy() for key, value in outputs.items()}
