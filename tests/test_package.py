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
