"""`none`: never evict; the monitor reports a full cache to the user instead."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from potwatch.compression.policies.base import Policy, VisualTokens


@dataclass
class NoEvictionPolicy(Policy):
    """Keeps every token. The monitor checks `evicts` and raises the user-facing CacheFullError before
    it would ask for a cut, so a cut reaching `select` is a bug and fails loudly."""

    name: ClassVar[str] = "none"
    description: ClassVar[str] = "never compresses: the stream stops when the cache is full"
    evicts: ClassVar[bool] = False

    def select(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        if 0 <= keep < tokens.count:
            raise RuntimeError(
                f"policy 'none' was asked to keep {keep} of {tokens.count} tokens; it never evicts "
                "(the monitor should have stopped with CacheFullError)"
            )
        return super().select(tokens, keep)
