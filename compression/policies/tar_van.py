"""`tar_van` (default): InfiniPot-V. Recent frames, then TaR's most novel older patches, then VaN."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from potwatch.compression.policies.base import Policy, VisualTokens, register
from potwatch.compression.policies.selection import (
    check_kernel,
    check_ratio,
    infinipot_score,
    top_indices,
    trivial_selection,
)


@register
@dataclass
class TarVanPolicy(Policy):
    """Keep the r newest frames whole, r = max(1, floor(recent_ratio * frames' worth of tokens held))
    (`recent_tokens`); TaR picks its share of keep (about alpha * keep, `tar_share`) minus those from
    the older tokens (patch-aligned key novelty against the recent frames); VaN (value norm, pooled per
    frame grid when pool_kernel > 1) fills the rest. The window lives in TaR's share and never takes
    more than that share: at a tight budget it keeps its newest tokens up to the share.

    Paper defaults: alpha 0.5, recent_ratio 0.125, no pooling (the paper's per-layer kernels come from
    thresholds it does not publish)."""

    name: ClassVar[str] = "tar_van"
    description: ClassVar[str] = "the default (InfiniPot-V): recent frames, then the most novel older patches, then the strongest values"
    value_norms: ClassVar[bool] = True

    alpha: float = 0.5
    recent_ratio: float = 0.125
    pool_kernel: int = 1

    def __post_init__(self) -> None:
        check_ratio("alpha", self.alpha)
        check_ratio("recent_ratio", self.recent_ratio)
        check_kernel(self.pool_kernel)

    def score(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        """Ranking [heads, n] whose top `keep` is the kept set: +inf for recent and TaR-picked tokens."""
        return infinipot_score(tokens, keep, self.alpha, self.recent_ratio, self.pool_kernel)

    def select(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        done = trivial_selection(tokens.heads, tokens.count, keep, tokens.device)
        if done is not None:
            return done
        return top_indices(self.score(tokens, keep), keep)
