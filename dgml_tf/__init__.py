"""dgml_tf: deep metric learning with attentive grouping (Xu et al., arXiv 2011.08877) for Keras 3.

Subpackages follow the data flow: ``layers`` (attentive grouping and baseline heads), ``losses``
(diversity, margin and other metric losses), ``models`` (backbone + head builders), ``training``,
``evaluation``, ``interpretation``, and the CLIs ``dgml_tf.train``, ``dgml_tf.evaluate``,
``dgml_tf.explain``, ``dgml_tf.export``, ``dgml_tf.index``.

``layers``, ``losses``, ``miners``, ``models`` and ``training.MetricLearningModel`` run on every
Keras 3 backend (TensorFlow, JAX, PyTorch) and import without TensorFlow; the rest needs
``tensorflow==2.20.0`` and says so when it is missing.
"""

from dgml_tf import _missing_tensorflow, _renamed_modules
from dgml_tf._legacy_keras_guard import check_not_legacy_keras

check_not_legacy_keras()
_missing_tensorflow.install()
_renamed_modules.install()  # the 0.1 module paths (dgml_tf.training, ...) for one release

__version__ = "0.1.0"
