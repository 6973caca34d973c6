"""The ranking the attention-informed policies share: the recent frames first, as tar_van keeps them,
then the policy's own score."""

from __future__ import annotations

import torch

from potwatch.compression.policies.selection import recent_tokens


def recent_then_best(score: torch.Tensor, frame: torch.Tensor, recent_ratio: float, keep: int) -> torch.Tensor:
    """A ranking [H, n] whose top `keep` is the recent window (as in `recent_tokens`) and then the
    best-scoring older tokens: recent tokens that fit get +inf, recent ones that do not fit -inf."""
    in_recent, kept = recent_tokens(frame, recent_ratio, keep)
    return score.float().masked_fill(kept, float("inf")).masked_fill(in_recent & ~kept, float("-inf"))
