"""The top-level BUILD covers the project: every test file has a target, every module a library.

BUILD is read with Python's `ast` (Starlark's call syntax is Python's), so no Bazel is needed.
Under `bazel test` the same checks run on the runfiles tree, whose BUILD target ships BUILD and
all tests/*.py as data; there they also check that the packages come from the runfiles.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("dgml_tf", "pipelines", "serving")
# Files in tests/ that are neither test modules nor per-test support files.
SHARED_TEST_FILES = {"conftest.py", "bazel_pytest_main.py"}


class BuildFileError(ValueError):
    """BUILD uses a construct this reader does not understand."""


def _glob_regex(pattern: str) -> re.Pattern:
    """Bazel glob pattern -> regex: `**` spans directories, `*` and `?` stay within one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _string_list(node: ast.AST, variables: dict) -> list:
    if isinstance(node, ast.List) and all(isinstance(e, ast.Constant) for e in node.elts):
        return [e.value for e in node.elts]
    if isinstance(node, ast.Name) and node.id in variables:
        return variables[node.id]
    raise BuildFileError(f"expected a list of strings at BUILD line {node.lineno}")


def _file_set(node: ast.AST, files: list, variables: dict) -> set:
    """The repo files a `srcs`/`data` expression names: lists, glob(include, exclude=...), +."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _file_set(node.left, files, variables) | _file_set(node.right, files, variables)
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "glob":
        include = [_glob_regex(p) for p in _string_list(node.args[0], variables)]
        exclude = [_glob_regex(p) for kw in node.keywords if kw.arg == "exclude"
                   for p in _string_list(kw.value, variables)]
        return {f for f in files if any(r.match(f) for r in include)
                and not any(r.match(f) for r in exclude)}
    return set(_string_list(node, variables))


def read_build(build_text: str, files: list) -> dict:
    """Targets of a BUILD file: {"py_library": {name: srcs}, "pytest_test": {name: {...}}}.

    Args:
        build_text: the BUILD file's text.
        files: repo-relative paths of all files, for expanding glob().
    """
    tree = ast.parse(build_text, filename="BUILD")
    variables, targets = {}, {"py_library": {}, "pytest_test": {}}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.List):
            variables[statement.targets[0].id] = [
                getattr(e, "value", None) for e in statement.value.elts]
        if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)):
            continue
        call = statement.value
        rule = getattr(call.func, "id", None)
        if rule not in targets:
            continue
        kwargs = {kw.arg: kw.value for kw in call.keywords}
        name = kwargs["name"].value
        if name in targets[rule]:
            raise BuildFileError(f"{rule} {name!r} is defined twice in BUILD")
        if rule == "py_library":
            targets[rule][name] = _file_set(kwargs["srcs"], files, variables)
        else:
            targets[rule][name] = {
                "src": kwargs["src"].value,
                "data": _file_set(kwargs["data"], files, variables) if "data" in kwargs else set(),
                "tags": _string_list(kwargs["tags"], variables) if "tags" in kwargs else [],
            }
    return targets


def repo_files(root: Path) -> list:
    """Repo-relative paths of the files BUILD can name: top-level files, tests/, the packages."""
    files = [p for p in root.iterdir() if p.is_file()]
    for top in ("tests",) + PACKAGES:
        files += [p for p in (root / top).rglob("*") if p.is_file()]
    return sorted(p.relative_to(root).as_posix() for p in files if "__pycache__" not in p.parts)


def coverage_problems(root: Path) -> list:
    """Everything BUILD misses or gets wrong in the tree at `root`, one message per problem."""
    files = repo_files(root)
    targets = read_build((root / "BUILD").read_text(encoding="utf-8"), files)
    problems = []

    tests_by_src = {t["src"]: (name, t) for name, t in targets["pytest_test"].items()}
    for path in files:
        if re.fullmatch(r"tests/test_[^/]*\.py", path) and path not in tests_by_src:
            name = Path(path).stem
            problems.append(f"{path} has no target: add pytest_test(name = \"{name}\", "
                            f"src = \"{path}\", deps = _PACKAGES) to BUILD")
    for src, (name, _) in tests_by_src.items():
        if name != Path(src).stem:
            problems.append(f"pytest_test {name!r} runs {src}: name it {Path(src).stem!r}")
        if src not in files:
            problems.append(f"pytest_test {name!r} names {src}, which does not exist")

    in_libraries = set().union(*targets["py_library"].values())
    for path in files:
        if path.endswith(".py") and path.split("/")[0] in PACKAGES and path not in in_libraries:
            problems.append(f"{path} is in no py_library: widen a srcs glob or add a target")

    # A test that imports or runs another file of tests/ needs it in its runfiles.
    helpers = {Path(p).stem: p for p in files if re.fullmatch(r"tests/[^/]*\.py", p)
               and Path(p).name not in SHARED_TEST_FILES}
    for src, (name, target) in tests_by_src.items():
        if src not in files:
            continue
        text = (root / src).read_text(encoding="utf-8")
        for stem, helper in helpers.items():
            if helper != src and re.search(rf"\b{stem}\b", text) and helper not in target["data"]:
                problems.append(f"{src} uses {helper}: add it to data of pytest_test {name!r}")
    return problems


def _copy_tree(tmp_path: Path) -> Path:
    """BUILD, tests/ and the package sources, copied so a test can break them."""
    root = tmp_path / "repo"
    for path in repo_files(REPO):
        if path == "BUILD" or "/" in path:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / path, root / path)
    return root


def test_build_covers_every_test_file_and_module():
    assert coverage_problems(REPO) == []


def test_fast_subset_is_not_empty_and_names_real_targets():
    targets = read_build((REPO / "BUILD").read_text(encoding="utf-8"), repo_files(REPO))
    fast = sorted(n for n, t in targets["pytest_test"].items() if "fast" in t["tags"])
    assert "test_build_coverage" in fast and len(fast) >= 5


def test_new_test_file_without_target_is_reported(tmp_path):
    root = _copy_tree(tmp_path)
    assert coverage_problems(root) == []
    (root / "tests" / "test_new_feature.py").write_text("def test_x():\n    pass\n")
    problems = coverage_problems(root)
    assert len(problems) == 1
    assert problems[0].startswith("tests/test_new_feature.py has no target")


def test_module_outside_every_glob_is_reported(tmp_path):
    root = _copy_tree(tmp_path)
    build = (root / "BUILD").read_text(encoding="utf-8")
    # Dropping dgml_tf_main leaves dgml_tf/main.py only in the dgml_tf glob's exclude list.
    start = build.index('py_library(\n    name = "dgml_tf_main"')
    end = build.index("\n)\n", start) + 3
    (root / "BUILD").write_text(build[:start] + build[end:], encoding="utf-8")
    assert coverage_problems(root) == ["dgml_tf/main.py is in no py_library: widen a srcs glob "
                                       "or add a target"]


def test_helper_used_by_a_test_must_be_in_its_data(tmp_path):
    root = _copy_tree(tmp_path)
    build = (root / "BUILD").read_text(encoding="utf-8")
    needle = '    src = "tests/test_readers.py",\n    data = ["tests/fixtures_datasets.py"],\n'
    assert needle in build
    (root / "BUILD").write_text(build.replace(needle, '    src = "tests/test_readers.py",\n'))
    assert coverage_problems(root) == ["tests/test_readers.py uses tests/fixtures_datasets.py: "
                                       "add it to data of pytest_test 'test_readers'"]


@pytest.mark.parametrize("pattern, path, expected", [
    ("dgml_tf/**/*.py", "dgml_tf/__init__.py", True),
    ("dgml_tf/**/*.py", "dgml_tf/layers/deep/x.py", True),
    ("dgml_tf/**/*.py", "dgml_tf/configs/cub.flags", False),
    ("dgml_tf/*.py", "dgml_tf/layers/x.py", False),
    ("serving/configs/**", "serving/configs/models.config", True),
    ("tests/test_?.py", "tests/test_ab.py", False),
])
def test_glob_semantics(pattern, path, expected):
    assert bool(_glob_regex(pattern).match(path)) is expected


def test_glob_agrees_with_pathlib_on_the_package_tree():
    files = repo_files(REPO)
    for package in PACKAGES:
        expected = {p.relative_to(REPO).as_posix() for p in (REPO / package).glob("**/*.py")
                    if "__pycache__" not in p.parts}
        regex = _glob_regex(f"{package}/**/*.py")
        assert {f for f in files if regex.match(f)} == expected


def test_unsupported_build_construct_is_a_clear_error():
    with pytest.raises(BuildFileError, match="list of strings at BUILD line 1"):
        read_build('py_library(name = "x", srcs = some_macro())\n', [])


def test_pytest_uses_the_repo_configuration(pytestconfig):
    """pytest.ini and tests/conftest.py are in effect (also inside Bazel's runfiles tree)."""
    assert Path(pytestconfig.inipath).resolve() == (REPO / "pytest.ini").resolve()
    assert any(m.startswith("slow:") for m in pytestconfig.getini("markers"))
    assert "conftest" in sys.modules and hasattr(sys.modules["conftest"], "_reset_keras_state")


@pytest.mark.skipif("TEST_SRCDIR" not in os.environ, reason="only under bazel test")
def test_packages_are_imported_from_the_runfiles_tree():
    import dgml_tf
    import pipelines
    import serving

    runfiles = os.path.realpath(os.environ["TEST_SRCDIR"])
    for module in (dgml_tf, pipelines, serving):
        # runfiles files are symlinks into the checkout, but their directories are real
        package_dir = os.path.realpath(os.path.dirname(module.__file__))
        assert package_dir.startswith(runfiles + os.sep), package_dir
