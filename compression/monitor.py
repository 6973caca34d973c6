"""Decides *when* and *how far* to compress: before each block (and each question + answer) it makes
room, by asking the policy which visual tokens each layer and head keeps, and by dropping whole old
dialogue turns beyond the dialogue's share. Every compression is recorded as an event.

Compaction is left to the stream wherever it can be: a block makes room for itself plus a nominal
question and answer (`headroom`), and a question that fits in the free room never compacts, even
when the dialogue has grown past its share for the moment: the turns beyond it go in the next pass,
which restores the share. So asking does not wait on a compaction in the usual case."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass

import torch

from potwatch.compression.capped_cache import CappedKVCache, indices_where
from potwatch.compression.head_budgets import pad_with_holes
from potwatch.compression.quantized_kv import QuantizedView
from potwatch.compression.policies.base import Policy, VisualTokens
from potwatch.compression.query_stats import QueryStats
from potwatch.compression.token_meta import TokenKind
from potwatch.errors import CacheFullError

EVENT_HISTORY = 1000  # events kept in memory; older ones are only counted


@dataclass
class CompressionEvent:
    time_s: float  # seconds since the monitor started
    tokens_before: int
    tokens_after: int
    frames_covered: int  # distinct frames with tokens left after the compression
    ms: float
    reason: str  # "visual" (the policy ran; old turns may have gone too) or "dialogue" (old turns only)
    dialogue_tokens: int = 0  # dialogue tokens left after the compression: within the share

    def as_dict(self) -> dict:
        return asdict(self)


class CompressionMonitor:
    """Owns the timing of compression; the policy owns which tokens; the cache owns the tensors."""

    def __init__(self, cache: CappedKVCache, policy: Policy, target_ratio: float = 0.75, dialogue_share: float = 0.25):
        self.cache = cache
        self.policy = policy
        self.target_ratio = target_ratio
        self.dialogue_share = dialogue_share
        self.events: deque[CompressionEvent] = deque(maxlen=EVENT_HISTORY)
        self.event_count = 0
        self.compression_ms = 0.0
        self._start = time.monotonic()
        self.queries: QueryStats | None = None  # the latest vision block's, for policies that need queries

    def observe(self, queries: QueryStats) -> None:
        """A vision block just went into the cache: keep its queries for the policy's next selection
        and let the policy update the per-token state it keeps (running scores, say)."""
        self.queries = queries
        cache, n = self.cache, self.cache.length
        visual, state = cache.rows("kind")[:, :n] == TokenKind.VISION, cache.all_state_rows()
        if not cache.quantized:
            self.policy.observe(queries, cache.rows("keys"), state, n, visual=visual)
            return
        if type(self.policy).observe is Policy.observe:  # keeps nothing between blocks: decode nothing
            return
        for rows, layer in self._layer_rows():  # a quantised cache is decoded one layer at a time
            keys = layer.dequantized(values=False)[0][0]
            self.policy.observe(queries.rows(rows), keys, {name: part[rows] for name, part in state.items()}, n,
                                visual=visual[rows])

    @property
    def dialogue_capacity(self) -> int:
        return int(self.dialogue_share * self.cache.capacity) if self.cache.capped else 1 << 62

    def make_room(self, incoming: int, headroom: int = 0, dialogue: bool = False) -> CompressionEvent | None:
        """Compress so that `incoming` more tokens fit (a block, or a `dialogue` turn), leaving `headroom`
        more free where it can; no-op when they fit already. One pass drops the oldest dialogue turns
        beyond the share (counting the incoming turn) and, unless that alone makes the room, lets the
        policy thin the visual tokens down to min(target_ratio * cap, cap - incoming - headroom)."""
        cache = self.cache
        if not cache.capped or cache.length + incoming + headroom <= cache.capacity:
            return None
        turns, turn_tokens = self._turns_beyond_share(incoming if dialogue else 0)
        length = cache.length - turn_tokens
        if length + incoming + headroom <= cache.capacity:
            return self._compact("dialogue", lambda: self._keep_rows(turns, None))
        kinds = cache.kind_counts()
        protected = kinds[TokenKind.SYSTEM] + kinds[TokenKind.DIALOGUE] - turn_tokens
        keep_visual = min(int(self.target_ratio * cache.capacity), cache.capacity - incoming - headroom) - protected
        longest = cache.capacity - incoming - headroom - protected  # the most a row may keep (head budgets)
        if keep_visual < 0:  # the headroom is a wish; the incoming tokens are a must
            keep_visual = min(int(self.target_ratio * cache.capacity), cache.capacity - incoming) - protected
            longest = keep_visual
        if keep_visual < 0:
            raise CacheFullError(
                f"The cache cap of {cache.capacity} tokens cannot hold {incoming} new tokens beside the protected "
                "text; raise --mem-cap."
            )
        if not self.policy.evicts:
            if length + incoming <= cache.capacity:
                return self._compact("dialogue", lambda: self._keep_rows(turns, None))
            raise CacheFullError(
                f"The cache is full at {cache.length} of {cache.capacity} tokens and policy 'none' evicts nothing; "
                "raise --mem-cap or pick a compressing policy such as tar_van."
            )
        return self._compact("visual", lambda: self._keep_rows(turns, keep_visual, max(keep_visual, longest)))

    def thin_visual(self, keep_visual: int, longest: int | None = None) -> CompressionEvent:
        """Compress now to `keep_visual` visual tokens per row (for a `head_budgets` policy: per row on
        average over each layer, none above `longest`, default `keep_visual`), dropping no turn: the
        fixed point benchmarks compare policies at."""
        return self._compact("visual", lambda: self._keep_rows([], keep_visual, longest or keep_visual))

    def make_room_for_turn(self, incoming: int) -> list[CompressionEvent]:
        """Make room for a question and its answer (`incoming` tokens); see `make_room`."""
        event = self.make_room(incoming, dialogue=True)
        return [event] if event else []

    def _turns_beyond_share(self, incoming: int) -> tuple[list[int], int]:
        """The oldest turns to drop so that the dialogue plus `incoming` fits its share, and their tokens."""
        turn = self.cache.rows("turn")[0, : self.cache.length]  # every row holds the same dialogue
        numbers, sizes = torch.unique(turn[turn >= 0], return_counts=True)  # ascending: oldest first
        held = int(sizes.sum())
        dropped, tokens = [], 0
        for number, size in zip(numbers.tolist(), sizes.tolist()):
            if held - tokens + incoming <= self.dialogue_capacity:
                break
            dropped.append(number)
            tokens += size
        return dropped, tokens

    def _keep_rows(self, dropped_turns: list[int], keep_visual: int | None,
                   longest: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows to keep [layers * heads, m]: all but the dropped turns, and of the visual tokens the
        `keep_visual` the policy picks out of every (layer, head) row in one call (all when None).

        A `head_budgets` policy keeps a different count per row instead (each layer's rows together
        keeping heads x keep_visual, none more than `longest`); the shorter rows are then padded with
        holes up to the longest, whose places in the kept rows come back as the second result."""
        cache, n = self.cache, self.cache.length
        turn = cache.rows("turn")[:, :n]
        if dropped_turns:
            keep = ~torch.isin(turn, torch.tensor(dropped_turns, dtype=turn.dtype, device=turn.device))
        else:
            keep = torch.ones(turn.shape, dtype=torch.bool, device=turn.device)
        if keep_visual is None:
            return indices_where(keep), None
        kind = cache.rows("kind")[:, :n]
        is_visual = kind == TokenKind.VISION
        evictable = is_visual | (kind == TokenKind.HOLE)  # the same count in every row
        visual_at = indices_where(evictable)
        holes = bool((kind == TokenKind.HOLE).any())
        if holes and not self.policy.head_budgets:
            raise RuntimeError(f"the cache holds holes but policy '{self.policy.name}' keeps no per-head budgets")
        keep &= ~evictable
        if cache.quantized:  # every head of a layer keeps the same tokens (no budgets, no merging: see session)
            chosen = self._select_by_layer_vote(visual_at, keep_visual)
            keep.scatter_(1, torch.gather(visual_at, 1, chosen), True)
            return indices_where(keep), None
        tokens = self._visual_tokens(visual_at, valid=is_visual.gather(1, visual_at) if holes else None)
        if self.policy.head_budgets:
            chosen = self.policy.select_budgets(tokens, keep_visual, longest, cache.geometry.kv_heads)
            keep.scatter_(1, visual_at, chosen)
            return pad_with_holes(keep, evictable)
        chosen = self.policy.select(tokens, keep_visual)
        self.policy.fold(tokens, chosen)  # a merging policy folds what goes into what stays, before it goes
        keep.scatter_(1, torch.gather(visual_at, 1, chosen), True)
        return indices_where(keep), None

    def _visual_tokens(self, visual_at: torch.Tensor, rows: slice = slice(None), decoded=None,
                       valid: torch.Tensor | None = None) -> VisualTokens:
        """The visual tokens of `rows` (all by default). The cache's own K/V rows unless `decoded` gives
        (keys, values) to read instead (a quantised cache's, decoded where they are read): policies read
        what they need where it lies."""
        cache, n = self.cache, self.cache.length
        keys, values = decoded if decoded is not None else (cache.rows("keys"), cache.rows("values"))
        return VisualTokens(
            keys=keys,
            values=values,
            frame=torch.gather(cache.rows("frame")[rows, :n], 1, visual_at),
            row=torch.gather(cache.rows("row")[rows, :n], 1, visual_at),
            col=torch.gather(cache.rows("col")[rows, :n], 1, visual_at),
            at=visual_at,
            queries=None if self.queries is None else self.queries.rows(rows),
            valid=valid,
            state={name: part[rows] for name, part in cache.all_state_rows().items()},
        )

    def _layer_rows(self):
        """(rows of the monitor's layout, layer) for each layer: its heads are rows [l * heads, (l + 1) * heads)."""
        heads = self.cache.geometry.kv_heads
        for index, layer in enumerate(self.cache.layers):
            yield slice(index * heads, (index + 1) * heads), layer

    def _select_by_layer_vote(self, visual_at: torch.Tensor, keep: int) -> torch.Tensor:
        """For a quantised cache (every head of a layer holds the same tokens): the policy chooses per head,
        once over every row, reading K and V decoded where it reads them (`QuantizedView`: VaN reads the
        stored value norms, so V is decoded only for a cache without them), and the `keep` tokens most heads
        of a layer chose stay in all of them (the newer one on a tie). Returns indices into the visual
        tokens [layers * heads, keep], ascending."""
        cache, geometry = self.cache, self.cache.geometry
        decoded = (QuantizedView.of(cache, "key"), QuantizedView.of(cache, "value"))
        picks = self.policy.select(self._visual_tokens(visual_at, decoded=decoded), keep)  # [rows, keep]
        count, layers, heads = visual_at.shape[1], geometry.layers, geometry.kv_heads
        layer_of_row = torch.arange(layers, device=picks.device).repeat_interleave(heads)
        votes = torch.bincount((picks + (layer_of_row * count)[:, None]).view(-1), minlength=layers * count)
        rank = votes.view(layers, count) * count + torch.arange(count, device=picks.device)  # unique; ties: newer
        chosen = torch.topk(rank, keep, dim=1, sorted=False).indices.sort(dim=1).values
        return chosen.repeat_interleave(heads, dim=0)

    def _compact(self, reason: str, keep_rows) -> CompressionEvent:
        started = time.perf_counter()
        before = self.cache.length
        keep, holes = keep_rows()
        self.cache.compact(keep)
        if holes is not None:
            self.cache.mark_holes(holes)
        ms = (time.perf_counter() - started) * 1000
        event = CompressionEvent(
            time_s=time.monotonic() - self._start,
            tokens_before=before,
            tokens_after=self.cache.length,
            frames_covered=len(self.cache.frames_held()),
            ms=ms,
            reason=reason,
            dialogue_tokens=self.cache.kind_counts()[TokenKind.DIALOGUE],
        )
        self.events.append(event)
        self.event_count += 1
        self.compression_ms += ms
        return event
