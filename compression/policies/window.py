"""`window`: a sliding window over the visual tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from potwatch.compression.policies.base import Policy, VisualTokens, register
from potwatch.compression.policies.selection import trivial_selection


@register
@dataclass
class WindowPolicy(Policy):
    """Keep the `keep` most recent tokens in cache order (the largest indices); the baseline that
    forgets everything older than the window."""

    name: ClassVar[str] = "window"
    description: ClassVar[str] = "keeps only the newest frames: a sliding window"

    def select(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        done = trivial_selection(tokens.heads, tokens.count, keep, tokens.device)
        if done is not None:
            return done
        n = tokens.count
        return torch.arange(n - keep, n, device=tokens.device).expand(tokens.heads, keep).contiguous()
