"""Refuses to run under tf-keras (legacy Keras 2).

Why: dgml_tf layers are Keras 3 layers. Placed inside a tf-keras model (which is what
``TF_USE_LEGACY_KERAS=1`` makes ``tf.keras`` return), a Keras 3 layer is not tracked: its weights
are neither trained nor saved, and nothing warns. Failing loudly at import is the only safe answer.
"""

import os

_TRUE_VALUES = ("1", "true", "yes", "on")


class LegacyKerasError(ImportError):
    """Raised when dgml_tf is imported with TF_USE_LEGACY_KERAS set."""


def check_not_legacy_keras() -> None:
    value = os.environ.get("TF_USE_LEGACY_KERAS", "")
    if value.strip().lower() in _TRUE_VALUES:
        raise LegacyKerasError(
            f"dgml_tf requires Keras 3, but TF_USE_LEGACY_KERAS={value!r} is set, which makes "
            "tf.keras resolve to tf-keras (Keras 2). A Keras 3 layer such as AttentiveGrouping "
            "placed inside a tf-keras model silently loses its weights (they are neither trained "
            "nor saved). Unset TF_USE_LEGACY_KERAS (or set it to 0) and build models with "
            "`import keras` (Keras 3)."
        )
