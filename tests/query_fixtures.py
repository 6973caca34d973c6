"""Random query statistics and running scores for policy tests, in the monitor's row layout."""

from __future__ import annotations

import dataclasses

import torch

from potwatch.compression.policies.base import VisualTokens
from potwatch.compression.query_capture import QueryCapture
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


def capture_beside_the_model(adapter, rope_module, session, block, monkeypatch):
    """Run `block` through the model with a QueryCapture, spying on the family's own RoPE step.

    Returns (the capture's stats, the model's post-RoPE queries with each KV group's query heads
    averaged, as rows [layers * kv_heads, n, d], and how many RoPE calls were seen)."""
    seen = []
    real = rope_module.apply_rotary_pos_emb

    def spy(q, k, *args, **kwargs):
        q_embed, k_embed = real(q, k, *args, **kwargs)
        seen.append(q_embed.detach().clone())
        return q_embed, k_embed

    monkeypatch.setattr(rope_module, "apply_rotary_pos_emb", spy)
    g = session.geometry
    with torch.no_grad(), QueryCapture(adapter, len(block)) as capture:
        capture.piece(0, block.meta.pos)
        adapter.forward(block, session.cache, logits=False)
    queries = torch.stack([q[0] for q in seen])  # [layers, heads, n, d]
    rows = queries.view(len(seen), g.kv_heads, -1, len(block), g.head_dim).mean(2).flatten(0, 1)
    return capture.stats(), rows, len(seen)
