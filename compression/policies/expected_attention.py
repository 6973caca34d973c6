"""`expected_attention`: keep the visual tokens the next queries are expected to attend to most, after
the recent frames (the idea of KVPress's Expected Attention, written for streaming video)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from potwatch.compression.policies.base import Policy, VisualTokens, register
from potwatch.compression.policies.recent_first import recent_then_best
from potwatch.compression.policies.selection import check_ratio, key_chunks, top_indices, trivial_selection
from potwatch.compression.query_stats import QueryStats

VALUE_NORM_FLOOR = 1e-6  # keeps log(|v|) finite for an all-zero value
SCORE_CHUNK_ROWS = 2048  # keys of one head scored at once: with their squares they stay in the CPU's cache


@register
@dataclass
class ExpectedAttentionPolicy(Policy):
    """Model the next block's queries per (layer, KV head) as a Gaussian with the mean and
    per-dimension variance of the latest block's queries (after RoPE, query heads of a KV group
    averaged). The expected exp-logit a key k receives is then exp(mu.k / sqrt(d) + k^T diag(var) k / (2d));
    times |v| it is the expected contribution of the token to the attention output. Ranked in log space
    (softmax's normaliser is the same for every token of a head, so it does not change the order).

    The recent window is kept first, as in tar_van (`recent_tokens`), up to half the budget.
    Before any block's queries were seen (or with use_variance=False and a zero mean) it is VaN."""

    name: ClassVar[str] = "expected_attention"
    description: ClassVar[str] = "keeps the recent frames, then the tokens the next questions are expected to look at"
    needs_queries: ClassVar[bool] = True
    value_norms: ClassVar[bool] = True

    recent_ratio: float = 0.125
    use_variance: bool = True

    def __post_init__(self) -> None:
        check_ratio("recent_ratio", self.recent_ratio)

    def observe(self, queries: QueryStats, keys: torch.Tensor, scores: torch.Tensor | None, length: int,
                visual: torch.Tensor | None = None, counts: torch.Tensor | None = None) -> None:
        """Nothing to keep: the monitor hands the latest block's statistics to `select`."""

    def score(self, tokens: VisualTokens) -> torch.Tensor:
        """log of the expected attention weight times |v| for every visual token [heads, n] (unnormalised)."""
        log_value = tokens.value_norms().clamp(min=VALUE_NORM_FLOOR).log()
        if tokens.queries is None:
            return log_value
        keys = tokens.keys  # [heads, N, d], the cache's own rows
        heads, rows, dim = keys.shape
        mean = tokens.queries.mean.to(keys.device, torch.float32) / math.sqrt(dim)
        var = tokens.queries.var.to(keys.device, torch.float32) / (2 * dim)
        logit = torch.empty(heads, rows, dtype=torch.float32, device=keys.device)
        squares = torch.empty(min(rows, SCORE_CHUNK_ROWS), dim, dtype=torch.float32, device=keys.device)
        for head, start, part in key_chunks(keys, SCORE_CHUNK_ROWS):  # each key read once, a chunk at a time
            end = start + part.shape[0]
            out = torch.mv(part, mean[head], out=logit[head, start:end])
            if self.use_variance:  # into a scratch, not in place: part may be the cache
                out.addmv_(torch.mul(part, part, out=squares[: end - start]), var[head])
        return tokens.pick(logit) + log_value

    def select(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        done = trivial_selection(tokens.heads, tokens.count, keep, tokens.device)
        if done is not None:
            return done
        return top_indices(recent_then_best(self.score(tokens), tokens.frame, self.recent_ratio, keep), keep)
