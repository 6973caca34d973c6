"""Re-rotating cached keys adds no memory the cap does not see: it turns them in place, a chunk of tokens
at a time, with float32 angles reduced modulo 2*pi so that shifts of millions of positions stay exact."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from potwatch.kernels import rope_shift
from potwatch.kernels.rope_shift import (
    DEVICE_ROTATE_SCRATCH_BYTES,
    ROTATE_SCRATCH_BYTES,
    SCRATCH_BYTES_PER_ELEMENT,
    move_rotary_,
    rotation_chunk_tokens,
    shift_rotary,
    shift_rotary_,
)

ROOT = Path(__file__).resolve().parents[1]
HEAD_DIM = 128
INV_FREQ = 1.0 / (1e6 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM))  # Qwen2-VL's theta
SECTION = torch.arange(HEAD_DIM // 2) % 3  # every position row drives some frequencies


def exact_rotation(keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The rotation in float64 throughout (angle error about |delta| * 1e-16 rad): the reference."""
    angle = delta.double()[SECTION].permute(1, 2, 0) * INV_FREQ.double()
    work = keys.double()
    first, second = work[..., : HEAD_DIM // 2], work[..., HEAD_DIM // 2 :]
    return torch.cat((first * angle.cos() - second * angle.sin(), second * angle.cos() + first * angle.sin()), -1)


def random_shifts(largest: float, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return ((torch.rand(3, 2, n, generator=generator, dtype=torch.float64) * 2 - 1) * largest).round().long()


@pytest.mark.parametrize("largest", [1e3, 1e6, 1e9])
def test_rotation_matches_float64_for_shifts_up_to_a_billion_positions(largest):
    """Measured (4096 tokens, keys ~ N(0, 1)): float32 keys err 6-7e-7 at every size, where angles formed
    in float32 err 1e-4 at 1e3, 1e-1 at 1e6 and 8.6 at 1e9; bf16 and fp16 keys err exactly their own
    rounding of the exact result (1.5e-2, 1.9e-3)."""
    n = 4096
    delta = random_shifts(largest, n, seed=int(largest) % 97)
    keys = torch.randn(2, n, HEAD_DIM, generator=torch.Generator().manual_seed(1))
    assert (shift_rotary(keys, delta, INV_FREQ, SECTION).double() - exact_rotation(keys, delta)).abs().max() < 2e-6
    for dtype in (torch.bfloat16, torch.float16):
        low = keys.to(dtype)
        exact = exact_rotation(low, delta)
        rounding = (exact.to(dtype).double() - exact).abs().max()
        error = (shift_rotary(low, delta, INV_FREQ, SECTION).double() - exact).abs().max()
        assert error <= 1.01 * rounding, (dtype, float(error), float(rounding))


def test_in_place_rotation_in_many_chunks_equals_one_pass(monkeypatch):
    """A strided slice of a cache block turns in place; the chunking changes nothing (the chunks here
    hold 3 tokens, and 100 is no multiple of 3), and `move_rotary_` equals shifting by new - old."""
    torch.manual_seed(0)
    block = torch.randn(2, 3, 128, HEAD_DIM)  # [layers, heads, capacity, head_dim]
    keys = block[1, :, :100]
    old = torch.randint(0, 10_000, (3, 3, 100))
    new = torch.randint(0, 100, (3, 3, 100))
    whole = shift_rotary(keys, new - old, INV_FREQ, SECTION)
    original, untouched = keys.clone(), block[1, :, 100:].clone()
    monkeypatch.setattr(rope_shift, "ROTATE_SCRATCH_BYTES", 3 * 3 * HEAD_DIM * SCRATCH_BYTES_PER_ELEMENT)
    assert rope_shift.rotation_chunk_tokens(3, HEAD_DIM) == 3
    address = keys.data_ptr()
    move_rotary_(keys, old, new, INV_FREQ, SECTION)
    assert keys.data_ptr() == address and torch.equal(keys, whole)
    assert torch.equal(block[1, :, 100:], untouched)
    shift_rotary_(keys, old - new, INV_FREQ, SECTION)  # and back where they were
    assert torch.allclose(keys, original, atol=2e-6)


@pytest.mark.parametrize("device, scratch", [("cpu", ROTATE_SCRATCH_BYTES), ("cuda", DEVICE_ROTATE_SCRATCH_BYTES)])
@pytest.mark.parametrize("heads, head_dim", [(2, 128), (8, 128), (3, 64), (2, 16), (64, 256)])
def test_a_chunks_scratch_is_bounded_by_construction(heads, head_dim, device, scratch):
    chunk = rotation_chunk_tokens(heads, head_dim, device)
    assert chunk >= 1 and chunk * heads * head_dim * SCRATCH_BYTES_PER_ELEMENT <= scratch
    assert scratch <= 32 << 20


def test_moving_a_64MB_layer_adds_a_few_MB_of_peak_memory():
    """Measured in a fresh process (VmHWM, one thread): the move adds about 7 MB whatever the layer's
    size (64 MB to 256 MB of keys), the code paged in and one chunk's scratch; the float64 copies it
    made before added 908 MB for this 64 MB layer."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "rotation_memory.py"), "65536", "2", "128"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    added = float(result.stdout.split("move ")[1].split(" MB")[0])
    assert added < 16, result.stdout
