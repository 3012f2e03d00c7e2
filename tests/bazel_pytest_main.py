"""Entry point of every Bazel py_test: runs pytest on the test file given as argument."""

import os
import sys

import pytest

if __name__ == "__main__":
    # Bazel runs tests from the runfiles tree; the workspace root there holds pytest.ini.
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    sys.exit(pytest.main([*sys.argv[1:], "-q", "-p", "no:cacheprovider"]))
