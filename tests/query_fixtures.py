"""Random query statistics and running scores for policy tests, in the monitor's row layout."""

from __future__ import annotations

import dataclasses

import torch

from potwatch.compression.policies.base import VisualTokens
from potwatch.compression.query_stats import QueryStats, sample_offsets


def random_queries(heads: int, dim: int, seed: int, block_tokens: int = 16) -> QueryStats:
    g = torch.Generator().manual_seed(seed)
    offsets = sample_offsets(block_tokens)
    return QueryStats(
        mean=torch.randn(heads, dim, generator=g),
        var=torch.rand(heads, dim, generator=g),
        samples=torch.randn(heads, len(offsets), dim, generator=g),
        offsets=offsets,
        block_tokens=block_tokens,
    )


def with_queries(tokens: VisualTokens, seed: int) -> VisualTokens:
    """`tokens` with random queries and running scores attached (what the monitor adds)."""
    g = torch.Generator().manual_seed(seed + 1)
    history = torch.rand(tokens.heads, tokens.count, generator=g)
    return dataclasses.replace(tokens, queries=random_queries(tokens.heads, tokens.keys.shape[-1], seed), history=history)
