#!/usr/bin/env bash
# Set up potwatch in ./.venv. torch is pinned and installed first: an unpinned torch pulls a CUDA
# build of several GB, even on a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

"$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION}"
.venv/bin/python -m pip install --quiet -e ".[dev,ui]"
echo "potwatch is set up: .venv/bin/potwatch --help"
