"""The package's dependency direction, enforced (README, "Architecture").

Walks every import in ``dgml_tf/``, ``pipelines/`` and ``serving/`` (module level and inside
functions: a lazy import is still a dependency) and fails on a forbidden edge:

- layers, losses, miners and ``dgml_tf.distances`` import only each other (and the package
  root): no models, training, pipelines, evaluation, export or serving code;
- models import only those;
- pipelines import nothing of ``dgml_tf`` or ``serving`` (data comes before models);
- serving imports no CLI module and no training code;
- only the main job (``dgml_tf.main``) imports another command's ``cli`` / ``__main__``;
- the graph between packages has no cycle.

The checker runs on copies with a planted bad edge too, so it is shown to catch each rule.
"""

from __future__ import annotations

import ast
import collections
import pathlib
import shutil
from typing import Dict, List, Set

REPO = pathlib.Path(__file__).resolve().parents[1]
TOP_PACKAGES = ("dgml_tf", "pipelines", "serving")
ROOT_MODULES = {"dgml_tf", "dgml_tf._missing_tensorflow", "dgml_tf._legacy_keras_guard",
                "dgml_tf._lazy", "dgml_tf._renamed_modules"}
LOWER = {"dgml_tf.layers", "dgml_tf.losses", "dgml_tf.miners", "dgml_tf.distances"}
MODELS = {"dgml_tf.models"}
# Command-line machinery: what parses flags for the commands, never a library dependency.
CLI_SUPPORT = {"dgml_tf.cli", "dgml_tf.flags", "dgml_tf.flagfiles", "dgml_tf.main"}


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def module_imports(root: pathlib.Path) -> Dict[str, Set[str]]:
    """Module -> every first-party module it imports (relative imports resolved)."""
    modules = {}
    for top in TOP_PACKAGES:
        for path in sorted((root / top).glob("**/*.py")):
            modules[_module_name(path, root)] = path
    edges: Dict[str, Set[str]] = collections.defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from pkg import submodule` depends on the submodule itself.
                targets = [source] + [f"{source}.{a.name}" for a in node.names
                                      if f"{source}.{a.name}" in modules]
            else:
                continue
            edges[name].update(t for t in targets if t.split(".")[0] in TOP_PACKAGES)
    return edges


def unit(module: str) -> str:
    """The unit the rules speak of: ``dgml_tf.<subpackage or module>``, else the top package."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "dgml_tf" and len(parts) > 1 else parts[0]


def _is_cli(module: str) -> bool:
    return module.split(".")[-1] in ("cli", "__main__") and module != "dgml_tf.cli"


def _edge_problem(source: str, target: str) -> str:
    src, dst = unit(source), unit(target)
    if src == dst or dst in ROOT_MODULES:
        return ""
    if src in LOWER and dst not in LOWER:
        return "layers/losses/miners/distances import only each other"
    if src in MODELS and dst not in LOWER:
        return "models import only layers, losses, miners and distances"
    if src == "pipelines":
        return "pipelines import no dgml_tf or serving code"
    if src == "serving" and (dst == "dgml_tf.train" or dst in CLI_SUPPORT or _is_cli(target)):
        return "serving imports no CLI module and no training code"
    if _is_cli(target) and src != "dgml_tf.main":
        return "only the main job imports another command's CLI"
    return ""


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Every elementary cycle found by a depth-first search (each reported once)."""
    found, seen = [], set()

    def visit(node: str, path: List[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycle = path[path.index(nxt):]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    found.append(cycle + [nxt])
            elif len(path) < 12:
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    return found


def import_problems(root: pathlib.Path = REPO) -> List[str]:
    """Every forbidden import edge and every cycle between units, as readable lines."""
    problems, units = [], collections.defaultdict(set)
    for source, targets in sorted(module_imports(root).items()):
        for target in sorted(targets):
            why = _edge_problem(source, target)
            if why:
                problems.append(f"{source} imports {target}: {why}")
            if unit(source) != unit(target) and unit(target) not in ROOT_MODULES:
                units[unit(source)].add(unit(target))
    for cycle in _cycles(units):
        problems.append("import cycle: " + " -> ".join(cycle))
    return problems


def _copy(tmp_path: pathlib.Path) -> pathlib.Path:
    for top in TOP_PACKAGES:
        shutil.copytree(REPO / top, tmp_path / top,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return tmp_path


def _plant(root: pathlib.Path, relative: str, line: str) -> None:
    path = root / relative
    path.write_text(path.read_text(encoding="utf-8") + f"\n\ndef _planted():\n    {line}\n",
                    encoding="utf-8")


def test_repository_has_no_forbidden_import():
    problems = import_problems()
    assert problems == [], "\n".join(problems)


def test_the_checker_sees_the_repository():
    edges = module_imports(REPO)
    # A known dependency in each direction the rules allow: the walk is not vacuous.
    assert "dgml_tf.layers" in {unit(t) for t in edges["dgml_tf.models.builder"]}
    assert any(unit(t) == "dgml_tf.index" for m, ts in edges.items() if unit(m) == "serving"
               for t in ts)


def test_lazy_import_in_a_layer_is_caught(tmp_path):
    root = _copy(tmp_path)
    _plant(root, "dgml_tf/layers/attentive_grouping.py", "import serving.client")
    assert ("dgml_tf.layers.attentive_grouping imports serving.client: layers/losses/miners/"
            "distances import only each other") in import_problems(root)


def test_serving_importing_a_cli_is_caught(tmp_path):
    root = _copy(tmp_path)
    _plant(root, "serving/metrics.py", "from dgml_tf.export.cli import run")
    assert ("serving.metrics imports dgml_tf.export.cli: serving imports no CLI module and no "
            "training code") in import_problems(root)


def test_pipelines_importing_a_model_is_caught(tmp_path):
    root = _copy(tmp_path)
    _plant(root, "pipelines/records.py", "import dgml_tf.models.builder")
    problems = import_problems(root)
    assert ("pipelines.records imports dgml_tf.models.builder: pipelines import no dgml_tf or "
            "serving code") in problems


def test_cycle_between_packages_is_caught(tmp_path):
    root = _copy(tmp_path)
    _plant(root, "dgml_tf/export/output_names.py", "import serving.errors")
    cycles = [p for p in import_problems(root) if p.startswith("import cycle")]
    assert any("dgml_tf.export" in c and "serving" in c for c in cycles), cycles
