"""Int8 / int4 quantise and dequantise of K/V rows (Triton), bit-exact with kernels/kv_quant.py's
reference, under the interpreter and compiled (see AS_WRITTEN). One program per block of tokens of
one batch row: it sums the heads for the key mean, then quantises head by head, so each element is
read twice at most and no float32 copy of the rows exists. Channels are handled as (even, odd) pairs,
which is how int4 packs two codes per byte. The quantised cache uses it on CUDA
(compression/quantized_kv.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from potwatch.kernels.kv_quant import QuantizedKV, check_layout, qmax

TOKENS_PER_PROGRAM = 16
# Bit-exact with the torch reference on a GPU too: no multiply-add fused into one rounding (the
# compiler's default; torch rounds the product, then the sum), and divisions rounded as IEEE says
# (`tl.math.div_rn`: a plain `/` compiles to an approximate division, up to 2 ulp off). The
# interpreter ignores the option and divides exactly either way.
AS_WRITTEN = {"enable_fp_fusion": False}


@triton.jit
def _round_bf16(x):
    """float32 -> nearest bfloat16 value (ties to even), still as float32. Spelled out because the
    interpreter's float32 -> bfloat16 cast truncates; on a GPU this equals the hardware cast."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _to_storage(x, ROUND_BF16: tl.constexpr):
    if ROUND_BF16:
        x = _round_bf16(x)
    return x


@triton.jit
def _per_pair(group_values, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, HALF_GROUP: tl.constexpr):
    """[BLOCK_N, GROUPS] -> [BLOCK_N, GROUPS * HALF_GROUP]: each group's value on each of its pairs."""
    wide = tl.broadcast_to(group_values[:, :, None], (BLOCK_N, GROUPS, HALF_GROUP))
    return tl.reshape(wide, (BLOCK_N, GROUPS * HALF_GROUP))


