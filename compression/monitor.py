"""Decides *when* and *how far* to compress: before each block (and each question + answer) it makes
room, by asking the policy which visual tokens each layer and head keeps, or by dropping whole old
dialogue turns when the dialogue outgrows its share. Every compression is recorded as an event."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass

import torch

from potwatch.compression.capped_cache import CappedKVCache
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
        return self._compact("visual", lambda layer_index, layer: self._visual_keep(layer_index, layer, keep_visual))

    def make_room_for_turn(self, incoming: int) -> list[CompressionEvent]:
        """Drop whole oldest dialogue turns until a new turn of `incoming` tokens fits its share, then make room."""
        events = []
        while self.cache.kind_counts()[TokenKind.DIALOGUE] + incoming > self.dialogue_capacity:
            turns = self.cache.layers[0].meta["turn"][0, : self.cache.length]
            oldest = int(turns[turns >= 0].min())
            events.append(self._compact("dialogue", lambda i, layer: self._drop_turn(layer, oldest)))
        event = self.make_room(incoming)
        return events + ([event] if event else [])

    def _visual_keep(self, layer_index: int, layer, keep_visual: int) -> torch.Tensor:
        n = layer.length
        kinds = layer.meta["kind"][:, :n]
        visual_at = layer.indices_where(kinds == TokenKind.VISION)
        protected_at = layer.indices_where(kinds != TokenKind.VISION)
        tokens = VisualTokens(
            keys=torch.gather(layer.keys[0], 1, _expand(visual_at, layer.keys.shape[-1])),
            values=torch.gather(layer.values[0], 1, _expand(visual_at, layer.values.shape[-1])),
            frame=torch.gather(layer.meta["frame"][:, :n], 1, visual_at),
            row=torch.gather(layer.meta["row"][:, :n], 1, visual_at),
            col=torch.gather(layer.meta["col"][:, :n], 1, visual_at),
            layer=layer_index,
        )
        chosen = self.policy.select(tokens, keep_visual)
        keep = torch.cat([protected_at, torch.gather(visual_at, 1, chosen)], dim=1)
        return keep.sort(dim=1).values

    @staticmethod
    def _drop_turn(layer, turn: int) -> torch.Tensor:
        n = layer.length
        return layer.indices_where(layer.meta["turn"][:, :n] != turn)

    def _compact(self, reason: str, keep_for_layer) -> CompressionEvent:
        started = time.perf_counter()
        before = self.cache.length
        for index, layer in enumerate(self.cache.layers):
            layer.compact(keep_for_layer(index, layer))
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


def _expand(index: torch.Tensor, dim: int) -> torch.Tensor:
    return index.unsqueeze(-1).expand(*index.shape, dim)
