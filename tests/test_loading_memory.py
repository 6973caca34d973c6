"""Loading as a device user needs it: weights go from the file to the device without a whole copy in host
memory (measured here on the CPU, in a fresh process), and the dtype is one the device computes in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from potwatch.errors import ModelLoadError
from potwatch.models import registry
from potwatch.models.registry import load_model, resolve_dtype, save_demo

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")  # a device object needs no GPU: the capability is passed in
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def demo_2b_folder(tmp_path_factory) -> Path:
    """demo-2b as a checkpoint: Qwen2-VL-2B's language-model geometry, 72 MB of float32 weights."""
    return save_demo("demo-2b", tmp_path_factory.mktemp("checkpoints") / "demo-2b")


def load_figures(folder: Path, dtype: str) -> tuple[float, float, str]:
    """(weights on disk, peak RSS the load added) in MB, and the dtype loaded, from a fresh process."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "load_memory.py"), str(folder), "--device", "cpu", "--dtype", dtype],
        capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = result.stdout.strip().splitlines()[-1]
    weights = float(line.split("weights ")[1].split(" MB")[0])
    added = float(line.split("peak added by the load ")[1].split(" MB")[0])
    return weights, added, line.split("(")[-1]


@pytest.mark.parametrize("dtype, bound", [("float32", 1.25), ("bfloat16", 1.5)])
def test_loading_takes_about_the_weights_size_in_host_memory(demo_2b_folder, dtype, bound):
    """Measured (VmHWM, one thread, 71.8 MB of float32 weights): float32 adds a 38-59 MB peak (the file
    is mapped, not copied); bfloat16 adds 119 MB, the mapped file's pages read once plus the 36 MB
    converted model. A whole copy in memory (transformers' disable_mmap) adds 153 MB to either. The
    bound: `bound` x weights + 32 MB."""
    weights, added, loaded = load_figures(demo_2b_folder, dtype)
    assert weights > 70 and loaded.startswith(f"torch.{dtype}")
    assert added < bound * weights + 32, (added, weights)


def test_the_default_dtype_is_the_models_own_on_cuda_and_float16_where_bfloat16_is_missing():
    assert resolve_dtype(None, CUDA, torch.bfloat16, bf16_supported=True) == torch.bfloat16
    assert resolve_dtype(None, CUDA, torch.bfloat16, bf16_supported=False) == torch.float16
    assert resolve_dtype(None, CUDA, torch.float16, bf16_supported=False) == torch.float16
    assert resolve_dtype(None, CUDA, torch.float32, bf16_supported=False) == torch.float32
    assert resolve_dtype(None, CUDA, None, bf16_supported=False) == torch.float32  # a demo: built in float32
    assert resolve_dtype(None, CPU, torch.bfloat16) == torch.float32  # float32 is faster on the CPU


def test_asking_for_bfloat16_on_a_gpu_without_it_is_one_sentence():
    assert resolve_dtype("bf16", CUDA, torch.float32, bf16_supported=True) == torch.bfloat16
    assert resolve_dtype("bfloat16", CPU, torch.float32) == torch.bfloat16  # the CPU has it
    assert resolve_dtype("float16", CUDA, torch.bfloat16, bf16_supported=False) == torch.float16
    with pytest.raises(ModelLoadError) as caught:
        resolve_dtype("bfloat16", CUDA, torch.bfloat16, bf16_supported=False)
    assert str(caught.value) == ("Device cuda has no native bfloat16 (it needs a GPU of compute capability 8.0 or "
                                 "later); use --dtype float16 or --dtype float32.")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_gpu_here_is_asked_whether_it_has_bfloat16():
    major, _ = torch.cuda.get_device_capability(0)
    assert registry.device_has_bf16(torch.device("cuda:0")) == (major >= 8 or bool(torch.version.hip))


def test_loading_a_checkpoint_without_accelerate_says_what_to_install(tmp_path, monkeypatch):
    folder = save_demo("demo", tmp_path / "demo")
    real = registry.importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None if name == "accelerate" else real(name))
    with pytest.raises(ModelLoadError, match="needs the accelerate package; run .venv/bin/pip install accelerate"):
        load_model(str(folder), device="cpu")
