"""K and V kept in 8 or 4 bits inside the capped cache (`--kv-bits 8|4`), so the same byte cap holds
more tokens.

As in TaDA, each new token's key is split into its mean across the layer's KV heads, kept in 16-bit
(it carries the outlier channels all heads share), and per-head deviations, quantised with one
symmetric scale per group of channels; values are quantised as they are (kernels/kv_quant.py).
A slot's key mean only means something while every head of the layer holds the same token there, so
a quantised cache keeps the same tokens in all heads of a layer (the monitor turns the policy's
per-head choices into one choice per layer by vote). Attention needs K and V at the model's dtype:
each layer dequantises into one workspace that all layers share, and the cap counts it."""

from __future__ import annotations

import torch

from potwatch.errors import UserError
from potwatch.kernels import kv_quant
from potwatch.kernels.triton_dispatch import triton_ready

KV_BITS = (16, 8, 4)
QUANTIZED_FIELDS = ("key_codes", "key_scales", "value_codes", "value_scales")  # [layers, heads, capacity, ...]
DEQUANT_CHUNK_TOKENS = 4096  # bounds the float32 temporaries of one dequantisation step


def check_kv_bits(bits, capped: bool) -> int:
    """`bits` as 16, 8 or 4, or a UserError saying what to pass."""
    try:
        value = int(bits)
    except (TypeError, ValueError):
        value = None
    if value not in KV_BITS or str(bits).strip() not in {str(b) for b in KV_BITS}:
        shown = str(bits).strip() or repr(bits)
        raise UserError(f"--kv-bits {shown} is not supported; use 16 (no quantisation), 8 or 4.")
    if value != 16 and not capped:
        raise UserError(f"--kv-bits {value} needs a memory cap (a quantised cache never grows); give --mem-cap or use --kv-bits 16.")
    return value


def check_policy_width(policy, bits: int) -> None:
    """A quantised cache keeps the same tokens in every head of a layer; a policy that keeps per-head
    slots (merging's counts, per-head budgets' holes) cannot work on it."""
    if bits != 16 and policy.slot_counts:
        raise UserError(
            f"Policy '{policy.name}' needs --kv-bits 16: a quantised cache keeps the same tokens in every head of a "
            "layer, which merging and per-head budgets cannot; use --kv-bits 16 or a policy such as tar_van."
        )


