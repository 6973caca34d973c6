"""`global_score`: keep the visual tokens with the most attention over the stream's history, after the
recent frames (the idea of G-KV's global score, written for streaming video)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from potwatch.compression.policies.base import ScoringPolicy, VisualTokens
from potwatch.compression.policies.selection import check_ratio
from potwatch.compression.query_stats import QueryStats
from potwatch.compression.token_state import SCORE, TokenState

# Most bytes of attention weights [rows, sampled queries, tokens] formed at once: the update walks the
# (layer, head) rows in groups this size, so it never builds an attention matrix of the whole cache.
ATTENTION_CHUNK_BYTES = 16 << 20


@dataclass
class GlobalScorePolicy(ScoringPolicy):
    """Each cached token carries a running score per layer and KV head. After every vision block a few
    of its queries (evenly spaced, query heads of a KV group averaged, after RoPE) attend over the
    cache as the model's causal attention would; a token's new score is its mean attention weight over
    those queries, and score = decay * old + new. Eviction keeps the r newest frames whole (as tar_van,
    up to half the budget) and then the highest scores. The scores live in the cache beside K and V and
    move with them on every compaction; their bytes count against the cap."""

    name: ClassVar[str] = "global_score"
    description: ClassVar[str] = "keeps the recent frames, then the tokens that drew the most attention over the stream"
    needs_queries: ClassVar[bool] = True
    per_token_state: ClassVar[tuple[TokenState, ...]] = (SCORE,)

    decay: float = 0.8

    def __post_init__(self) -> None:
        check_ratio("decay", self.decay)
        super().__post_init__()

    def observe(self, queries: QueryStats, keys: torch.Tensor, state: dict[str, torch.Tensor], length: int,
                visual: torch.Tensor | None = None) -> None:
        if SCORE.name in state:
            update_running_scores(state[SCORE.name], keys, length, queries, self.decay)

    def score(self, tokens: VisualTokens) -> torch.Tensor:
        """The running score; |v| for a cache that keeps none (uncapped)."""
        return tokens.history if tokens.history is not None else tokens.value_norms()


def sampled_attention(keys: torch.Tensor, samples: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Mean attention weight [rows, L] each key of `keys` [rows, L, d] gets from `samples` [rows, S, d],
    each query seeing only the keys `visible` [S, L] marks (causal attention)."""
    logits = torch.bmm(samples, keys.transpose(1, 2)) / math.sqrt(keys.shape[-1])
    logits = logits.masked_fill(~visible, float("-inf"))
    return torch.softmax(logits, dim=-1).mean(dim=1)


def update_running_scores(scores: torch.Tensor, keys: torch.Tensor, length: int, queries: QueryStats,
                          decay: float) -> None:
    """scores[:, :length] = decay * scores + the sampled queries' attention, in place, for score rows
    [rows, N] and key rows [rows, N, d]; the last `queries.block_tokens` held tokens are the block."""
    rows, _, dim = keys.shape
    samples = queries.samples.to(keys.device, torch.float32)
    block_start = length - queries.block_tokens
    visible = torch.arange(length, device=keys.device)[None, :] <= (block_start + queries.offsets.to(keys.device))[:, None]
    group = max(1, ATTENTION_CHUNK_BYTES // (4 * samples.shape[1] * max(length, 1) * 2))
    for first in range(0, rows, group):
        last = min(rows, first + group)
        new = sampled_attention(keys[first:last, :length].float(), samples[first:last], visible)
        part = scores[first:last, :length]
        part.mul_(decay).add_(new.to(part.dtype))
