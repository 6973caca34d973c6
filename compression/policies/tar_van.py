"""The TaR+VaN policy (InfiniPot-V) and its two ablations as settings: `tar_van` (alpha 0.5, the
default), `tar` (alpha 1: TaR alone) and `van` (alpha 0: VaN alone, the recent frames still first)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from potwatch.compression.policies.base import Policy, VisualTokens
from potwatch.compression.policies.selection import RECENT_SHARE, check_kernel, check_ratio, infinipot_score
from potwatch.compression.token_state import VALUE_NORM, TokenState


@dataclass
class TarVanPolicy(Policy):
    """Keep the r newest frames whole, r = max(1, floor(recent_ratio * frames' worth of tokens held))
    (`recent_tokens`); TaR picks its share of keep (about alpha * keep, `tar_share`) minus those from
    the older tokens (patch-aligned key novelty against the recent frames); VaN (value norm, pooled per
    frame grid when pool_kernel > 1) fills the rest. The window lives in TaR's share and never takes
    more than that share (or `window_share` of keep, when set): at a tight budget it keeps its newest
    tokens up to the share.

    Paper defaults: alpha 0.5, recent_ratio 0.125, no pooling (the paper's per-layer kernels come from
    thresholds it does not publish)."""

    name: ClassVar[str] = "tar_van"
    description: ClassVar[str] = "the default (InfiniPot-V): recent frames, then the most novel older patches, then the strongest values"
    per_token_state: ClassVar[tuple[TokenState, ...]] = (VALUE_NORM,)

    alpha: float = 0.5
    recent_ratio: float = 0.125
    pool_kernel: int = 1
    window_share: float | None = None  # the recent window's most share of keep; None: TaR's (alpha's)

    def __post_init__(self) -> None:
        check_ratio("alpha", self.alpha)
        check_ratio("recent_ratio", self.recent_ratio)
        check_kernel(self.pool_kernel)
        if self.window_share is not None:
            check_ratio("window_share", self.window_share)

    def van_weight(self, tokens: VisualTokens) -> torch.Tensor | None:
        """A factor [heads, n] on each token's value norm before VaN ranks it; None: none."""
        return None

    def ranking(self, tokens: VisualTokens, keep: int | torch.Tensor) -> torch.Tensor:
        """+inf for recent and TaR-picked tokens, else (pooled) VaN; `keep` may be one per head."""
        return infinipot_score(tokens, keep, self.alpha, self.recent_ratio, self.pool_kernel, self.van_weight(tokens),
                               window_share=self.window_share)


@dataclass
class TarPolicy(TarVanPolicy):
    """TaR alone (ablation): keep the recent frames whole and fill the rest with the older tokens whose
    keys differ most from the same patch in the recent frames (Eqs. 4-6). Static background goes first."""

    name: ClassVar[str] = "tar"
    description: ClassVar[str] = "keeps the recent frames, then the older patches most unlike their neighbours in time (TaR alone)"
    ablation: ClassVar[bool] = True
    per_token_state: ClassVar[tuple[TokenState, ...]] = ()  # VaN never ranks: no value norms to keep

    alpha: float = 1.0


@dataclass
class VanPolicy(TarVanPolicy):
    """VaN alone (ablation): keep the recent frames whole, then the tokens with the largest value norm
    (optionally pooled per frame grid). The recent frames stay forced in, up to the share they have in
    default tar_van (RECENT_SHARE of the budget), so the ablation differs from `tar_van` only in TaR's
    picks; a stream must always see its newest frames. (tar_van with alpha=0 has no window: VaN alone.)"""

    name: ClassVar[str] = "van"
    description: ClassVar[str] = "keeps the recent frames, then the tokens with the strongest values (VaN alone)"
    ablation: ClassVar[bool] = True

    alpha: float = 0.0
    window_share: float | None = RECENT_SHARE
