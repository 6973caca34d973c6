"""`van`: VaN alone (ablation), i.e. InfiniPot-V with alpha = 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from potwatch.compression.policies.base import Policy, VisualTokens, register
from potwatch.compression.policies.selection import (
    RECENT_SHARE,
    check_kernel,
    check_ratio,
    infinipot_score,
    top_indices,
    trivial_selection,
)


@register
@dataclass
class VanPolicy(Policy):
    """Keep the recent frames whole, then the tokens with the largest value norm (optionally pooled per
    frame grid). The recent frames stay forced in, up to the share they have in default tar_van
    (RECENT_SHARE of the budget), so the ablation differs from `tar_van` only in TaR's picks; a stream
    must always see its newest frames. (tar_van with alpha=0 has no window: VaN alone.)"""

    name: ClassVar[str] = "van"
    description: ClassVar[str] = "keeps the recent frames, then the tokens with the strongest values (VaN alone)"
    value_norms: ClassVar[bool] = True

    recent_ratio: float = 0.125
    pool_kernel: int = 1

    def __post_init__(self) -> None:
        check_ratio("recent_ratio", self.recent_ratio)
        check_kernel(self.pool_kernel)

    def score(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        """Ranking [heads, n] whose top `keep` is the kept set: +inf for recent tokens, else (pooled) VaN."""
        return infinipot_score(tokens, keep, alpha=0.0, recent_ratio=self.recent_ratio, pool_kernel=self.pool_kernel,
                               window_share=RECENT_SHARE)

    def select(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        done = trivial_selection(tokens.heads, tokens.count, keep, tokens.device)
        if done is not None:
            return done
        return top_indices(self.score(tokens, keep), keep)