def allocate_quantized(geometry, layers: int, capacity: int, device: torch.device | str) -> dict:
    """Zero-filled codes, scales, key means and the shared workspace of a quantised cache."""
    heads, dim, bits = geometry.kv_heads, geometry.head_dim, geometry.kv_bits
    code_dtype = torch.int8 if bits == 8 else torch.uint8  # 4 bits: two channels a byte
    codes = (layers, heads, capacity, dim * bits // 8)
    scales = (layers, heads, capacity, dim // geometry.quant_group)
    work = (1, heads, capacity, dim)
    side = geometry.side_dtype
    return {
        "key_codes": torch.zeros(codes, dtype=code_dtype, device=device),
        "key_scales": torch.zeros(scales, dtype=side, device=device),
        "key_mean": torch.zeros((layers, capacity, dim), dtype=side, device=device),
        "value_codes": torch.zeros(codes, dtype=code_dtype, device=device),
        "value_scales": torch.zeros(scales, dtype=side, device=device),
        "work_keys": torch.zeros(work, dtype=geometry.dtype, device=device),
        "work_values": torch.zeros(work, dtype=geometry.dtype, device=device),
    }


def quantize(x: torch.Tensor, bits: int, group: int, center: bool) -> kv_quant.QuantizedKV:
    if triton_ready(x):
        from potwatch.kernels import kv_quant_triton

        return kv_quant_triton.quantize(x.contiguous(), bits, group, center)
    return kv_quant.quantize_reference(x, bits, group, center)


def dequantize_into(out: torch.Tensor, q: kv_quant.QuantizedKV) -> None:
    """out = codes * scale (+ key mean) for rows [1, heads, n, head_dim]: the Triton kernel on CUDA; else
    plain torch in two passes over a float32 copy of the codes (the reference in kernels/kv_quant.py
    spells every step out instead, and is what this is tested against)."""
    if triton_ready(q.data):
        from potwatch.kernels import kv_quant_triton

        parts = (t.contiguous() if t is not None else None for t in (q.data, q.scale, q.mean))
        out.copy_(kv_quant_triton.dequantize(kv_quant.QuantizedKV(*parts, q.bits, q.group)))
        return
    batch, heads, n, dim = out.shape
    if q.bits == 8:
        codes = q.data.to(torch.float32)
    else:  # two signed nibbles a byte: shifting the int8 byte sign-extends each
        signed = q.data.view(torch.int8)
        codes = torch.empty((batch, heads, n, dim), dtype=torch.float32, device=out.device)
        codes[..., 0::2] = torch.bitwise_right_shift(torch.bitwise_left_shift(signed, 4), 4)
        codes[..., 1::2] = torch.bitwise_right_shift(signed, 4)
    shape = (batch, heads, n, dim // q.group, q.group)
    scale = q.scale.to(torch.float32).unsqueeze(-1)
    target = out.view(shape) if out.dtype == torch.float32 else codes.view(shape)
    if q.mean is None:
        torch.mul(codes.view(shape), scale, out=target)
    else:
        mean = q.mean.to(torch.float32).view(batch, 1, n, dim // q.group, q.group)
        torch.addcmul(mean, codes.view(shape), scale, out=target)
    if out.dtype != torch.float32:
        out.copy_(codes)


class QuantizedRows:
    """One layer's quantised K and V: views of its slice of the shared storage, and the workspace."""

    def __init__(self, storage: dict, index: int, bits: int, group: int):
        self.bits, self.group = bits, group
        self.key_codes = storage["key_codes"][index : index + 1]  # [1, heads, capacity, width]
        self.key_scales = storage["key_scales"][index : index + 1]
        self.key_mean = storage["key_mean"][index : index + 1]  # [1, capacity, head_dim]
        self.value_codes = storage["value_codes"][index : index + 1]
        self.value_scales = storage["value_scales"][index : index + 1]
        self.work_keys, self.work_values = storage["work_keys"], storage["work_values"]
        self.side_dtype = self.key_scales.dtype

    def write(self, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Quantise new tokens' keys and values [1, heads, n, head_dim] into slots [start, start + n)."""
        self.write_keys(start, keys)
        end = start + values.shape[2]
        q = quantize(values.to(self.side_dtype), self.bits, self.group, center=False)
        self.value_codes[:, :, start:end] = q.data
        self.value_scales[:, :, start:end] = q.scale

    def write_keys(self, start: int, keys: torch.Tensor) -> None:
        """(Re)quantise keys [1, heads, n, head_dim] into slots [start, start + n), centred on their head mean."""
        end = start + keys.shape[2]
        q = quantize(keys.to(self.side_dtype), self.bits, self.group, center=True)
        self.key_codes[:, :, start:end] = q.data
        self.key_scales[:, :, start:end] = q.scale
        self.key_mean[:, start:end] = q.mean

    def read(self, length: int, values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """K and V of slots [0, length) at the model's dtype: views of the workspace, valid until another
        layer reads (layers run one after another, so attention always sees its own). `values=False`
        decodes the keys alone (V comes back None): a policy that ranks by stored value norms needs no V."""
        for start in range(0, length, DEQUANT_CHUNK_TOKENS):
            end = min(length, start + DEQUANT_CHUNK_TOKENS)
            keys = kv_quant.QuantizedKV(self.key_codes[:, :, start:end], self.key_scales[:, :, start:end],
                                        self.key_mean[:, start:end], self.bits, self.group)
            dequantize_into(self.work_keys[:, :, start:end], keys)
            if values:
                part = kv_quant.QuantizedKV(self.value_codes[:, :, start:end], self.value_scales[:, :, start:end],
                                            None, self.bits, self.group)
                dequantize_into(self.work_values[:, :, start:end], part)
        return self.work_keys[:, :, :length], self.work_values[:, :, :length] if values else None


class QuantizedView:
    """The keys or values of every (layer, KV head) row of a quantised cache as a policy reads them, rows
    [layers * heads, length, head_dim], decoded where they are read: a chunk of one row (`rows`), the
    rows at given indices (`select`), or every row's norms (`norms`). A pass then runs the policy once
    over every row, as at 16 bits, with no layer-wide workspace and no float copy of all of them; each
    row decodes exactly as the workspace would decode it (the same codes, scale and key mean, rounded to
    the model's dtype)."""

    def __init__(self, storage: dict, side: str, bits: int, group: int, length: int, dtype: torch.dtype):
        self.codes, self.scales = storage[f"{side}_codes"], storage[f"{side}_scales"]
        self.mean = storage["key_mean"] if side == "key" else None  # [layers, capacity, head_dim]
        self.bits, self.group, self.dtype = bits, group, dtype
        layers, self.heads, self.capacity, width = self.codes.shape
        self.shape = torch.Size((layers * self.heads, length, width * 8 // bits))
        self.device = self.codes.device

    @classmethod
    def of(cls, cache, side: str) -> "QuantizedView":
        """The keys (`side="key"`) or values (`"value"`) a quantised `CappedKVCache` holds now."""
        geometry = cache.geometry
        return cls(cache.storage, side, geometry.kv_bits, geometry.quant_group, cache.length, geometry.dtype)

    def rows(self, row: int, start: int, end: int) -> torch.Tensor:
        """float32 rows [end - start, head_dim] of slots [start, end) of one (layer, head) row."""
        layer, head = divmod(row, self.heads)
        mean = None if self.mean is None else self.mean[layer, start:end]
        return self._decode(self.codes[layer, head, start:end], self.scales[layer, head, start:end], mean)

    def select(self, index: torch.Tensor) -> torch.Tensor:
        """float32 rows [k, head_dim] at `index` (in the [rows * length] numbering)."""
        row, slot = index // self.shape[1], index % self.shape[1]
        at = row * self.capacity + slot
        mean = None
        if self.mean is not None:
            mean = self.mean.view(-1, self.mean.shape[-1]).index_select(0, (row // self.heads) * self.capacity + slot)
        return self._decode(self.codes.view(-1, self.codes.shape[-1]).index_select(0, at),
                            self.scales.view(-1, self.scales.shape[-1]).index_select(0, at), mean)

    def norms(self, chunk: int = DEQUANT_CHUNK_TOKENS) -> torch.Tensor:
        """float32 L2 norm of every decoded row [rows, length], a chunk at a time."""
        rows, length, _ = self.shape
        out = torch.empty(rows, length, dtype=torch.float32, device=self.device)
        for row in range(rows):
            for start in range(0, length, chunk):
                end = min(length, start + chunk)
                out[row, start:end] = torch.linalg.vector_norm(self.rows(row, start, end), dim=-1)
        return out

    def _decode(self, codes: torch.Tensor, scales: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
        out = torch.empty((1, 1, codes.shape[0], self.shape[2]), dtype=self.dtype, device=self.device)
        quantized = kv_quant.QuantizedKV(codes[None, None], scales[None, None], None if mean is None else mean[None],
                                         self.bits, self.group)
        dequantize_into(out, quantized)
        return out[0, 0].float()
