"""`adakv`: tar_van's choice within each (layer, KV head), but with a budget per head: heads that barely
look at the video give their share of the layer's budget to heads that do (the idea of AdaKV and
SurfaceLogicKV, written for streaming video)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from potwatch.compression.head_budgets import allocate, memory_shares
from potwatch.compression.policies.base import VisualTokens
from potwatch.compression.policies.selection import check_ratio, pick_ranked
from potwatch.compression.policies.tar_van import TarVanPolicy
from potwatch.compression.query_stats import QueryStats
from potwatch.compression.token_state import SLOT_COUNT, VALUE_NORM, TokenState


@dataclass
class AdaKVPolicy(TarVanPolicy):
    """After every vision block, a few of its queries (as global_score samples them) attend over the
    cache; each (layer, KV head) row's share of attention on the video memory (the visual tokens held
    before the block) is smoothed as share = smoothing * old + (1 - smoothing) * new. At a compaction
    each layer keeps heads x keep visual tokens in total, as tar_van, but split between its heads in
    proportion to their shares: every head keeps at least `floor` x keep, and none more than its row
    can hold beside the incoming block. Inside each row tar_van picks (recent frames, TaR, VaN).

    Rows keeping fewer tokens than the longest are padded with holes (count 0, masked in attention):
    the cache is as long as its longest row, so holes use bytes that plain eviction would leave free,
    and compactions come more often. Before any block was observed all heads count the same."""

    name: ClassVar[str] = "adakv"
    description: ClassVar[str] = "like tar_van, but heads that barely look at the video give their share to heads that do"
    needs_queries: ClassVar[bool] = True
    per_token_state: ClassVar[tuple[TokenState, ...]] = (SLOT_COUNT, VALUE_NORM)
    head_budgets: ClassVar[bool] = True

    floor: float = 0.2
    smoothing: float = 0.8
    share: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)  # [rows], the smoothed shares

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ratio("floor", self.floor)
        check_ratio("smoothing", self.smoothing)

    def observe(self, queries: QueryStats, keys: torch.Tensor, state: dict[str, torch.Tensor], length: int,
                visual: torch.Tensor | None = None) -> None:
        if visual is None:
            return
        new = memory_shares(keys, length, queries, visual, state.get(SLOT_COUNT.name))
        if self.share is None or self.share.shape != new.shape:
            self.share = new
        else:
            self.share = self.smoothing * self.share.to(new.device) + (1 - self.smoothing) * new

    def budgets(self, tokens: VisualTokens, keep: int, longest: int, kv_heads: int) -> torch.Tensor:
        """Visual tokens each row keeps [rows] (long)."""
        held = tokens.valid.sum(dim=1) if tokens.valid is not None else torch.full(
            (tokens.heads,), tokens.count, device=tokens.device)
        share = self.share if self.share is not None and self.share.shape[0] == tokens.heads else None
        share = torch.ones(tokens.heads, device=tokens.device) if share is None else share.to(tokens.device)
        layers = tokens.heads // kv_heads
        upper = held.clamp(max=max(longest, 0)).view(layers, kv_heads)
        return allocate(share.view(layers, kv_heads), kv_heads * keep, int(self.floor * keep), upper).view(-1)

    def select_budgets(self, tokens: VisualTokens, keep: int, longest: int, kv_heads: int) -> torch.Tensor:
        budget = self.budgets(tokens, keep, longest, kv_heads)
        valid = tokens.valid if tokens.valid is not None else torch.ones(tokens.frame.shape, dtype=torch.bool,
                                                                          device=tokens.device)
        return pick_ranked(self.ranking(tokens, budget), valid, budget)
