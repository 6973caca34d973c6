"""Int8 / int4 K/V with per-group scales, the plain-torch reference (CPU path and test oracle) for
kernels/kv_quant_triton.py. The quantised cache (`--kv-bits 8|4`, compression/quantized_kv.py) stores
K/V this way so the same byte cap holds more tokens.

As in TaDA, keys are quantised after subtracting the per-token mean across heads (kept in the input's
16-bit dtype): that mean carries the outlier channels all heads share, so the deviations left are
small and need no separate outlier handling. Values are quantised as they are. Each group of `group`
channels of one (head, token) gets a symmetric scale absmax / qmax, stored in the input dtype; codes
round half up. Every step is spelled out (heads summed in order, float32 throughout, one rounding to
the storage dtype) so the kernel can match it bit for bit."""

from __future__ import annotations

from dataclasses import dataclass

import torch

BITS = (8, 4)


@dataclass
class QuantizedKV:
    """K or V rows [batch, heads, n, D] in `bits` bits. `data`: int8 [batch, heads, n, D] for 8 bits;
    uint8 [batch, heads, n, D / 2] for 4 bits, channel 2p in the low nibble of byte p and 2p + 1 in the
    high one. `scale` [batch, heads, n, D / group] and `mean` [batch, n, D] (None when not centred) are
    in the original dtype."""

    data: torch.Tensor
    scale: torch.Tensor
    mean: torch.Tensor | None
    bits: int
    group: int

    @property
    def dtype(self) -> torch.dtype:
        return self.scale.dtype

    @property
    def nbytes(self) -> int:
        parts = [self.data, self.scale] + ([self.mean] if self.mean is not None else [])
        return sum(t.numel() * t.element_size() for t in parts)


def check_layout(x: torch.Tensor, bits: int, group: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if x.dim() != 4:
        raise ValueError(f"expected rows [batch, heads, n, head_dim], got shape {tuple(x.shape)}")
    if group < 2 or group & (group - 1) or x.shape[-1] % group:
        raise ValueError(f"group must be a power of two >= 2 dividing head_dim {x.shape[-1]}, got {group}")


def qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1  # 127 or 7: symmetric, so -qmax..qmax


def head_mean(x: torch.Tensor) -> torch.Tensor:
    """Per-token mean across heads [batch, n, D] in x's dtype, summed head by head in float32."""
    total = x[:, 0].float()
    for head in range(1, x.shape[1]):
        total = total + x[:, head].float()
    return (total / x.shape[1]).to(x.dtype)


def quantize_reference(x: torch.Tensor, bits: int = 8, group: int = 32, center: bool = False) -> QuantizedKV:
    """Quantise rows [batch, heads, n, D]; `center=True` for keys (subtract the per-token head mean)."""
    check_layout(x, bits, group)
    batch, heads, n, dim = x.shape
    mean = head_mean(x) if center else None
    deviation = x.float() - (mean.float()[:, None] if center else 0.0)
    grouped = deviation.view(batch, heads, n, dim // group, group)
    scale = (grouped.abs().amax(dim=-1) / qmax(bits)).to(x.dtype)
    safe = torch.where(scale > 0, scale.float(), torch.ones_like(scale, dtype=torch.float32))
    codes = torch.floor(grouped / safe[..., None] + 0.5).clamp(-qmax(bits), qmax(bits)).view(batch, heads, n, dim)
    codes = codes.to(torch.int32)
    if bits == 8:
        data = codes.to(torch.int8)
    else:
        data = ((codes[..., 0::2] & 15) | ((codes[..., 1::2] & 15) << 4)).to(torch.uint8)
    return QuantizedKV(data, scale, mean, bits, group)


def unpack_codes(q: QuantizedKV) -> torch.Tensor:
    """Integer codes [batch, heads, n, D] as int32."""
    if q.bits == 8:
        return q.data.to(torch.int32)
    byte = q.data.to(torch.int32)
    low, high = byte & 15, byte >> 4
    low = low - 16 * (low >= 8)
    high = high - 16 * (high >= 8)
    return torch.stack((low, high), dim=-1).flatten(-2)


def dequantize_reference(q: QuantizedKV) -> torch.Tensor:
    """Rows [batch, heads, n, D] in the original dtype: code * scale (+ mean), in float32, rounded once."""
    codes = unpack_codes(q)
    batch, heads, n, dim = codes.shape
    grouped = codes.float().view(batch, heads, n, dim // q.group, q.group) * q.scale.float()[..., None]
    out = grouped.view(batch, heads, n, dim)
    if q.mean is not None:
        out = out + q.mean.float()[:, None]
    return out.to(q.dtype)
