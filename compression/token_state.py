"""Per-token state a policy keeps beside K and V, declared by the policy (`Policy.per_token_state`).

The cache knows nothing about any particular state: it sizes, counts in the cap, allocates, fills on
arrival, moves on every compaction and blanks in holes whatever the policy declares, one number per
token, layer and KV head. A policy with state of its own declares a `TokenState` and reads it back from
`VisualTokens.state` (and `observe`'s `state`), so it stays one file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class TokenState:
    """One number per token, layer and KV head, stored in the cache under `name`.

    `initial` is a new token's value (and that of a slot nothing was written to), unless `on_arrival`
    works it out from the token's stored keys and values [heads, n, head_dim] (returning [heads, n]).
    `hole` is an empty slot's value under per-head budgets. With `attention_kwarg`, each layer's update
    hands its held rows [heads, length] to the attention function under that keyword."""

    name: str
    dtype: torch.dtype = torch.float32
    initial: float = 0.0
    hole: float = 0.0
    on_arrival: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    attention_kwarg: str | None = None

    @property
    def element_size(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()


def value_norm(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """|v| of each token (VaN, Eq. 7), in float32."""
    return torch.linalg.vector_norm(values, dim=-1, dtype=torch.float32)


# The states the built-in policies share.
# A policy's running per-token score (global_score): a new token has no history yet.
SCORE = TokenState("score", torch.float32)
# How many original tokens a slot stands for (1 for a new token; more after merging, 0 for a hole):
# float32 so its log goes straight into the attention bias (models/count_attention.py), exact up to 2**24.
SLOT_COUNT = TokenState("count", torch.float32, initial=1.0, attention_kwarg="slot_counts")
# Each token's value norm, taken once when it arrives (policies ranking by VaN): a compression pass then
# ranks without reading V again.
VALUE_NORM = TokenState("value_norm", torch.float32, on_arrival=value_norm)


def union(*declarations: tuple[TokenState, ...]) -> tuple[TokenState, ...]:
    """Every state any of `declarations` names, once each, in first-seen order (a cache several
    policies share, as the benchmarks build)."""
    seen: dict[str, TokenState] = {}
    for states in declarations:
        for state in states:
            seen.setdefault(state.name, state)
    return tuple(seen.values())
