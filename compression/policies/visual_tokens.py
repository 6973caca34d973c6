"""What every compression policy receives: the evictable (visual) tokens of every KV head of every
layer, one head per row, with the per-token state the policy declared."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from potwatch.compression.query_stats import QueryStats
from potwatch.compression.token_state import SCORE, SLOT_COUNT, VALUE_NORM


@dataclass
class VisualTokens:
    """Visual tokens per KV head (the monitor passes every head of every layer at once, one per row), in
    the order they sit in the cache (oldest first).

    Every head holds the same number of tokens `n`, but not necessarily the same tokens. `keys` and
    `values` may be whole cache rows (protected tokens and free room included) with `at` saying which
    entries are the visual tokens: the monitor hands over the cache's own storage that way, so no policy
    pays for a copy of K/V it does not read. With `at=None` every entry is a visual token."""

    # [heads, N >= n, head_dim], cached keys (after RoPE); for a quantised cache a `QuantizedView` that
    # decodes them where they are read (policies go through selection.key_chunks / select_keys)
    keys: torch.Tensor
    values: torch.Tensor  # [heads, N, head_dim] (a `QuantizedView` for a quantised cache, read by value_norms)
    frame: torch.Tensor  # [heads, n] int, index of the frame each token came from
    row: torch.Tensor  # [heads, n] int, patch row inside its frame's grid
    col: torch.Tensor  # [heads, n] int, patch column inside its frame's grid
    at: torch.Tensor | None = None  # [heads, n] rows of keys/values holding the visual tokens; None = all
    # Only for policies that ask (`needs_queries`, `token_scores`); None otherwise:
    queries: QueryStats | None = None  # the latest vision block's queries, one row per head as above
    history: torch.Tensor | None = None  # [heads, n] float32, each visual token's running score
    # Only under per-head budgets (`head_budgets`): [heads, n] bool, False for the holes padding the
    # rows that keep fewer tokens (frame, row, col -1); they are never kept. None: every entry is a token.
    valid: torch.Tensor | None = None
    counts: torch.Tensor | None = None  # [heads, n] float32 slot counts, when the cache keeps them
    # [heads, N] float32, the |v| stored for each row of `values` when the cache keeps value norms
    # (the policy declares `VALUE_NORM`): the same numbers `value_norms` would compute, without reading V.
    value_norm_rows: torch.Tensor | None = None
    # [heads, N] rows of every per-token state the cache keeps (the policy's `per_token_state`), by name;
    # the built-in states also fill the views above (history, counts, value_norm_rows) when not given.
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.history is None and SCORE.name in self.state:
            self.history = self.state_at(SCORE.name)
        if self.counts is None and SLOT_COUNT.name in self.state:
            self.counts = self.state_at(SLOT_COUNT.name)
        if self.value_norm_rows is None and VALUE_NORM.name in self.state:
            self.value_norm_rows = self.state[VALUE_NORM.name]

    @property
    def heads(self) -> int:
        return self.frame.shape[0]

    @property
    def count(self) -> int:
        return self.frame.shape[1]

    @property
    def device(self) -> torch.device:
        return self.frame.device

    def rows(self) -> torch.Tensor:
        """Row of keys/values holding each visual token, [heads, n]."""
        if self.at is not None:
            return self.at
        return torch.arange(self.count, device=self.device).expand(self.heads, self.count)

    def pick(self, per_row: torch.Tensor) -> torch.Tensor:
        """The visual tokens' entries [heads, n] of a per-row quantity [heads, N]."""
        return per_row if self.at is None else per_row.gather(1, self.at)

    def state_at(self, name: str) -> torch.Tensor | None:
        """The visual tokens' entries [heads, n] of one per-token state the cache keeps; None without it."""
        rows = self.state.get(name)
        return None if rows is None else self.pick(rows)

    def value_norms(self) -> torch.Tensor:
        """L2 norm of each visual token's value (VaN, Eq. 7), in float32: the stored norms when the cache
        keeps them, else computed from the values (without copying them)."""
        if self.value_norm_rows is not None:
            return self.pick(self.value_norm_rows)
        if not isinstance(self.values, torch.Tensor):  # a quantised cache's values, decoded a chunk at a time
            return self.pick(self.values.norms())
        return self.pick(torch.linalg.vector_norm(self.values, dim=-1, dtype=torch.float32))
