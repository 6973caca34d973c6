"""Fused TaR similarity (Triton): each key row is read once, its table row looked up in registers, and
one similarity (plus the key's norm) written, with no [N, D] table lookup in memory and no float32
copy of 16-bit keys. Oracle: `tar_similarity.tar_similarity_reference`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from potwatch.kernels.tar_similarity import NORM_FLOOR

ROWS_PER_PROGRAM = 32


@triton.jit
def _tar_similarity_kernel(keys_ptr, table_ptr, slot_ptr, sim_ptr, norm_ptr, n, dim,
                           stride_kh, stride_kn, stride_kd, stride_sh, stride_sn, stride_t,
                           norm_floor, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    head = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n
    ok = row_ok[:, None] & (cols[None, :] < dim)
    key = tl.load(keys_ptr + head * stride_kh + rows[:, None] * stride_kn + cols[None, :] * stride_kd,
                  mask=ok, other=0.0).to(tl.float32)
    slot = tl.load(slot_ptr + head * stride_sh + rows * stride_sn, mask=row_ok, other=0).to(tl.int64)
    mean = tl.load(table_ptr + slot[:, None] * stride_t + cols[None, :], mask=ok, other=0.0)
    dot = tl.sum(key * mean, axis=1)
    norm = tl.sqrt(tl.sum(key * key, axis=1))
    out = head * n + rows
    tl.store(sim_ptr + out, dot / tl.maximum(norm, norm_floor), mask=row_ok)
    tl.store(norm_ptr + out, norm, mask=row_ok)


def tar_similarity(keys: torch.Tensor, table: torch.Tensor, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `tar_similarity_reference`: keys [heads, N, D] (any strides), table [T, D]
    float32 with unit column stride, slot [heads, N]; returns float32 (similarity, norm) [heads, N]."""
    heads, n, dim = keys.shape
    table = table.float()
    if table.stride(1) != 1:
        table = table.contiguous()
    similarity = torch.empty(heads, n, dtype=torch.float32, device=keys.device)
    norm = torch.empty_like(similarity)
    if heads and n:
        grid = (heads, triton.cdiv(n, ROWS_PER_PROGRAM))
        _tar_similarity_kernel[grid](keys, table, slot, similarity, norm, n, dim,
                                     *keys.stride(), *slot.stride(), table.stride(0), NORM_FLOOR,
                                     BLOCK_N=ROWS_PER_PROGRAM, BLOCK_D=triton.next_power_of_2(dim))
    return similarity, norm
