#!/usr/bin/env bash
# The main job: sets everything up on a fresh machine, then runs the whole path on the embedded
# Fashion-MNIST default (train, evaluate, explain, export, index, serve, query).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec .venv/bin/python -m dgml_tf.main "$@"
