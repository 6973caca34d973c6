"""Every Triton kernel against its plain-torch reference, on small random shapes: odd sizes, head_dim
64 / 128 (and 80, not a power of two), float32 and bfloat16. Skipped where triton is not installed.

On the CPU (the default) Triton's interpreter runs the kernels on CPU tensors (TRITON_INTERPRET=1, set
by tests/device.py). With POTWATCH_TEST_DEVICE=cuda the same tests run the compiled kernels on the GPU,
against the torch references run there too. The interpreter runs a chunk's loads before its stores,
so the one in-place hazard only a GPU can show (inside a chunk of `move_rows`, argued in
kernels/move_rows_triton.py) is tested only by a CUDA run (`test_move_rows_shifts_by_one_across_chunks`)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tests.device import KERNEL, ON_CUDA, assert_close, on_device

triton = pytest.importorskip("triton")
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

if not ON_CUDA and not isinstance(triton.language.sum, InterpretedFunction):
    # tests/device.py sets TRITON_INTERPRET=1 for a CPU run before anything imports triton.
    pytest.skip("triton was imported without TRITON_INTERPRET=1; run `TRITON_INTERPRET=1 pytest "
                "tests/test_kernels_triton.py`, or POTWATCH_TEST_DEVICE=cuda on a GPU",
                allow_module_level=True)

from potwatch.compression import capped_cache  # noqa: E402
from potwatch.compression.policies import selection  # noqa: E402
from potwatch.compression.policies.base import VisualTokens  # noqa: E402
from potwatch.kernels import kv_quant, kv_quant_triton, move_rows_triton, tar_similarity_triton  # noqa: E402
from potwatch.kernels.tar_similarity import tar_similarity_reference  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16]


def generator(*seed: int) -> torch.Generator:
    """A CPU generator: the tests draw on the CPU and move to the test device, the same numbers everywhere."""
    return torch.Generator().manual_seed(hash(seed) % (1 << 31))


@contextlib.contextmanager
def torch_path(module):
    """`module`'s plain-torch branch even for CUDA tensors: the kernels' oracle on a GPU run."""
    saved = module.triton_ready
    module.triton_ready = lambda tensor: False
    try:
        yield
    finally:
        module.triton_ready = saved


# --- TaR similarity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads, n, dim", [(1, 1, 64), (3, 77, 64), (2, 130, 128), (2, 33, 80)])
def test_tar_similarity_matches_the_reference(dtype, heads, n, dim):
    g = generator(heads, n, dim)
    keys = on_device((torch.randn(heads, n + 5, dim, generator=g) * 3).to(dtype))[:, 2 : n + 2]  # a strided view
    keys[0, 0] = 0  # a zero key: similarity 0, not NaN
    table = on_device(torch.nn.functional.normalize(torch.randn(19, dim, generator=g), dim=-1))
    slot = on_device(torch.randint(19, (heads, n), generator=g))
    similarity, norm = tar_similarity_triton.tar_similarity(keys, table, slot)
    want_similarity, want_norm = tar_similarity_reference(keys, table, slot)
    assert_close(similarity, want_similarity, KERNEL)
    assert_close(norm, want_norm, KERNEL)


def layer_with_gaps(seed: int, heads: int, dim: int, dtype: torch.dtype) -> VisualTokens:
    """Visual tokens of an odd grid over several frames, with text rows between them (`at` set), as
    the monitor hands over a layer."""
    g = generator(seed)
    frames, rows, cols = 5, 3, 5
    per_frame = rows * cols
    total = 4 + frames * (per_frame + 2)
    at = torch.tensor([4 + f * (per_frame + 2) + i for f in range(frames) for i in range(per_frame)])
    frame = torch.arange(frames).repeat_interleave(per_frame)
    row = (torch.arange(per_frame) // cols).repeat(frames)
    col = (torch.arange(per_frame) % cols).repeat(frames)
    keys = on_device(torch.randn(heads, total, dim, generator=g).to(dtype))
    values = on_device(torch.randn(heads, total, dim, generator=g).to(dtype))
    spread = lambda t: on_device(t.expand(heads, -1).contiguous())  # noqa: E731
    return VisualTokens(keys, values, spread(frame), spread(row), spread(col), at=spread(at))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [64, 128])
def test_tar_scores_through_the_kernel_equal_the_cpu_path(monkeypatch, dtype, dim):
    tokens = layer_with_gaps(dim, heads=3, dim=dim, dtype=dtype)
    in_recent = tokens.frame >= 4
    with torch_path(selection):
        want = selection.tar_scores(tokens, in_recent)
    monkeypatch.setattr(selection, "triton_ready", lambda tensor: True)  # the CUDA branch (interpreted on the CPU)
    got = selection.tar_scores(tokens, in_recent)
    assert_close(got, want, KERNEL)


# --- compaction ---------------------------------------------------------------------------------------


def keep_sets(g: torch.Generator, batch: int, capacity: int, m: int, leading: int = 0) -> torch.Tensor:
    """Ascending keep indices per row; the first `leading` already in place in every row."""
    rest = [torch.randperm(capacity - leading, generator=g)[: m - leading].sort().values + leading
            for _ in range(batch)]
    return torch.stack([torch.cat([torch.arange(leading), r]) for r in rest])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, capacity, m, dim, leading", [
    (1, 1, 1, 64, 0), (3, 200, 131, 64, 0), (2, 150, 149, 128, 10), (4, 97, 40, 80, 3), (2, 64, 0, 64, 0)])
def test_move_rows_matches_the_reference(dtype, batch, capacity, m, dim, leading):
    g = generator(batch, capacity, m, dim)
    rows = on_device(torch.randn(batch, capacity, dim, generator=g).to(dtype))
    keep = on_device(keep_sets(g, batch, capacity, m, leading))
    want = rows.clone()
    with torch_path(capped_cache):
        capped_cache.move_rows(want, keep)
    got = rows.clone()
    move_rows_triton.move_rows(got, keep)
    assert torch.equal(got, want)
    assert torch.equal(got[:, m:], rows[:, m:])  # rows past the kept ones are left alone


def test_move_rows_shifts_by_one_across_chunks():
    """keep = 1, 2, ...: every row reads the one the previous entry writes, across chunk borders."""
    rows = on_device(torch.arange(3 * 300 * 64, dtype=torch.float32).view(3, 300, 64))
    keep = on_device(torch.arange(1, 300).expand(3, -1).contiguous())
    got = rows.clone()
    move_rows_triton.move_rows(got, keep)
    assert torch.equal(got[:, :299], rows[:, 1:])


def test_cache_compaction_dispatches_to_the_kernel(monkeypatch):
    g = generator(7)
    rows = on_device(torch.randn(4, 120, 64, generator=g))
    keep = on_device(keep_sets(g, 4, 120, 70))
    want = rows.clone()
    with torch_path(capped_cache):
        capped_cache.move_rows(want, keep)
    calls = []
    monkeypatch.setattr(capped_cache, "triton_ready", lambda tensor: calls.append(1) or True)
    got = rows.clone()
    capped_cache.move_rows(got, keep)
    assert calls and torch.equal(got, want)


# --- quantisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("batch, heads, n, dim, group", [(1, 2, 37, 128, 32), (2, 3, 5, 64, 16), (1, 1, 17, 80, 16)])
def test_quantize_and_dequantize_match_the_reference_bit_for_bit(dtype, bits, center, batch, heads, n, dim, group):
    g = generator(batch, heads, n, dim, bits)
    outliers = torch.randn(dim, generator=g) * 8  # shared channels, which centring removes
    x = on_device((torch.randn(batch, heads, n, dim, generator=g) + outliers).to(dtype))
    want = kv_quant.quantize_reference(x, bits, group, center)
    got = kv_quant_triton.quantize(x, bits, group, center)
    assert torch.equal(got.data, want.data)
    assert torch.equal(got.scale, want.scale)
    assert (got.mean is None) == (not center)
    if center:
        assert torch.equal(got.mean, want.mean)
    assert torch.equal(kv_quant_triton.dequantize(want), kv_quant.dequantize_reference(want))


@pytest.mark.parametrize("bits, bound", [(8, 0.01), (4, 0.2)])
def test_reference_round_trip_error_is_small(bits, bound):
    """The oracle itself: the error is within half a step per element, and centring helps keys."""
    g = generator(bits)
    x = torch.randn(1, 4, 64, 128, generator=g) + torch.randn(128, generator=g) * 8
    for center in (False, True):
        q = kv_quant.quantize_reference(x, bits, 32, center)
        error = (kv_quant.dequantize_reference(q) - x).abs()
        step = q.scale.repeat_interleave(32, dim=-1)
        assert bool((error <= step / 2 + 1e-5).all())
    centred = kv_quant.dequantize_reference(kv_quant.quantize_reference(x, bits, 32, True)) - x
    plain = kv_quant.dequantize_reference(kv_quant.quantize_reference(x, bits, 32, False)) - x
    assert centred.norm() < plain.norm()
    assert float(centred.norm() / x.norm()) < bound
