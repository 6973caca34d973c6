"""What every compression policy receives and returns, and the registry of policies by name.

A policy sees one layer's evictable (visual) tokens at a time, per KV head, and says which of them
to keep. It never sees the question and never knows the model family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from potwatch.errors import UnknownPolicyError


@dataclass
class VisualTokens:
    """One layer's visual tokens, per KV head, in the order they sit in the cache (oldest first).

    Every head holds the same number of tokens `n`, but not necessarily the same tokens."""

    keys: torch.Tensor  # [heads, n, head_dim], cached keys (after RoPE)
    values: torch.Tensor  # [heads, n, head_dim]
    frame: torch.Tensor  # [heads, n] int, index of the frame each token came from
    row: torch.Tensor  # [heads, n] int, patch row inside its frame's grid
    col: torch.Tensor  # [heads, n] int, patch column inside its frame's grid
    layer: int = 0

    @property
    def heads(self) -> int:
        return self.keys.shape[0]

    @property
    def count(self) -> int:
        return self.keys.shape[1]


class Policy:
    """Base of all policies. `evicts` is False only for `none`."""

    name: ClassVar[str] = ""
    evicts: ClassVar[bool] = True

    def select(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        """Indices (into `tokens`) to keep per head: LongTensor [heads, keep], ascending in each row."""
        raise NotImplementedError


POLICIES: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make a policy available by its `name`."""
    POLICIES[cls.name] = cls
    return cls


def make_policy(name: str, **options) -> Policy:
    """Build a registered policy by name, with its dataclass options."""
    from potwatch.compression import policies as _load_all  # noqa: F401  (registers every policy file)

    if name not in POLICIES:
        known = ", ".join(sorted(POLICIES))
        raise UnknownPolicyError(f"Unknown policy '{name}'; pick one of: {known}.")
    return POLICIES[name](**options)


def policy_names() -> list[str]:
    from potwatch.compression import policies as _load_all  # noqa: F401

    return sorted(POLICIES)
