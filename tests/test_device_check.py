"""The test device switch and the device check script: the shared models and a session's cache live on
the device POTWATCH_TEST_DEVICE names, a CPU run hides the GPU and a CUDA run turns TF32 off, a switch
this machine cannot honour stops the run in one line, `assert_close` names what it saw, and
benchmarks/device_check.sh is there, runs --help, and its figures render (the script itself runs on a
GPU or by hand: `bash benchmarks/device_check.sh --cpu`, a few minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from potwatch.app.cli import main
from potwatch.compression.mem_cap import format_bytes
from potwatch.bench.report import markdown_report
from potwatch.streaming.session import StreamSession
from tests.conftest import random_frames
from tests.device import ON_CUDA, SWITCH, TEST_DEVICE, Tolerance, assert_close
from tests.families import FAMILY_DEMOS, family_adapter

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"


def test_the_shared_models_and_a_sessions_cache_live_on_the_test_device(demo_adapter):
    for adapter in (demo_adapter, *(family_adapter(name) for name in FAMILY_DEMOS)):
        assert adapter.device == TEST_DEVICE and adapter.dtype == torch.float32, adapter.name
        assert all(p.device == TEST_DEVICE for p in adapter.model.parameters()), adapter.name
    session = StreamSession(demo_adapter, mem_cap="400kB", max_new_tokens=2)
    session.feed(random_frames(4, seed=1))
    session.ask("What is there?")
    assert {tensor.device for tensor in session.cache.storage.values()} == {TEST_DEVICE}


def test_the_run_is_set_up_for_its_device():
    if ON_CUDA:  # float32 in full: no TF32 in matmuls or convolutions; compiled Triton
        assert torch.cuda.is_available()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert os.environ.get("TRITON_INTERPRET", "0") != "1"
    else:  # nothing lands on a GPU by default, not even in a subprocess; Triton interpreted
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and not torch.cuda.is_available()
        assert os.environ["TRITON_INTERPRET"] == "1"


@pytest.mark.parametrize("switch", ["cuda", "mps"])
def test_a_switch_this_machine_cannot_honour_stops_the_run_in_one_line(switch):
    if switch == "cuda" and ON_CUDA:
        pytest.skip("this run has a GPU")
    environment = {**os.environ, SWITCH: switch}  # a CPU run's hidden GPU stays hidden in the child
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_mem_cap.py"],
                          cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 4 and len(lines) == 1 and lines[0].startswith(f"ERROR: {SWITCH}={switch} "), lines


def test_assert_close_passes_within_the_tolerance_and_names_what_it_saw():
    tolerance = Tolerance("SELFTEST", 1e-5, "this test's own")  # not one the run's summary reports
    assert_close(torch.zeros(3, device=TEST_DEVICE), torch.full((3,), 0.5e-5), tolerance, rtol=0)
    with pytest.raises(AssertionError, match=r"SELFTEST on .*: max \|difference\| 0\.001 over atol 1e-05"):
        assert_close(torch.zeros(3), torch.tensor([0.0, 0.0, 1e-3]), tolerance, rtol=0)
    with pytest.raises(AssertionError, match="shapes"):
        assert_close(torch.zeros(3), torch.zeros(1), tolerance)  # allclose alone would broadcast


def test_the_device_check_script_is_there_and_explains_itself():
    assert os.access(SCRIPT, os.X_OK)
    done = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "at most 8 minutes" in done.stdout and "--cpu" in done.stdout, done.stderr
    wrong = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 2 and "unknown option '--fast'" in wrong.stderr


def test_the_device_figures_render_from_a_real_bench_run(tmp_path):
    """A short bench on the test device; on the CPU, with the GPU memory figures a CUDA run adds set by
    hand: the bench's table and the device summary both show them."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from device_summary import summary
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    bench = tmp_path / "run"
    assert main(["bench", "--model", "demo", "--frames", "8", "--mem-cap", "400kB", "--cost-only", "--threads", "1",
                 "--policies", "tar_van", "--kv-bits", "16", "--device", str(TEST_DEVICE), "--out", str(bench)]) == 0
    results = json.loads((bench / "bench.json").read_text())
    memory = results["cost"]["tar_van"]["gpu_memory"]
    if ON_CUDA:  # measured: the weights and the cache are on the GPU, so the peak holds both
        assert memory["peak_allocated_bytes"] >= memory["weights_bytes"] + memory["cache_bytes"] > 0
        expected_row = f"| tar_van | {format_bytes(memory['peak_allocated_bytes'])} |"
    else:
        assert all(figures["gpu_memory"] is None for figures in results["cost"].values())  # no GPU: no figure
        results["cost"]["tar_van"]["gpu_memory"] = memory = {
            "device": "a GPU", "peak_allocated_bytes": 3_000_000, "weights_bytes": 1_000_000, "cache_bytes": 400_000,
            "cap_bytes": 400_000, "beyond_weights_and_cache_bytes": 1_600_000,
            "peak_over_weights_and_cap": 3_000_000 / 1_400_000,
        }
        expected_row = "| tar_van | 3.00 MB | 1.00 MB | 400.00 kB | 1.60 MB | 2.14 |"
    assert expected_row in markdown_report(results)
    (tmp_path / "bench.json").write_text(json.dumps(results))  # where device_check.sh puts it
    (tmp_path / "deviations.json").write_text(json.dumps({"device": "cuda:0", "tolerances": {
        "EXACT": {"atol": 1e-4, "max_abs_difference": 2e-6, "max_share_of_tolerance": 0.02, "comparisons": 7}}}))
    text = "\n".join(summary(tmp_path))
    assert "EXACT: max |difference| 2e-06 (atol 1e-04), at most 2.0% of the tolerance, 7 comparisons" in text
    assert "kernels: not measured" in text
    assert "tar_van: ms/frame" in text and f"= {memory['peak_over_weights_and_cap']:.3g}x" in text
