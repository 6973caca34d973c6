"""Decides *when* and *how far* to compress: before each block (and each question + answer) it makes
room, by asking the policy which visual tokens each layer and head keeps, or by dropping whole old
dialogue turns when the dialogue outgrows its share. Every compression is recorded as an event."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass

import torch

from potwatch.compression.capped_cache import CappedKVCache, indices_where
from potwatch.compression.policies.base import Policy, VisualTokens
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
    reason: str  # "visual" (policy) or "dialogue" (oldest turn dropped)

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

    @property
    def dialogue_capacity(self) -> int:
        return int(self.dialogue_share * self.cache.capacity) if self.cache.capped else 1 << 62

    def make_room(self, incoming: int) -> CompressionEvent | None:
        """Compress the visual part so that `incoming` more tokens fit; no-op when they already do."""
        cache = self.cache
        if not cache.capped or cache.length + incoming <= cache.capacity:
            return None
        goal = min(int(self.target_ratio * cache.capacity), cache.capacity - incoming)
        visual = cache.kind_counts()[TokenKind.VISION]
        keep_visual = goal - (cache.length - visual)
        if keep_visual < 0:
            raise CacheFullError(
                f"The cache cap of {cache.capacity} tokens cannot hold {incoming} new tokens beside the protected "
                "text; raise --mem-cap."
            )
        if not self.policy.evicts:
            raise CacheFullError(
                f"The cache is full at {cache.length} of {cache.capacity} tokens and policy 'none' evicts nothing; "
                "raise --mem-cap or pick a compressing policy such as tar_van."
            )
        return self._compact("visual", lambda: self._visual_keep(keep_visual))

    def make_room_for_turn(self, incoming: int) -> list[CompressionEvent]:
        """Drop whole oldest dialogue turns until a new turn of `incoming` tokens fits its share, then make room."""
        events = []
        while self.cache.kind_counts()[TokenKind.DIALOGUE] + incoming > self.dialogue_capacity:
            turns = self.cache.layers[0].meta["turn"][0, : self.cache.length]
            oldest = int(turns[turns >= 0].min())
            events.append(self._compact("dialogue", lambda: self._drop_turn(oldest)))
        event = self.make_room(incoming)
        return events + ([event] if event else [])

    def _visual_keep(self, keep_visual: int) -> torch.Tensor:
        """Rows to keep [layers * heads, m]: the protected text, plus the visual tokens the policy picks
        out of every (layer, head) row in one call."""
        cache, n = self.cache, self.cache.length
        is_visual = cache.rows("kind")[:, :n] == TokenKind.VISION
        visual_at = indices_where(is_visual)
        tokens = VisualTokens(
            keys=cache.rows("keys"),  # the cache's own rows: policies read what they need where it lies
            values=cache.rows("values"),
            frame=torch.gather(cache.rows("frame")[:, :n], 1, visual_at),
            row=torch.gather(cache.rows("row")[:, :n], 1, visual_at),
            col=torch.gather(cache.rows("col")[:, :n], 1, visual_at),
            at=visual_at,
        )
        chosen = self.policy.select(tokens, keep_visual)
        keep = (~is_visual).scatter_(1, torch.gather(visual_at, 1, chosen), True)
        return indices_where(keep)

    def _drop_turn(self, turn: int) -> torch.Tensor:
        return indices_where(self.cache.rows("turn")[:, : self.cache.length] != turn)

    def _compact(self, reason: str, keep_rows) -> CompressionEvent:
        started = time.perf_counter()
        before = self.cache.length
        self.cache.compact(keep_rows())
        ms = (time.perf_counter() - started) * 1000
        event = CompressionEvent(
            time_s=time.monotonic() - self._start,
            tokens_before=before,
            tokens_after=self.cache.length,
            frames_covered=len(self.cache.frames_held()),
            ms=ms,
            reason=reason,
        )
        self.events.append(event)
        self.event_count += 1
        self.compression_ms += ms
        return event
