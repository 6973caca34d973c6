"""Byte <-> token budgets: how many tokens a byte cap holds for a model's KV geometry."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from potwatch.compression.token_meta import COUNT_DTYPE, SCORE_DTYPE, meta_bytes_per_token_head


@dataclass(frozen=True)
class KVGeometry:
    """The shape of one token's K/V across the language model: what the cap is spent on."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    pos_rows: int = 3  # 3 for Qwen's M-RoPE, 1 for plain RoPE
    token_scores: bool = False  # a policy's running score per token, layer and KV head (global_score)
    slot_counts: bool = False  # how many tokens each slot stands for, per layer and KV head (keep_merge)

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys + values of every layer at the cache dtype."""
        element = torch.empty(0, dtype=self.dtype).element_size()
        return 2 * self.layers * self.kv_heads * self.head_dim * element

    @property
    def meta_bytes_per_token(self) -> int:
        """Per-token metadata, stored per layer and KV head (with the policy's score and the slot count
        when the policy keeps them)."""
        per_head = meta_bytes_per_token_head(self.pos_rows)
        if self.token_scores:
            per_head += torch.empty(0, dtype=SCORE_DTYPE).element_size()
        if self.slot_counts:
            per_head += torch.empty(0, dtype=COUNT_DTYPE).element_size()
        return self.layers * self.kv_heads * per_head

    @property
    def bytes_per_token(self) -> int:
        return self.kv_bytes_per_token + self.meta_bytes_per_token

    def tokens_for(self, cap_bytes: int) -> int:
        """The most tokens whose K, V and metadata fit in `cap_bytes`."""
        return cap_bytes // self.bytes_per_token

    def bytes_for(self, tokens: int) -> int:
        return tokens * self.bytes_per_token
