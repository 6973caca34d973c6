"""`expected_attention`: keep the visual tokens the next queries are expected to attend to most, after
the recent frames (the idea of KVPress's Expected Attention, written for streaming video)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from potwatch.compression.policies.base import Policy, VisualTokens, register
from potwatch.compression.policies.recent_first import recent_then_best
from potwatch.compression.policies.selection import check_ratio, top_indices, trivial_selection
from potwatch.compression.query_stats import QueryStats

VALUE_NORM_FLOOR = 1e-6  # keeps log(|v|) finite for an all-zero value
SCORE_CHUNK_BYTES = 16 << 20  # float32 keys scored at once: a few heads, never a copy of the whole cache


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
        mean = tokens.queries.mean.to(keys.device, torch.float32).unsqueeze(2) / math.sqrt(dim)
        var = tokens.queries.var.to(keys.device, torch.float32).unsqueeze(2) / (2 * dim)
        logit = torch.empty(heads, rows, dtype=torch.float32, device=keys.device)
        group = max(1, SCORE_CHUNK_BYTES // (rows * dim * 4))  # float32 copies of a few heads at a time
        for first in range(0, heads, group):
            part = keys[first : first + group].float()
            out = torch.bmm(part, mean[first : first + group])
            if self.use_variance:
                out += torch.bmm(part.square(), var[first : first + group])  # not in place: part may be the cache
            logit[first : first + group] = out.squeeze(2)
        return tokens.pick(logit) + log_value

    def select(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        done = trivial_selection(tokens.heads, tokens.count, keep, tokens.device)
        if done is not None:
            return done
        return top_indices(recent_then_best(self.score(tokens), tokens.frame, self.recent_ratio, keep), keep)
