"""A clear error when a TensorFlow-only part of dgml_tf is imported without TensorFlow.

dgml_tf's layers, losses, miners, model builders and ``MetricLearningModel`` are Keras 3 code
that runs on the JAX and PyTorch backends without TensorFlow. The tf.data pipelines,
SavedModel / TF Serving export, indexing, tf.distribute training and the CLIs need TensorFlow;
importing one of them without it would otherwise stop at a bare
``No module named 'tensorflow'``. The finder below sits last on ``sys.meta_path``, so it is only
asked after every real finder failed to find ``tensorflow``: with TensorFlow installed it never
runs. It only answers imports made by dgml_tf's own code (``dgml_tf``, ``pipelines``,
``serving``), with a ``ModuleNotFoundError`` named ``tensorflow``; everyone else's imports and
``importlib.util.find_spec`` probes (torch's dynamo probes for TensorFlow) see the usual
"not found".
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

TENSORFLOW_PIN = "tensorflow==2.20.0"
_OUR_PACKAGES = ("dgml_tf", "pipelines", "serving")

MESSAGE = (
    "No module named 'tensorflow'. This part of dgml_tf needs TensorFlow (tf.data pipelines, "
    "SavedModel/TF Serving export, indexing, tf.distribute training, the CLIs): "
    f"pip install {TENSORFLOW_PIN}. Without it, dgml_tf.layers, dgml_tf.losses, dgml_tf.miners, "
    "dgml_tf.models (Keras-shipped backbones) and dgml_tf.train.MetricLearningModel run on "
    "KERAS_BACKEND=jax or torch."
)


class MissingTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Raises :data:`MESSAGE` for ``tensorflow`` when no other finder found it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "tensorflow" and _imported_by_dgml_tf():  # submodules: parent fails first
            raise ModuleNotFoundError(MESSAGE, name=fullname)
        return None


def _imported_by_dgml_tf() -> bool:
    """Whether the code asking for the module (past the import machinery) is dgml_tf's."""
    probe = importlib.util.find_spec.__code__
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code is probe:
            return False  # a find_spec probe wants None, not an error
        name = frame.f_globals.get("__name__", "") or ""
        if not (name.startswith("importlib") or name.startswith("_frozen_importlib")):
            return name.split(".")[0] in _OUR_PACKAGES
        frame = frame.f_back
    return False


def install() -> None:
    """Appends the finder to ``sys.meta_path`` once."""
    if not any(isinstance(f, MissingTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.append(MissingTensorFlowFinder())
