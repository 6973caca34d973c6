"""The ranking the attention-informed policies share: the recent frames first, as tar_van keeps them,
then the policy's own score."""

from __future__ import annotations

import torch

from potwatch.compression.policies.selection import RECENT_SHARE, recent_tokens, tar_share


def recent_then_best(score: torch.Tensor, frame: torch.Tensor, recent_ratio: float, keep: int) -> torch.Tensor:
    """A ranking [H, n] whose top `keep` is the recent window (as in `recent_tokens`), up to its share of
    the budget (RECENT_SHARE, as in default tar_van), and then the best-scoring other tokens: the recent
    tokens within the share get +inf, the rest of the window competes on its own score."""
    _, kept = recent_tokens(frame, recent_ratio, tar_share(keep, RECENT_SHARE))
    return score.float().masked_fill(kept, float("inf"))
