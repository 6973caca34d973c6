"""`window`: a sliding window over the visual tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from potwatch.compression.policies.base import Policy, VisualTokens


@dataclass
class WindowPolicy(Policy):
    """Keep the `keep` most recent tokens in cache order (the largest indices); the baseline that
    forgets everything older than the window."""

    name: ClassVar[str] = "window"
    description: ClassVar[str] = "keeps only the newest frames: a sliding window"

    def ranking(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        """The cache index itself: the newest rank highest."""
        return torch.arange(tokens.count, dtype=torch.float32, device=tokens.device).expand(tokens.heads, -1)
