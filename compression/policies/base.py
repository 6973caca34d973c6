"""What every compression policy receives and returns, and the registry of policies by name.

A policy sees the evictable (visual) tokens of each KV head of each layer, one head per row, and says
which of them to keep in every row. It never sees the question and never knows the model family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from potwatch.compression.query_stats import QueryStats
from potwatch.errors import UnknownPolicyError


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
    # (`Policy.value_norms`): the same numbers `value_norms` would compute, without reading V.
    value_norm_rows: torch.Tensor | None = None

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

    def value_norms(self) -> torch.Tensor:
        """L2 norm of each visual token's value (VaN, Eq. 7), in float32: the stored norms when the cache
        keeps them, else computed from the values (without copying them)."""
        if self.value_norm_rows is not None:
            return self.pick(self.value_norm_rows)
        if not isinstance(self.values, torch.Tensor):  # a quantised cache's values, decoded a chunk at a time
            return self.pick(self.values.norms())
        return self.pick(torch.linalg.vector_norm(self.values, dim=-1, dtype=torch.float32))


class Policy:
    """Base of all policies. `evicts` is False only for `none`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # one line for people (the web UI's policy list)
    evicts: ClassVar[bool] = True
    needs_queries: ClassVar[bool] = False  # the session captures each vision block's queries for it
    token_scores: ClassVar[bool] = False  # the cache keeps a float32 score per token, layer and head
    # The cache keeps a count per slot (the tokens it stands for) and attention adds its log to the
    # slot's logit (models/count_attention.py): for policies that merge tokens, or leave empty slots.
    slot_counts: ClassVar[bool] = False
    # Each (layer, KV head) row keeps its own number of visual tokens (`select_budgets`); rows that keep
    # fewer than the longest are padded with holes. Needs `slot_counts` (a hole counts 0).
    head_budgets: ClassVar[bool] = False
    # The cache stores each token's value norm (float32 per token, layer and KV head, counted in the cap)
    # when it arrives, so ranking by VaN does not read every value again at each compression.
    value_norms: ClassVar[bool] = False

    def observe(self, queries: QueryStats, keys: torch.Tensor, scores: torch.Tensor | None, length: int,
                visual: torch.Tensor | None = None, counts: torch.Tensor | None = None) -> None:
        """Called after each vision block with its queries, the cache's key rows [heads, N, head_dim] and,
        for `token_scores` policies, the score rows [heads, N] to update in place (the first `length`
        entries are held, the block's tokens last); `visual` [heads, length] marks the visual tokens and
        `counts` [heads, N] are the slot counts (None without them). Does nothing unless a policy needs it."""

    def select(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        """Indices (into `tokens`) to keep per head: LongTensor [heads, keep], ascending in each row."""
        raise NotImplementedError

    def select_budgets(self, tokens: VisualTokens, keep: int, longest: int, kv_heads: int) -> torch.Tensor:
        """For `head_budgets` policies: which visual tokens each row keeps, bool [heads, n], rows in
        (layer, KV head) order; each layer's `kv_heads` rows keep heads x `keep` together (fewer only
        when they hold fewer), no row more than `longest`, and no hole (`tokens.valid` False)."""
        raise NotImplementedError

    def fold(self, tokens: VisualTokens, chosen: torch.Tensor, counts: torch.Tensor) -> None:
        """Called between `select` and the compaction for `slot_counts` policies, with the `chosen`
        indices and the cache's count rows [heads, N]: a merging policy folds the tokens about to be
        dropped into the chosen ones, writing `tokens.keys`, `tokens.values` (the cache's own rows) and
        `counts` in place. Does nothing unless a policy merges."""


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
