#!/usr/bin/env bash
# The device check (issue 13): the model tests on the GPU, the Triton kernels against their torch
# references, and a quick benchmark on CUDA, with every figure written to one folder.
#
#   bash benchmarks/device_check.sh           # a CUDA GPU when torch finds one, else the CPU check
#   bash benchmarks/device_check.sh --cpu     # the CPU check: the switch off, a few minutes, one thread
#   bash benchmarks/device_check.sh --cuda    # insist on the GPU (stops at once if there is none)
#   PYTHON=python3 bash benchmarks/device_check.sh --install   # a machine with its own CUDA torch:
#       first install potwatch from this tree into that Python (editable, no index, no dependencies;
#       it needs transformers 5.24 and PyAV there already, as wheels if nothing can be fetched)
#   bash benchmarks/device_check.sh --help
#
# On a GPU (at most 8 minutes: each step has its own time limit, 270 + 60 + 130 s):
#   1. the model tests with POTWATCH_TEST_DEVICE=cuda (float32, TF32 off; see tests/device.py), the
#      Triton kernels' tests compiled, and how much of each tolerance they used (deviations.json);
#   2. benchmarks/kernels_bench.py: each kernel against its reference, ms, GB/s, speed-up (kernels.json);
#   3. potwatch bench --quick on CUDA for tar_van, keep_merge and tar_van@8bit: compression against
#      copy_, ms/frame flatness, torch.cuda.max_memory_allocated against weights + cap (bench.json,
#      bench.md);
#   then the figures, printed and in summary.md. With machine.txt and tests.txt, seven files at most.
# On the CPU: a cut of the same tests with the switch off, the kernel bench's "skipped" line, and a
# short CPU bench; it proves the script and its figures work where no GPU is lent.
#
# Figures go to $OUT when set (the device machine's return folder), else to
# benchmarks/reference/device/<date>/; copy them into benchmarks/reference/ to keep them.
# Exit status: 0 when every step passed, 1 when one failed (the figures of the others are still written).
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=auto
INSTALL=0
for argument in "$@"; do
    case "$argument" in
        -h|--help) sed -n '2,/^set /p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        --cpu) MODE=cpu ;;
        --cuda) MODE=cuda ;;
        --install) INSTALL=1 ;;
        *) echo "device_check.sh: unknown option '$argument'; see bash benchmarks/device_check.sh --help" >&2; exit 2 ;;
    esac
done

