"""Per-token metadata kept beside K and V, per layer and KV head, and gathered with the same indices.

It is what lets a policy compare the same patch across frames after many compactions, and what tells
protected text (system prompt, dialogue) from evictable visual tokens."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch


class TokenKind(IntEnum):
    SYSTEM = 0  # system prompt and chat header before the video: never evicted
    VISION = 1  # visual tokens: the only ones a policy may evict
    DIALOGUE = 2  # question/answer turns: evicted only as whole turns, oldest first
    # An empty slot under per-head budgets: a row that keeps fewer visual tokens than the longest row
    # of the cache is padded with holes (count 0, so attention gives them no weight; frame, row, col
    # and turn -1). Never kept by a later selection; only `head_budgets` policies make them.
    HOLE = 3


# (name, dtype) of each metadata field; `pos` has one row per RoPE section (3 for Qwen's M-RoPE).
META_FIELDS: tuple[tuple[str, torch.dtype], ...] = (
    ("kind", torch.int8),
    ("frame", torch.int32),  # sampled frame index (first frame of its temporal group); -1 for text
    ("turn", torch.int32),  # dialogue turn number; -1 for system and vision
    ("row", torch.int16),  # patch row in the frame's token grid; -1 for text
    ("col", torch.int16),  # patch column; -1 for text
)
POS_DTYPE = torch.int32


def meta_bytes_per_token_head(pos_rows: int) -> int:
    """Bytes of metadata one token costs in one (layer, KV head)."""
    scalar = sum(torch.empty(0, dtype=dtype).element_size() for _, dtype in META_FIELDS)
    return scalar + pos_rows * torch.empty(0, dtype=POS_DTYPE).element_size()


@dataclass
class TokenMeta:
    """Metadata of a run of new tokens (the same for every layer and head when they arrive)."""

    kind: torch.Tensor  # [n]
    frame: torch.Tensor  # [n]
    turn: torch.Tensor  # [n]
    row: torch.Tensor  # [n]
    col: torch.Tensor  # [n]
    pos: torch.Tensor  # [pos_rows, n]

    def __len__(self) -> int:
        return self.kind.shape[0]

    @classmethod
    def text(cls, kind: TokenKind, pos: torch.Tensor, turn: int = -1) -> "TokenMeta":
        """Metadata for text tokens at positions `pos` [pos_rows, n]."""
        n = pos.shape[-1]
        full = lambda value: torch.full((n,), value, dtype=torch.int64)  # noqa: E731
        return cls(full(int(kind)), full(-1), full(turn), full(-1), full(-1), pos)

    @classmethod
    def vision(cls, frame: torch.Tensor, row: torch.Tensor, col: torch.Tensor, pos: torch.Tensor) -> "TokenMeta":
        """Metadata for visual tokens, one entry per token."""
        n = frame.shape[0]
        return cls(
            torch.full((n,), int(TokenKind.VISION), dtype=torch.int64),
            frame,
            torch.full((n,), -1, dtype=torch.int64),
            row,
            col,
            pos,
        )
