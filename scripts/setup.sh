#!/usr/bin/env bash
# All set-up on a fresh machine: system libraries for headless EGL rendering, a venv, pinned packages.
# Idempotent and quick when everything is already there. Source it: `. scripts/setup.sh`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! ldconfig -p 2>/dev/null | grep -q "libEGL.so.1"; then
  echo "[setup] installing EGL/Mesa libraries for headless rendering"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
. .venv/bin/activate
# torch first and pinned: it resolves to the local CPU build; an unpinned torch pulls GBs of CUDA wheels.
python -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
python -c "import robosuite, mujoco, torch, ompl, pybullet; assert mujoco.__version__ == '3.9.0'" \
  || { echo "[setup] package check failed"; exit 1; }
export MUJOCO_GL="${MUJOCO_GL:-egl}"
