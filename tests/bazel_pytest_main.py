"""Entry point of every Bazel py_test (see tools/pytest.bzl): runs pytest on one test file.

Bazel starts this from the test's runfiles tree, whose workspace directory holds pytest.ini,
tests/conftest.py and the package sources declared in BUILD. The runner makes that tree the
only source of the project's packages, gives the test writable HOME/cache directories when the
sandbox's are read-only, and maps Bazel's test protocol (XML_OUTPUT_FILE, --test_filter) onto
pytest options.
"""

from __future__ import annotations

import os
import sys

# Top-level packages that must come from the runfiles tree, never from an editable install.
PROJECT_PACKAGES = ("dgml_tf", "pipelines", "serving")


def _drop_source_tree_from_sys_path(runfiles_workspace: str) -> None:
    """Removes sys.path entries outside the runfiles that also provide the project's packages.

    `pip install -e .` puts the source checkout on sys.path through a .pth file; a module
    missing from BUILD would then be imported from the checkout and the test would pass anyway.
    """
    root = os.path.realpath(runfiles_workspace)

    def shadows(entry: str) -> bool:
        path = os.path.realpath(entry or os.getcwd())
        if path == root or path.startswith(root + os.sep):
            return False
        return any(os.path.isfile(os.path.join(path, p, "__init__.py")) for p in PROJECT_PACKAGES)

    sys.path[:] = [entry for entry in sys.path if entry == "" or not shadows(entry)]


def _ensure_writable_home(tmp_root: str) -> None:
    """Points HOME into the test's tmp dir when the sandbox leaves the real one read-only.

    Keras, matplotlib and the glyph/weights caches write under ~/.keras, ~/.config and ~/.cache.
    """
    home = os.environ.get("HOME", "")
    if not home or not os.access(home, os.W_OK):
        os.environ["HOME"] = os.path.join(tmp_root, "home")
        os.makedirs(os.environ["HOME"], exist_ok=True)


def pytest_arguments(test_file: str, environ: dict) -> list:
    """The pytest command line for `test_file` under Bazel's test environment `environ`."""
    args = [test_file, "-q", "-p", "no:cacheprovider", "-c", "pytest.ini", "--rootdir", "."]
    if environ.get("XML_OUTPUT_FILE"):
        args += ["--junitxml", environ["XML_OUTPUT_FILE"]]  # per-case results in test.xml
    if environ.get("TESTBRIDGE_TEST_ONLY"):
        args += ["-k", environ["TESTBRIDGE_TEST_ONLY"]]  # bazel test --test_filter=...
    return args


def main(argv: list) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: bazel_pytest_main.py tests/test_<name>.py (set by pytest_test)\n")
        return 2
    workspace = os.getcwd()
    if not os.path.isfile(os.path.join(workspace, "pytest.ini")):
        sys.stderr.write(
            f"pytest.ini not found in {workspace}: run this through `bazel test` (it starts in "
            "the runfiles workspace), or add pytest.ini to the target's data.\n")
        return 2
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    _ensure_writable_home(os.environ.get("TEST_TMPDIR") or os.path.join(workspace, ".tmp"))
    _drop_source_tree_from_sys_path(workspace)

    import pytest

    return pytest.main(pytest_arguments(argv[1], os.environ))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