@triton.jit
def _quantize_kernel(x_ptr, data_ptr, scale_ptr, mean_ptr, heads, n, dim,
                     sxb, sxh, sxn, sdb, sdh, sdn, ssb, ssh, ssn, smb, smn,
                     QMAX: tl.constexpr, BITS: tl.constexpr, CENTER: tl.constexpr, ROUND_BF16: tl.constexpr,
                     BLOCK_N: tl.constexpr, HALF_D: tl.constexpr, HALF_GROUP: tl.constexpr):
    GROUPS: tl.constexpr = HALF_D // HALF_GROUP
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    p = tl.arange(0, HALF_D)
    ok = (t < n)[:, None] & (p < dim // 2)[None, :]
    even = x_ptr + b * sxb + t[:, None] * sxn + 2 * p[None, :]
    mean_e = tl.zeros((BLOCK_N, HALF_D), dtype=tl.float32)
    mean_o = tl.zeros((BLOCK_N, HALF_D), dtype=tl.float32)
    if CENTER:
        for h in range(heads):
            mean_e += tl.load(even + h * sxh, mask=ok, other=0.0).to(tl.float32)
            mean_o += tl.load(even + h * sxh + 1, mask=ok, other=0.0).to(tl.float32)
        count = tl.full((BLOCK_N, HALF_D), heads, tl.float32)
        mean_e = _to_storage(tl.math.div_rn(mean_e, count), ROUND_BF16).to(mean_ptr.dtype.element_ty).to(tl.float32)
        mean_o = _to_storage(tl.math.div_rn(mean_o, count), ROUND_BF16).to(mean_ptr.dtype.element_ty).to(tl.float32)
        mean_at = mean_ptr + b * smb + t[:, None] * smn + 2 * p[None, :]
        tl.store(mean_at, mean_e.to(mean_ptr.dtype.element_ty), mask=ok)
        tl.store(mean_at + 1, mean_o.to(mean_ptr.dtype.element_ty), mask=ok)
    g = tl.arange(0, GROUPS)
    group_ok = (t < n)[:, None] & (g < dim // (2 * HALF_GROUP))[None, :]
    for h in range(heads):
        e = tl.load(even + h * sxh, mask=ok, other=0.0).to(tl.float32) - mean_e
        o = tl.load(even + h * sxh + 1, mask=ok, other=0.0).to(tl.float32) - mean_o
        amax_e = tl.max(tl.reshape(tl.abs(e), (BLOCK_N, GROUPS, HALF_GROUP)), axis=2)
        amax_o = tl.max(tl.reshape(tl.abs(o), (BLOCK_N, GROUPS, HALF_GROUP)), axis=2)
        largest = tl.maximum(amax_e, amax_o)
        scale = _to_storage(tl.math.div_rn(largest, tl.full(largest.shape, QMAX, tl.float32)), ROUND_BF16)
        scale = scale.to(scale_ptr.dtype.element_ty)
        tl.store(scale_ptr + b * ssb + h * ssh + t[:, None] * ssn + g[None, :], scale, mask=group_ok)
        scale = scale.to(tl.float32)
        safe = _per_pair(tl.where(scale > 0, scale, 1.0), BLOCK_N, GROUPS, HALF_GROUP)
        q_e = tl.minimum(tl.maximum(tl.floor(tl.math.div_rn(e, safe) + 0.5), -QMAX), QMAX).to(tl.int32)
        q_o = tl.minimum(tl.maximum(tl.floor(tl.math.div_rn(o, safe) + 0.5), -QMAX), QMAX).to(tl.int32)
        row = data_ptr + b * sdb + h * sdh + t[:, None] * sdn
        if BITS == 8:
            tl.store(row + 2 * p[None, :], q_e.to(tl.int8), mask=ok)
            tl.store(row + 2 * p[None, :] + 1, q_o.to(tl.int8), mask=ok)
        else:
            tl.store(row + p[None, :], ((q_e & 15) | ((q_o & 15) << 4)).to(tl.uint8), mask=ok)


@triton.jit
def _signed_nibble(v):
    return tl.where(v >= 8, v - 16, v)


@triton.jit
def _dequantize_kernel(data_ptr, scale_ptr, mean_ptr, out_ptr, heads, n, dim,
                       sdb, sdh, sdn, ssb, ssh, ssn, smb, smn, sob, soh, son,
                       BITS: tl.constexpr, CENTER: tl.constexpr, ROUND_BF16: tl.constexpr,
                       BLOCK_N: tl.constexpr, HALF_D: tl.constexpr, HALF_GROUP: tl.constexpr):
    GROUPS: tl.constexpr = HALF_D // HALF_GROUP
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    p = tl.arange(0, HALF_D)
    ok = (t < n)[:, None] & (p < dim // 2)[None, :]
    mean_e = tl.zeros((BLOCK_N, HALF_D), dtype=tl.float32)
    mean_o = tl.zeros((BLOCK_N, HALF_D), dtype=tl.float32)
    if CENTER:
        mean_at = mean_ptr + b * smb + t[:, None] * smn + 2 * p[None, :]
        mean_e = tl.load(mean_at, mask=ok, other=0.0).to(tl.float32)
        mean_o = tl.load(mean_at + 1, mask=ok, other=0.0).to(tl.float32)
    g = tl.arange(0, GROUPS)
    group_ok = (t < n)[:, None] & (g < dim // (2 * HALF_GROUP))[None, :]
    for h in range(heads):
        row = data_ptr + b * sdb + h * sdh + t[:, None] * sdn
        if BITS == 8:
            q_e = tl.load(row + 2 * p[None, :], mask=ok, other=0).to(tl.int32)
            q_o = tl.load(row + 2 * p[None, :] + 1, mask=ok, other=0).to(tl.int32)
        else:
            byte = tl.load(row + p[None, :], mask=ok, other=0).to(tl.int32)
            q_e = _signed_nibble(byte & 15)
            q_o = _signed_nibble(byte >> 4)
        scale = tl.load(scale_ptr + b * ssb + h * ssh + t[:, None] * ssn + g[None, :], mask=group_ok, other=0.0)
        scale = _per_pair(scale.to(tl.float32), BLOCK_N, GROUPS, HALF_GROUP)
        out = out_ptr + b * sob + h * soh + t[:, None] * son + 2 * p[None, :]
        value_e = _to_storage(q_e.to(tl.float32) * scale + mean_e, ROUND_BF16)
        value_o = _to_storage(q_o.to(tl.float32) * scale + mean_o, ROUND_BF16)
        tl.store(out, value_e.to(out_ptr.dtype.element_ty), mask=ok)
        tl.store(out + 1, value_o.to(out_ptr.dtype.element_ty), mask=ok)


def _blocks(dim: int, group: int) -> dict:
    half_d = max(triton.next_power_of_2(dim // 2), group // 2)
    return {"BLOCK_N": TOKENS_PER_PROGRAM, "HALF_D": half_d, "HALF_GROUP": group // 2}


def quantize(x: torch.Tensor, bits: int = 8, group: int = 32, center: bool = False) -> QuantizedKV:
    """Same contract as `kv_quant.quantize_reference`; rows [batch, heads, n, D] with unit column stride."""
    check_layout(x, bits, group)
    if x.stride(-1) != 1:
        x = x.contiguous()
    batch, heads, n, dim = x.shape
    data = torch.empty(batch, heads, n, dim if bits == 8 else dim // 2,
                       dtype=torch.int8 if bits == 8 else torch.uint8, device=x.device)
    scale = torch.empty(batch, heads, n, dim // group, dtype=x.dtype, device=x.device)
    mean = torch.empty(batch, n, dim, dtype=x.dtype, device=x.device) if center else None
    if x.numel():
        mean_arg = mean if center else scale  # never read when not centring
        grid = (batch, triton.cdiv(n, TOKENS_PER_PROGRAM))
        _quantize_kernel[grid](x, data, scale, mean_arg, heads, n, dim, *x.stride()[:3], *data.stride()[:3],
                               *scale.stride()[:3], *mean_arg.stride()[:2],
                               QMAX=qmax(bits), BITS=bits, CENTER=center, ROUND_BF16=x.dtype == torch.bfloat16,
                               **_blocks(dim, group), **AS_WRITTEN)
    return QuantizedKV(data, scale, mean, bits, group)


def dequantize(q: QuantizedKV) -> torch.Tensor:
    """Same contract as `kv_quant.dequantize_reference`."""
    batch, heads, n = q.data.shape[:3]
    dim = q.scale.shape[-1] * q.group
    out = torch.empty(batch, heads, n, dim, dtype=q.dtype, device=q.data.device)
    if out.numel():
        mean_arg = q.mean if q.mean is not None else q.scale
        grid = (batch, triton.cdiv(n, TOKENS_PER_PROGRAM))
        _dequantize_kernel[grid](q.data, q.scale, mean_arg, out, heads, n, dim, *q.data.stride()[:3],
                                 *q.scale.stride()[:3], *mean_arg.stride()[:2], *out.stride()[:3],
                                 BITS=q.bits, CENTER=q.mean is not None, ROUND_BF16=q.dtype == torch.bfloat16,
                                 **_blocks(dim, q.group), **AS_WRITTEN)
    return out
