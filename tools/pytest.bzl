"""`pytest_test`: one Bazel py_test per test file, run through pytest (fixtures, conftest, marks)."""

# Support files every test needs in its runfiles: the runner, pytest's configuration and the
# shared conftest (session set-up and fixtures).
_PYTEST_SUPPORT = ["tests/bazel_pytest_main.py", "tests/conftest.py"]

def pytest_test(name, src, deps = [], data = [], tags = [], size = "medium", **kwargs):
    """A py_test that runs pytest on one test file from the runfiles tree.

    Args:
      name: target name, conventionally the file's basename without ".py".
      src: the test file, e.g. "tests/test_layers.py".
      deps: py_library targets the test imports (the package libraries).
      data: extra files the test reads, imports by path or runs as a subprocess.
      tags: Bazel tags; "fast" marks the CI subset.
      size: Bazel test size (sets the default timeout).
      **kwargs: passed to py_test (timeout, shard_count, flaky, ...).
    """
    native.py_test(
        name = name,
        srcs = _PYTEST_SUPPORT + [src],
        main = "tests/bazel_pytest_main.py",
        args = ["$(rootpath %s)" % src],
        data = ["pytest.ini"] + data,
        deps = deps,
        tags = tags,
        size = size,
        # No generated __init__.py files: tests/ must stay a plain directory of pytest modules
        # (pytest puts it on sys.path, as in a source-tree run).
        legacy_create_init = False,
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )
