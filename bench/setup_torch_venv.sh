#!/usr/bin/env bash
# Creates ./.venv-torch (next to ./.venv) with the PyTorch the speed benchmark compares against.
# PyTorch is never a dependency of dgml_tf: it lives in its own venv, used only by
# bench/torch_reference_step.py, which bench/train_step_speed.py runs as a subprocess.
#
# Usage (from anywhere): bench/setup_torch_venv.sh
set -euo pipefail

cd "$(dirname "$0")/.."

if ! command -v python3.11 >/dev/null 2>&1; then
  echo "python3.11 not found: install it (e.g. apt-get install python3.11 python3.11-venv)." >&2
  exit 1
fi

if [ ! -x .venv-torch/bin/python ]; then
  python3.11 -m venv .venv-torch
fi
# CPU wheels from PyPI; the versions the benchmark table was measured with.
.venv-torch/bin/pip install torch==2.14.1 torchvision==0.29.1
.venv-torch/bin/python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
