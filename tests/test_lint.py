"""ruff over the whole repository with the repository's ruff.toml (what CI enforces)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LINTED = ("dgml_tf", "pipelines", "serving", "bench", "tests", "scripts", "tools")


def _ruff() -> list:
    found = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    if not found:
        message = "ruff is not installed: pip install -e '.[test]' (ruff==0.8.6)"
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(message)  # CI must lint, not skip
        pytest.skip(message)
    return [found]


def test_repository_passes_ruff():
    # Under Bazel only the packages and tests are in the runfiles; pytest sees everything.
    paths = [d for d in LINTED if (REPO / d).exists()]
    assert "dgml_tf" in paths and "tests" in paths, paths
    result = subprocess.run(_ruff() + ["check", "--no-cache", "--config", str(REPO / "ruff.toml"),
                                       *paths],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_ruff_configuration_catches_an_unused_import(tmp_path):
    # The configuration is live: a file with an unused import and an undefined name fails.
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\n\ndef f():\n    return undefined_name\n", encoding="utf-8")
    result = subprocess.run(_ruff() + ["check", "--no-cache", "--config", str(REPO / "ruff.toml"),
                                       str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "F401" in result.stdout and "F821" in result.stdout
