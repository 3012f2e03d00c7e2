#!/usr/bin/env bash
# Runs the test suite under Bazel (offline, Debian's bazel-bootstrap), one py_test per test file:
#   scripts/bazel_test.sh                          # everything
#   scripts/bazel_test.sh --test_tag_filters=fast  # the quick CI subset
# Extra arguments go to `bazel test`. Needs ./.venv (scripts/setup.sh) and bazel
# (`DGML_WITH_BAZEL=1 bash scripts/setup.sh` apt-installs bazel-bootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v bazel >/dev/null 2>&1; then
  echo "bazel not found: run 'DGML_WITH_BAZEL=1 bash scripts/setup.sh' (apt-installs" \
       "bazel-bootstrap) or install Bazel 4.x yourself." >&2
  exit 2
fi
if [[ ! -x .venv/bin/python ]]; then
  echo "./.venv is missing: run 'bash scripts/setup.sh' first." >&2
  exit 2
fi
# py_test needs the venv's absolute interpreter path; setup.sh writes the same line.
want="build --python_path=$(pwd)/.venv/bin/python"
if [[ ! -f .bazelrc.venv || $(cat .bazelrc.venv) != "$want" ]]; then
  echo "$want" > .bazelrc.venv
fi
exec bazel test //... "$@"
