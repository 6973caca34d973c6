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

    def compact_layout(self, kind, frame, row, col) -> torch.Tensor:
        """Gap-free ids [3, heads, n] for one layer's tokens (see `compact_mrope_layout`)."""
        return compact_mrope_layout(kind, frame, row, col, self.time_step)

    def restart_after(self, largest: int) -> None:
        """After re-numbering: continue past `largest`, in a new video segment."""
        self.max_position = largest
        self._segment_base = None


def compact_mrope_layout(kind: torch.Tensor, frame: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                         time_step: float) -> torch.Tensor:
    """New, gap-free M-RoPE ids [3, heads, n] for the tokens one layer holds, in arrival (buffer) order.

    Walking each head's tokens in order: a text token takes (c, c, c) and advances c by one; a run of
    visual tokens (a video segment) takes base c, its k-th kept temporal group t = c + floor(k*step), and
    rows/columns c + row, c + col, and advances c past its largest id. Evicted frames leave no gap, so
    the largest id stays below the number of tokens held plus one grid side per segment."""
    from potwatch.compression.token_meta import TokenKind

    heads, n = kind.shape
    vision = kind == TokenKind.VISION
    before = torch.zeros(heads, 1, dtype=torch.bool, device=kind.device)
    prev_vision = torch.cat([before, vision[:, :-1]], dim=1)
    prev_frame = torch.cat([torch.full_like(frame[:, :1], -1), frame[:, :-1]], dim=1)
    segment_start = vision & ~prev_vision
    group_start = vision & (segment_start | (frame != prev_frame))
    unit = torch.cumsum(~vision | segment_start, dim=1) - 1  # text tokens and video segments, numbered
    groups_so_far = torch.cumsum(group_start, dim=1)
    first_group = torch.full((heads, n), n + 1, dtype=groups_so_far.dtype, device=kind.device)
    first_group = first_group.scatter_reduce(1, unit, groups_so_far, reduce="amin", include_self=True)
    group_index = groups_so_far - torch.gather(first_group, 1, unit)  # k: kept groups before, in the segment
    temporal = torch.floor(group_index.double() * time_step).long()
    extent = torch.where(
        vision,
        torch.maximum(temporal + 1, torch.maximum(row.long() + 1, col.long() + 1)),
        torch.ones_like(temporal),
    )
    advance = torch.zeros(heads, n, dtype=torch.long, device=kind.device)
    advance = advance.scatter_reduce(1, unit, extent, reduce="amax", include_self=True)
    base = torch.cumsum(advance, dim=1) - advance  # exclusive: where each unit starts
    token_base = torch.gather(base, 1, unit)
    zero = torch.zeros_like(token_base)
    return torch.stack([
        token_base + torch.where(vision, temporal, zero),
        token_base + torch.where(vision, row.long(), zero),
        token_base + torch.where(vision, col.long(), zero),
    ])
