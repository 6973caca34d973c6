"""Per-head compaction in place (Triton): rows[b, j] = rows[b, keep[b, j]], the contract and the
test oracle being `move_rows` in compression/capped_cache.py (the CPU path).

Why in place is safe: `keep[b]` is strictly ascending, so keep[b, j] >= j. Each program owns one row
b and one slice of columns (columns never mix, so slices are independent) and walks j in chunks of
CHUNK, front to back. A chunk is loaded whole into registers, a barrier makes every thread's loads
finish before any thread stores, and only then is it written: a store inside chunk c can hit a row a
later entry of the same chunk still has to read (keep = [1, 2] reads row 1 and writes row 1), which
the barrier orders; a store in chunk c lands below row (c + 1) * CHUNK, where no later chunk reads.
Scratch is one chunk of registers; rows already in place are neither read nor written."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 64
COLUMNS_PER_PROGRAM = 64  # several programs per row, so a few (layer, head) rows still fill a GPU


@triton.jit
def _move_rows_kernel(rows_ptr, keep_ptr, m, dim, stride_b, stride_n, stride_kb,
                      CHUNK: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    base = rows_ptr + b * stride_b
    for begin in range(0, m, CHUNK):
        j = begin + tl.arange(0, CHUNK)
        source = tl.load(keep_ptr + b * stride_kb + j, mask=j < m, other=0).to(tl.int64)
        moves = (j < m) & (source != j)
        ok = moves[:, None] & col_ok[None, :]
        chunk = tl.load(base + source[:, None] * stride_n + cols[None, :], mask=ok)
        tl.debug_barrier()  # every load of this chunk lands before any store of it
        tl.store(base + j[:, None].to(tl.int64) * stride_n + cols[None, :], chunk, mask=ok)


def move_rows(rows: torch.Tensor, keep: torch.Tensor) -> None:
    """rows[b, j] = rows[b, keep[b, j]] for j < m, in place; rows [B, capacity, D] with unit column
    stride, keep [B, m] strictly ascending per row."""
    batch, _, dim = rows.shape
    m = keep.shape[1]
    if batch == 0 or m == 0:
        return
    if rows.stride(2) != 1:
        raise ValueError("move_rows needs rows with unit column stride")
    keep = keep.contiguous()
    block_d = min(COLUMNS_PER_PROGRAM, triton.next_power_of_2(dim))
    grid = (batch, triton.cdiv(dim, block_d))
    _move_rows_kernel[grid](rows, keep, m, dim, rows.stride(0), rows.stride(1), keep.stride(0),
                            CHUNK=CHUNK, BLOCK_D=block_d)
