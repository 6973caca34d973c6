"""What every compression policy is, and the registry of policies by name.

A policy sees the evictable (visual) tokens of each KV head of each layer, one head per row, and says
which of them to keep in every row. It never sees the question and never knows the model family.

The base class does what every policy would repeat: nothing to choose (keep 0, or keep all), and the
top-k of a ranking. A scoring policy is a `score()` and its settings (`ScoringPolicy`: the recent
frames first, then the best scores); the per-token state it needs is declared (`per_token_state`) and
the cache does the rest. A policy is registered by its `name` when its class is made; the registry
imports every module of this package on the first lookup, so a new policy is one new file."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import ClassVar

import torch

from potwatch.compression.policies.recent_first import recent_then_best
from potwatch.compression.policies.selection import check_ratio, top_indices, trivial_selection
from potwatch.compression.policies.visual_tokens import VisualTokens
from potwatch.compression.query_stats import QueryStats
from potwatch.compression.token_state import SCORE, SLOT_COUNT, VALUE_NORM, TokenState
from potwatch.errors import UnknownPolicyError

__all__ = ["Policy", "ScoringPolicy", "VisualTokens", "POLICIES", "make_policy", "policy_names", "register"]

POLICIES: dict[str, type["Policy"]] = {}


class Policy:
    """Base of all policies. `evicts` is False only for `none`. A subclass with a `name` of its own is
    registered under it."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # one line for people (the web UI's policy list)
    evicts: ClassVar[bool] = True
    needs_queries: ClassVar[bool] = False  # the session captures each vision block's queries for it
    # An ablation of another policy (tar, van): benchmarks that compare methods leave it out.
    ablation: ClassVar[bool] = False
    # What the cache keeps per token, layer and KV head for this policy, counted in the cap; a state read
    # by attention (the slot counts of merging policies) also switches the model's attention to read it.
    per_token_state: ClassVar[tuple[TokenState, ...]] = ()
    # Each (layer, KV head) row keeps its own number of visual tokens (`select_budgets`); rows that keep
    # fewer than the longest are padded with holes. Needs SLOT_COUNT (a hole counts 0).
    head_budgets: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            POLICIES[cls.name] = cls

    # --- what a policy keeps, for its callers -------------------------------------------------------
    def keeps(self, state: TokenState) -> bool:
        return any(kept.name == state.name for kept in self.per_token_state)

    @property
    def token_scores(self) -> bool:
        """The cache keeps a running score per token (SCORE)."""
        return self.keeps(SCORE)

    @property
    def slot_counts(self) -> bool:
        """The cache keeps a count per slot (SLOT_COUNT): merged slots, or holes. A quantised cache cannot."""
        return self.keeps(SLOT_COUNT)

    @property
    def value_norms(self) -> bool:
        """The cache stores each token's |v| on arrival (VALUE_NORM)."""
        return self.keeps(VALUE_NORM)

    @property
    def attention_reads_state(self) -> bool:
        """Attention must read one of the policy's per-token states (the slot counts)."""
        return any(state.attention_kwarg for state in self.per_token_state)

    # --- the hooks ----------------------------------------------------------------------------------
    def observe(self, queries: QueryStats, keys: torch.Tensor, state: dict[str, torch.Tensor], length: int,
                visual: torch.Tensor | None = None) -> None:
        """Called after each vision block with its queries, the cache's key rows [heads, N, head_dim] and
        the rows [heads, N] of each declared per-token state, by name, to update in place (the first
        `length` entries are held, the block's tokens last); `visual` [heads, length] marks the visual
        tokens. Does nothing unless a policy keeps something between blocks."""

    def select(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        """Indices (into `tokens`) to keep per head: LongTensor [heads, keep], ascending in each row."""
        done = trivial_selection(tokens.heads, tokens.count, keep, tokens.device)
        if done is not None:
            return done
        return self.choose(tokens, keep)

    def choose(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        """`select` once there is something to choose (0 < keep < n): the top `keep` of `ranking`."""
        return top_indices(self.ranking(tokens, keep), keep)

    def ranking(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        """A ranking [heads, n] whose top `keep` (ties to the earlier token) is the kept set."""
        raise NotImplementedError(f"policy '{self.name}' defines neither ranking() nor choose()")

    def select_budgets(self, tokens: VisualTokens, keep: int, longest: int, kv_heads: int) -> torch.Tensor:
        """For `head_budgets` policies: which visual tokens each row keeps, bool [heads, n], rows in
        (layer, KV head) order; each layer's `kv_heads` rows keep heads x `keep` together (fewer only
        when they hold fewer), no row more than `longest`, and no hole (`tokens.valid` False)."""
        raise NotImplementedError

    def fold(self, tokens: VisualTokens, chosen: torch.Tensor) -> None:
        """Called between `select` and the compaction with the `chosen` indices: a merging policy folds
        the tokens about to be dropped into the chosen ones, writing `tokens.keys`, `tokens.values` and
        its state rows (`tokens.state`: the cache's own rows) in place. Does nothing unless a policy merges."""


@dataclass
class ScoringPolicy(Policy):
    """A policy that is a per-token `score()` and settings: the r newest frames of each head are kept
    whole first (as tar_van keeps them, up to RECENT_SHARE of the budget; `recent_tokens`), then the
    highest scores."""

    recent_ratio: float = 0.125

    def __post_init__(self) -> None:
        check_ratio("recent_ratio", self.recent_ratio)

    def score(self, tokens: VisualTokens) -> torch.Tensor:
        """How much each visual token is worth keeping [heads, n] (higher stays)."""
        raise NotImplementedError

    def ranking(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        return recent_then_best(self.score(tokens), tokens.frame, self.recent_ratio, keep)


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator, for a policy class made outside this package (a test's, say): register it under
    its `name` (a subclass of `Policy` with a name registers itself; this only makes it explicit)."""
    POLICIES[cls.name] = cls
    return cls


_discovered = False


def _discover() -> None:
    """Import every module of this package once: each policy class registers itself as it is made."""
    global _discovered
    if _discovered:
        return
    import potwatch.compression.policies as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    _discovered = True


def make_policy(name: str, **options) -> Policy:
    """Build a registered policy by name, with its dataclass options."""
    _discover()
    if name not in POLICIES:
        known = ", ".join(sorted(POLICIES))
        raise UnknownPolicyError(f"Unknown policy '{name}'; pick one of: {known}.")
    return POLICIES[name](**options)


def policy_names() -> list[str]:
    _discover()
    return sorted(POLICIES)


def policy_classes() -> dict[str, type[Policy]]:
    """Every registered policy class by name (the web UI's list, the benchmarks' defaults)."""
    _discover()
    return dict(POLICIES)
