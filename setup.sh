#!/usr/bin/env bash
# Set up potwatch in ./.venv, with one of three builds of torch (installed first, pinned: an unpinned
# torch lets pip pick a build of several GB that may not fit the machine):
#   bash setup.sh                  torch 2.13.0 from pip's own index (the CPU build here and in CI; the default)
#   bash setup.sh --cuda [12.8]    pip's CUDA build of torch 2.13.0 for that CUDA version, from PyTorch's index
#   bash setup.sh --system-torch   the torch already installed for $PYTHON (a Jetson's JetPack torch): the venv
#                                  sees the system's packages and torch is never reinstalled
# --cluster also installs the cluster extra (Ray and Ray Serve, for `potwatch cluster`; about 240 MB).
# --lmms-eval makes a second, separate venv, ./.venv-lmms, for running lmms-eval's tasks through potwatch
# (docs/lmms-eval.md): the same torch first, then potwatch with its `lmms` extra (lmms-eval pinned, with the
# pins it needs beside torch 2.13); ./.venv is left as it is. It combines with --cuda.
# --dry-run prints the install commands instead of running them. PYTHON picks the interpreter (python3).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCHVISION_VERSION=${TORCHVISION_VERSION:-0.28.0}  # the release paired with torch 2.13 (CUDA --lmms-eval only)
TORCH_INDEX=https://download.pytorch.org/whl
USAGE="usage: bash setup.sh [--cuda [VERSION] | --system-torch] [--cluster] [--lmms-eval] [--dry-run]"

mode=cpu
cuda_version=12.8
dry_run=
extras=dev,ui
lmms_eval=
choose() {  # the torch to install: one of cuda and system, at most
  [ "$mode" = cpu ] || [ "$mode" = "$1" ] || {
    echo "setup.sh: --cuda and --system-torch exclude each other; give one. $USAGE" >&2; exit 2; }
  mode=$1
}
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda)
      choose cuda
      if [ $# -gt 1 ] && [[ "$2" =~ ^[0-9]+\.[0-9]+$ ]]; then cuda_version=$2; shift; fi ;;
    --cuda=*)
      choose cuda
      cuda_version=${1#--cuda=}
      [[ "$cuda_version" =~ ^[0-9]+\.[0-9]+$ ]] || {
        echo "setup.sh: '$cuda_version' is not a CUDA version; give one like --cuda 12.8." >&2; exit 2; } ;;
    --system-torch) choose system ;;
    --cluster) extras=dev,ui,cluster ;;
    --lmms-eval) lmms_eval=1 ;;
    --dry-run) dry_run=1 ;;
    -h|--help) echo "$USAGE"; sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option '$1'; $USAGE (see --help)." >&2; exit 2 ;;
  esac
  shift
done

run() {
  if [ -n "$dry_run" ]; then echo "$*"; else "$@"; fi
}

if [ -n "$lmms_eval" ]; then
  # a venv of its own: lmms-eval's dependencies would move the main venv's torch and PyAV
  [ "$mode" != system ] || {
    echo "setup.sh: --lmms-eval installs pip's torch into its own venv; give it alone or with --cuda, not with --system-torch." >&2; exit 2; }
  venv=.venv-lmms
  run "$PYTHON" -m venv "$venv"
  run "$venv/bin/python" -m pip install --quiet --upgrade pip
  case "$mode" in
    cpu) run "$venv/bin/python" -m pip install --quiet "torch==${TORCH_VERSION}" ;;
    # torchvision from the same index, so pip never swaps in PyPI's build for another CUDA
    cuda) run "$venv/bin/python" -m pip install --quiet "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
            --index-url "$TORCH_INDEX/cu${cuda_version/./}" ;;
  esac
  # lmms-eval's dependencies must not move torch (the newest torchvision would pull the newest torch)
  run sh -c "echo 'torch==${TORCH_VERSION}' > $venv/torch.txt"
  run "$venv/bin/python" -m pip install --quiet -e ".[lmms]" --constraint "$venv/torch.txt"
  if [ "$mode" = cpu ]; then
    # lmms-eval pulls PyPI's torchvision, a CUDA build: beside CPU torch it fails to load
    # (`operator torchvision::nms does not exist`), and transformers imports it whenever it is installed
    run "$venv/bin/python" -m pip uninstall --quiet --yes torchvision
  fi
  # `--model potwatch` found as lmms-eval finds it (the entry point), and torch still the one installed first
  run "$venv/bin/python" -c 'import torch; from lmms_eval.models import get_model; get_model("potwatch")
assert torch.__version__.split("+")[0] == "'"${TORCH_VERSION}"'", f"torch {torch.__version__} replaced the one installed"
print("lmms-eval is set up in .venv-lmms with potwatch and torch", torch.__version__, "(see docs/lmms-eval.md)")'
  exit 0
fi

venv_options=()
if [ "$mode" = system ]; then
  # Checked for real even in a dry run: reading the system's torch changes nothing.
  if ! system_torch=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    echo "setup.sh: $PYTHON cannot import torch; install your platform's torch first (JetPack's on a Jetson), or run bash setup.sh for the CPU build." >&2
    exit 1
  fi
  if ! "$PYTHON" -c 'import sys, torch; sys.exit(tuple(map(int, torch.__version__.split(".")[:2])) < (2, 4))'; then
    echo "setup.sh: the system's torch is $system_torch and potwatch needs 2.4 or later; install a newer one (a newer JetPack's), or run bash setup.sh --cuda." >&2
    exit 1
  fi
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys, torch; sys.exit(not torch.__file__.startswith(sys.prefix))' 2>/dev/null; then
    echo "setup.sh: .venv has a torch of its own from an earlier set-up, which would hide the system's; remove .venv and run bash setup.sh --system-torch again." >&2
    exit 1
  fi
  venv_options=(--system-site-packages)
fi

run "$PYTHON" -m venv ${venv_options[@]+"${venv_options[@]}"} .venv
run .venv/bin/python -m pip install --quiet --upgrade pip
case "$mode" in
  cpu) run .venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION}" ;;
  cuda) run .venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX/cu${cuda_version/./}" ;;
esac
if [ "$mode" = system ]; then
  # pip must keep the system's torch: a constraint pins it to the version installed
  constraint=.venv/system-torch.txt
  run sh -c "echo 'torch==${system_torch}' > $constraint"
  run .venv/bin/python -m pip install --quiet -e ".[$extras]" --constraint "$constraint"
else
  run .venv/bin/python -m pip install --quiet -e ".[$extras]"
fi
# the compression pass's C loops, built now rather than at the first compression (kernels/native.py)
run .venv/bin/python -c 'from potwatch.kernels import native; print("the compression pass runs in C on the CPU" if native.library() else "setup.sh: no C compiler found (cc, gcc or clang), so compression on the CPU runs on plain torch, about 3x slower; install gcc to speed it up.")'
run .venv/bin/python -c 'import torch; cuda = torch.version.cuda or "none"; print(f"potwatch is set up with torch {torch.__version__} (CUDA {cuda}, GPU found: {torch.cuda.is_available()}): .venv/bin/potwatch --help")'
