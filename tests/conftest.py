"""Test session set-up shared by every test file.

TensorFlow is imported once per process (~8 s), so the suite runs in one pytest process. Two
logical CPU devices are configured before anything touches TF, so tf.distribute tests can run a
real MirroredStrategy on this 2-core, GPU-less machine.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("TF_USE_LEGACY_KERAS", None)

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:  # already initialised by an earlier import; keep what exists
    pass


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Every test starts with float32 policy and a clean Keras session."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    # free_memory=False skips a full gc.collect() (~1.3 s per test with TF loaded).
    keras.backend.clear_session(free_memory=False)
    yield
    keras.mixed_precision.set_global_policy("float32")


_MIRRORED = []


def shared_mirrored_strategy() -> "tf.distribute.MirroredStrategy":
    """The one MirroredStrategy over the 2 logical CPUs that every test in this process shares.

    Each new MirroredStrategy restarts TF's collective-op instance keys, which then collide with
    keys an earlier strategy used in the same process ("Collective instance N expected type ..."),
    so test files must not create their own.
    """
    if not _MIRRORED:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
        if len(devices) < 2:
            pytest.skip("needs the two logical CPU devices configured in conftest.py")
        _MIRRORED.append(tf.distribute.MirroredStrategy(devices))
    return _MIRRORED[0]


@pytest.fixture
def mirrored_strategy():
    return shared_mirrored_strategy()
