"""What an attention-informed policy knows about the queries of the latest vision block, per
(layer, KV head) row in the monitor's layout.

The query heads of each KV group are averaged into one query per row (GQA), after RoPE at the
tokens' own positions, so a dot product with a cached key (also after RoPE) is the logit the model
computes, up to that averaging. Kept in float32; a few vectors per row, not per token: the cap's
per-token accounting does not change."""

from __future__ import annotations

from dataclasses import dataclass

import torch

SAMPLED_QUERIES = 8  # evenly spaced query positions of a block whose attention G-KV measures


@dataclass
class QueryStats:
    mean: torch.Tensor  # [rows, head_dim] mean query of the block
    var: torch.Tensor  # [rows, head_dim] per-dimension variance of the block's queries
    samples: torch.Tensor  # [rows, S, head_dim] queries at the sampled offsets
    offsets: torch.Tensor  # [S] long, the sampled queries' offsets inside the block (ascending)
    block_tokens: int  # tokens in the block the queries came from

    def rows(self, which: slice) -> "QueryStats":
        """The same statistics for a slice of the rows (one layer's heads, say)."""
        return QueryStats(self.mean[which], self.var[which], self.samples[which], self.offsets, self.block_tokens)


def sample_offsets(block_tokens: int, count: int = SAMPLED_QUERIES) -> torch.Tensor:
    """`count` evenly spaced offsets in [0, block_tokens), the last token always among them; fewer
    when the block is shorter."""
    count = max(1, min(count, block_tokens))
    step = block_tokens / count
    return torch.tensor([int(block_tokens - 1 - j * step) for j in range(count)][::-1], dtype=torch.long)
