"""`pytest_test`: one Bazel py_test per test file, run through pytest (fixtures, conftest, marks)."""

def pytest_test(name, src, deps = [], tags = [], size = "medium", **kwargs):
    native.py_test(
        name = name,
        srcs = ["tests/bazel_pytest_main.py", src, "tests/conftest.py"],
        main = "tests/bazel_pytest_main.py",
        args = ["$(location %s)" % src],
        data = ["pytest.ini"] + kwargs.pop("data", []),
        deps = deps,
        tags = tags,
        size = size,
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )
