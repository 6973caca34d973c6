"""`expected_attention`: keep the visual tokens the next queries are expected to attend to most, after
the recent frames (the idea of KVPress's Expected Attention, written for streaming video)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from potwatch.compression.policies.base import ScoringPolicy, VisualTokens
from potwatch.compression.policies.selection import key_chunks
from potwatch.compression.token_state import VALUE_NORM, TokenState

VALUE_NORM_FLOOR = 1e-6  # keeps log(|v|) finite for an all-zero value
SCORE_CHUNK_ROWS = 2048  # keys of one head scored at once: with their squares they stay in the CPU's cache


@dataclass
class ExpectedAttentionPolicy(ScoringPolicy):
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
    per_token_state: ClassVar[tuple[TokenState, ...]] = (VALUE_NORM,)

    use_variance: bool = True

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
