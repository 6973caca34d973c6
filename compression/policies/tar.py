"""`tar`: TaR alone (ablation), i.e. InfiniPot-V with alpha = 1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from potwatch.compression.policies.base import Policy, VisualTokens, register
from potwatch.compression.policies.selection import check_ratio, infinipot_score, top_indices, trivial_selection


@register
@dataclass
class TarPolicy(Policy):
    """Keep the recent frames whole and fill the rest with the older tokens whose keys differ most from
    the same patch in the recent frames (Eqs. 4-6). Static background goes first."""

    name: ClassVar[str] = "tar"
    description: ClassVar[str] = "keeps the recent frames, then the older patches most unlike their neighbours in time (TaR alone)"

    recent_ratio: float = 0.125

    def __post_init__(self) -> None:
        check_ratio("recent_ratio", self.recent_ratio)

    def score(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        """Ranking [heads, n] whose top `keep` is the kept set: +inf for recent and TaR-picked tokens."""
        return infinipot_score(tokens, keep, alpha=1.0, recent_ratio=self.recent_ratio, pool_kernel=1)

    def select(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        done = trivial_selection(tokens.heads, tokens.count, keep, tokens.device)
        if done is not None:
            return done
        return top_indices(self.score(tokens, keep), keep)
