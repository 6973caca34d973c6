"""Byte <-> token budgets: how many tokens a byte cap holds for a model's KV geometry."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from potwatch.compression.token_meta import meta_bytes_per_token_head
from potwatch.compression.token_state import TokenState


@dataclass(frozen=True)
class KVGeometry:
    """The shape of one token's K/V across the language model: what the cap is spent on."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    pos_rows: int = 3  # 3 for Qwen's M-RoPE, 1 for plain RoPE
    # What the policy keeps per token, layer and KV head beside K/V (its `per_token_state`), counted in the cap
    token_state: tuple[TokenState, ...] = ()
    kv_bits: int = 16  # 16: K/V as the model computes them; 8 or 4: quantised (compression/quantized_kv.py)

    @property
    def quantized(self) -> bool:
        return self.kv_bits != 16

    @property
    def element_size(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()

    @property
    def side_dtype(self) -> torch.dtype:
        """dtype of a quantised cache's scales and key means: the model's when it is 16-bit, else float16."""
        return self.dtype if self.element_size == 2 else torch.float16

    @property
    def quant_group(self) -> int:
        """Channels that share one scale: 32, or the largest power of two below it that divides the head."""
        group = 32
        while group > 2 and self.head_dim % group:
            group //= 2
        return group

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys + values of every layer: at the cache dtype, or as codes + scales + the key's head mean."""
        if not self.quantized:
            return 2 * self.layers * self.kv_heads * self.head_dim * self.element_size
        side = torch.empty(0, dtype=self.side_dtype).element_size()
        codes = 2 * self.kv_heads * self.head_dim * self.kv_bits // 8
        scales = 2 * self.kv_heads * (self.head_dim // self.quant_group) * side
        return self.layers * (codes + scales + self.head_dim * side)

    @property
    def workspace_bytes_per_token(self) -> int:
        """A quantised cache dequantises one layer at a time for attention into a buffer it keeps: one
        layer's K and V at the model dtype, counted in the cap like the rest."""
        return 2 * self.kv_heads * self.head_dim * self.element_size if self.quantized else 0

    @property
    def meta_bytes_per_token(self) -> int:
        """Per-token metadata, stored per layer and KV head, with the state the policy declares."""
        per_head = meta_bytes_per_token_head(self.pos_rows) + sum(state.element_size for state in self.token_state)
        return self.layers * self.kv_heads * per_head

    def keeps(self, state: TokenState | str) -> bool:
        """Whether the cache keeps this per-token state (given or named)."""
        name = state if isinstance(state, str) else state.name
        return any(kept.name == name for kept in self.token_state)

    @property
    def bytes_per_token(self) -> int:
        return self.kv_bytes_per_token + self.meta_bytes_per_token + self.workspace_bytes_per_token

    def tokens_for(self, cap_bytes: int) -> int:
        """The most tokens whose K, V and metadata fit in `cap_bytes`."""
        return cap_bytes // self.bytes_per_token

    def bytes_for(self, tokens: int) -> int:
        return tokens * self.bytes_per_token


def session_geometry(model_geometry: KVGeometry, policy, kv_bits: int) -> KVGeometry:
    """The model's K/V geometry with the per-token state a session's policy declares and its K/V width:
    the one place a session's bytes per token are worked out, so the cap, `--mem-cap auto` and the
    server's budget all count the same bytes."""
    return replace(model_geometry, token_state=tuple(policy.per_token_state), kv_bits=kv_bits)
