"""Position bookkeeping for Qwen3-VL's interleaved M-RoPE, kept by the session.

Qwen3-VL separates every temporal group of a video with a text timestamp ("<1.2 seconds>"), so each
group is its own one-group video segment: its tokens take (s, s + row, s + col) from a fresh base s,
and the text after it continues at the largest id + 1 (= s + max(grid h, grid w)). That is
`MRopePositions` with a new segment per group. The timestamp and <|vision_start|>/<|vision_end|> tokens
of a group are visual tokens of its frame (evicted with it) but take text positions, so the gap-free
layout after compaction treats them as text."""

from __future__ import annotations

import torch

from potwatch.compression.token_meta import TokenKind
from potwatch.models.positions import MRopePositions, compact_mrope_layout


class Qwen3Positions(MRopePositions):
    """Explicit 3-row ids for one Qwen3-VL stream (temporal step 1: one group per segment), and the
    stream's sampling rate, which the timestamps need."""

    def __init__(self, fps: float) -> None:
        super().__init__(time_step=1.0)
        self.fps = fps

    def compact_layout(self, kind, frame, row, col) -> torch.Tensor:
        """Gap-free ids [3, heads, n]: a group's header/footer tokens (row < 0) count as text."""
        text_like = (kind == TokenKind.VISION) & (row < 0)
        kind = torch.where(text_like, torch.full_like(kind, int(TokenKind.DIALOGUE)), kind)
        return compact_mrope_layout(kind, frame, row, col, self.time_step)
