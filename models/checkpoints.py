"""The smallest real checkpoint of a family and its language model's KV geometry, so `potwatch models`
can say what a token costs before anything is downloaded. Each family's description names its own
(models/families/, with the config.json figures it comes from); `models.family.smallest_checkpoints()`
lists them all."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from potwatch.compression.budget import KVGeometry


@dataclass(frozen=True)
class RealCheckpoint:
    family: str  # transformers model_type
    hub_id: str
    layers: int
    kv_heads: int
    head_dim: int
    pos_rows: int  # 3 for M-RoPE, 1 for plain RoPE

    def geometry(self, dtype: torch.dtype = torch.bfloat16) -> KVGeometry:
        return KVGeometry(self.layers, self.kv_heads, self.head_dim, dtype, pos_rows=self.pos_rows)
