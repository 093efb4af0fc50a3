#!/usr/bin/env bash
# Sets up a fresh Debian machine (Python 3.11) for MaskLAM: system packages, then the
# virtual environment at .venv in the project root with the project installed editable.
#
# Why these torch wheels: segment-anything imports torchvision at import time, and the
# CPU-only torch 2.13.0 wheel has no matching torchvision on PyPI. torch 2.14.1 with
# torchvision 0.29.1 install together (a CUDA build that also runs on the CPU), so one
# environment serves a CPU laptop, CI and a GPU node alike. Override with TORCH_SPEC.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server redis-tools)
# Prometheus for `make monitor` and tests/test_monitoring.py (Grafana is not in Debian).
command -v prometheus >/dev/null || need_apt+=(prometheus)
# Headless MuJoCo rendering: EGL and OSMesa from Mesa (software rendering without a GPU).
dpkg -s libegl1 libgl1-mesa-dri libosmesa6 >/dev/null 2>&1 || need_apt+=(libegl1 libgl1-mesa-dri libosmesa6)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  # Debian starts system-wide redis and prometheus services on install; we only need the binaries.
  for service in redis-server prometheus; do
    ($SUDO systemctl disable --now "$service" >/dev/null 2>&1 || $SUDO service "$service" stop >/dev/null 2>&1) || true
  done
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q $TORCH_SPEC
.venv/bin/python -m pip install -q -e ".[dev]"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