PYTHON=${PYTHON:-.venv/bin/python}
if [ ! -x "$PYTHON" ]; then
    echo "device_check.sh: $PYTHON is missing; run bash setup.sh first, or set PYTHON to a Python with potwatch" >&2
    exit 2
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
unset POTWATCH_TEST_DEVICE
if [ "$INSTALL" = 1 ] && ! "$PYTHON" -c 'import potwatch.app.cli' 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-index -e . || exit 2
fi
if ! problem=$("$PYTHON" -c '
import transformers
from packaging.version import Version
import potwatch.app.cli
if not Version("5.24") <= Version(transformers.__version__) < Version("5.25"):
    raise SystemExit(f"potwatch needs transformers 5.24; this Python has {transformers.__version__}")
' 2>&1); then
    echo "device_check.sh: $PYTHON cannot run potwatch: $(echo "$problem" | tail -n 1)" >&2
    echo "  (bash setup.sh makes .venv; for another Python add --install, with transformers 5.24 and PyAV in it)" >&2
    exit 2
fi
has_cuda() { "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
if [ "$MODE" = auto ]; then
    if has_cuda; then MODE=cuda; else MODE=cpu; echo "device_check: torch finds no CUDA GPU here: the CPU check"; fi
elif [ "$MODE" = cuda ] && ! has_cuda; then
    echo "device_check.sh: --cuda but torch finds no CUDA GPU here; run with --cpu for the CPU check" >&2
    exit 2
fi

FIGURES=${OUT:-benchmarks/reference/device/$(date +%Y-%m-%d)}
mkdir -p "$FIGURES"
FIGURES=$(cd "$FIGURES" && pwd)
FAILED=()
step() { echo; echo "== device_check ($MODE): $* =="; }

# The tests a GPU run must pass, the most telling first: exactness, kernels, then whole sessions. Left
# out: tests that are CPU work whatever the switch (browser UI, PyAV files, CLI subprocesses, the soak).
GPU_TESTS=(
    tests/test_device_check.py
    tests/test_exactness.py tests/test_family_exactness.py tests/test_positions.py
    tests/test_eviction_oracle.py
    tests/test_kernels_triton.py
    tests/test_capped_cache.py tests/test_quantized_cache.py tests/test_attention_policies.py
    tests/test_family_query_capture.py tests/test_keep_merge.py tests/test_head_budgets.py
    tests/test_session_cap.py tests/test_family_session.py tests/test_model_loading.py
    "tests/test_stream_faults.py::test_ctrl_c_inside_a_forward_leaves_the_session_as_it_was"
    "tests/test_stream_faults.py::test_out_of_memory_once_retries_in_pieces_with_the_same_result"
    "tests/test_stream_faults.py::test_deepstack_blocks_retried_in_pieces_give_the_same_result"
    "tests/test_stream_faults.py::test_out_of_memory_that_persists_is_reported_and_the_session_keeps_what_it_had"
    "tests/test_stream_faults.py::test_out_of_memory_while_answering_leaves_no_half_turn"
    "tests/test_stream_faults.py::test_cli_stops_the_stream_on_persistent_out_of_memory_and_answers_from_what_it_had"
    tests/test_tiny_model.py tests/test_concurrency.py tests/test_family_cli.py
)
# The CPU check: the switch itself, the exactness oracles and the kernels under the interpreter.
CPU_TESTS=(
    tests/test_device_check.py tests/test_exactness.py tests/test_family_exactness.py tests/test_kernels_triton.py
    tests/test_capped_cache.py
)

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "mode: $MODE"
    if commit=$(git rev-parse --short HEAD 2>/dev/null); then
        git diff --quiet HEAD 2>/dev/null || commit="$commit+uncommitted"
        echo "commit: $commit"
    else
        echo "commit: ? (no git here)"
    fi
    "$PYTHON" -c 'import platform, torch, transformers
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "transformers", transformers.__version__)'
    "$PYTHON" -c 'import triton; print("triton", triton.__version__)' 2>/dev/null || echo "triton: not installed"
    if [ "$MODE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null; fi
} > "$FIGURES/machine.txt"
cat "$FIGURES/machine.txt"

step "tests"
if [ "$MODE" = cuda ]; then
    export POTWATCH_TEST_DEVICE=cuda
    tests=()
    for test in "${GPU_TESTS[@]}"; do [ -e "${test%%::*}" ] && tests+=("$test"); done
    limit=270
else
    export POTWATCH_TEST_DEVICE=cpu OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    tests=("${CPU_TESTS[@]}")
    limit=300
fi
# SIGINT at the limit: pytest stops, still prints what passed and failed, and the deviations so far.
# --maxfail rather than -x: one tolerance missed should not hide the rest of a run that is rarely possible.
POTWATCH_TEST_DEVIATIONS="$FIGURES/deviations.json" timeout --signal=INT --kill-after=15 "$limit" \
    "$PYTHON" -m pytest -q -p no:cacheprovider --maxfail=25 --durations=10 "${tests[@]}" 2>&1 | tee "$FIGURES/tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || FAILED+=("tests")
unset POTWATCH_TEST_DEVICE

step "kernels against their references"
rm -f "$FIGURES/kernels.json"
timeout --kill-after=10 60 "$PYTHON" benchmarks/kernels_bench.py --tokens 20000 --repeats 10 --json "$FIGURES/kernels.json" \
    || FAILED+=("kernels bench")

step "quick bench"
scratch=$(mktemp -d)
if [ "$MODE" = cuda ]; then
    bench=(--quick --policies tar_van,keep_merge --kv-bits 8 --device cuda)
    limit=130
else
    bench=(--quick --cost-only --policies tar_van --kv-bits 8 --frames 120 --full-cache-frames 40 --device cpu --threads 1)
    limit=120
fi
# The bench's plots and series stay behind: a device machine hands back at most 8 files.
timeout --kill-after=10 "$limit" "$PYTHON" -m potwatch.app.cli bench "${bench[@]}" --out "$scratch" > /dev/null
status=$?
rm -f "$FIGURES/bench.json" "$FIGURES/bench.md"
cp "$scratch/bench.json" "$scratch/bench.md" "$FIGURES/" 2>/dev/null
rm -rf "$scratch"
[ "$status" -eq 0 ] || FAILED+=("bench")

step "figures"
"$PYTHON" benchmarks/device_summary.py "$FIGURES"
echo
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "device_check ($MODE): FAILED: ${FAILED[*]}; figures in $FIGURES"
    exit 1
fi
echo "device_check ($MODE): passed; figures in $FIGURES"
