"""Position bookkeeping for Qwen's multimodal RoPE (M-RoPE), kept by the session, not by the cache.

After any eviction the cache length no longer says where the next token sits, so every forward gets
explicit position ids from here. A video segment starting at `base` gives a token of temporal group g at
(row, col) the ids (base + floor((g - g0) * time_step), base + row, base + col); text continues at the
largest id so far + 1. This is the rule of the original Qwen code (transformers 5.24's `get_rope_index`
ignores the temporal extent, so text after a long video would overlap it)."""

from __future__ import annotations

import torch


class MRopePositions:
    """Explicit 3-row position ids for one stream."""

    rows = 3

    def __init__(self, time_step: float = 1.0):
        self.time_step = time_step  # position step per temporal group (Qwen2.5-VL: tokens_per_second * s/group)
        self.max_position = -1  # largest id handed out so far
        self._segment_base: int | None = None  # base of the open video segment, None after text
        self._segment_first_group = 0

    def text(self, n: int) -> torch.Tensor:
        """Ids [3, n] for n text tokens; closes any open video segment."""
        self._segment_base = None
        start = self.max_position + 1
        ids = torch.arange(start, start + n, dtype=torch.int64)
        self.max_position = start + n - 1 if n else self.max_position
        return ids.unsqueeze(0).expand(3, n).clone()

    def vision(self, group: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """Ids [3, n] for visual tokens of temporal groups `group` (absolute) at patch (row, col)."""
        if self._segment_base is None:
            self._segment_base = self.max_position + 1
            self._segment_first_group = int(group.min())
        base = self._segment_base
        offset = group - self._segment_first_group
        temporal = base + torch.floor(offset.double() * self.time_step).long()
        ids = torch.stack([temporal, base + row.long(), base + col.long()])
        self.max_position = max(self.max_position, int(ids.max()))
        return ids
