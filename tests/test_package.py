"""Package-level guarantees: the tf-keras (legacy Keras 2) guard."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_dgml_tf(value):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("TF_USE_LEGACY_KERAS", None)
    if value is not None:
        env["TF_USE_LEGACY_KERAS"] = value
    return subprocess.run([sys.executable, "-c", "import dgml_tf"], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("value", ["1", "true", "True"])
def test_import_under_legacy_keras_fails_loudly_and_says_why(value):
    result = _import_dgml_tf(value)
    assert result.returncode != 0
    assert "LegacyKerasError" in result.stderr
    assert "silently loses its weights" in result.stderr
    assert "Unset TF_USE_LEGACY_KERAS" in result.stderr


@pytest.mark.parametrize("value", [None, "0", ""])
def test_import_without_legacy_keras_works(value):
    result = _import_dgml_tf(value)
    assert result.returncode == 0, result.stderr


_OLD_PATHS_SCRIPT = """
import sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import dgml_tf.indexing.exact_index as old_exact
    import dgml_tf.evaluation, dgml_tf.interpretation, dgml_tf.exporting
    print("tensorflow", "tensorflow" in sys.modules)
    from dgml_tf.training import MetricLearningModel as OldModel  # (this one needs Keras)
import dgml_tf.index.exact_index as new_exact
from dgml_tf.train import MetricLearningModel
print("same", old_exact is new_exact, OldModel is MetricLearningModel,
      dgml_tf.evaluation is sys.modules["dgml_tf.evaluate"],
      dgml_tf.interpretation is sys.modules["dgml_tf.explain"],
      dgml_tf.exporting is sys.modules["dgml_tf.export"])
print("warned", sorted({str(w.message).split()[0] for w in caught
                        if issubclass(w.category, DeprecationWarning)}))
"""


def test_old_module_paths_resolve_to_the_renamed_modules_with_a_warning():
    # The 0.1 layout's paths (README examples users copied) keep working for one release: the
    # same module objects (no second copy of a class), and a DeprecationWarning naming the new
    # path; resolving them imports no TensorFlow.
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_USE_LEGACY_KERAS", None)
    result = subprocess.run([sys.executable, "-c", _OLD_PATHS_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["same"] == "True True True True True"
    assert lines["warned"] == str(sorted(["dgml_tf.evaluation", "dgml_tf.exporting",
                                          "dgml_tf.indexing", "dgml_tf.indexing.exact_index",
                                          "dgml_tf.interpretation",
                                          "dgml_tf.training"]))
    assert lines["tensorflow"] == "False"
