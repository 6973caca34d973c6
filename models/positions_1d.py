"""Position bookkeeping for language models with plain 1-D RoPE (LLaVA-OneVision's Qwen2, SmolVLM's
Llama), kept by the session, not by the cache.

After any eviction the cache length no longer says where the next token sits, so every forward gets
explicit position ids from here. Text and visual tokens alike take the next id, one per token, which
is what the stock model does with `arange` over the whole prompt."""

from __future__ import annotations

import torch


class Positions1D:
    """Explicit 1-row position ids for one stream; the same methods as `MRopePositions`."""

    rows = 1

    def __init__(self) -> None:
        self.max_position = -1  # largest id handed out so far

    def _next(self, n: int) -> torch.Tensor:
        start = self.max_position + 1
        self.max_position += n
        return torch.arange(start, start + n, dtype=torch.int64).unsqueeze(0)

    def text(self, n: int) -> torch.Tensor:
        """Ids [1, n] for n text tokens."""
        return self._next(n)

    def vision(self, group: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """Ids [1, n] for n visual tokens given in sequence order; their patch coordinates do not matter."""
        return self._next(int(group.shape[0]))

    def compact_layout(self, kind: torch.Tensor, frame: torch.Tensor, row: torch.Tensor,
                       col: torch.Tensor) -> torch.Tensor:
        """Gap-free ids [1, heads, n] for one layer's tokens in arrival (buffer) order: 0, 1, 2, ... per head.

        Without eviction this is the original layout; after eviction the kept tokens close ranks."""
        heads, n = kind.shape
        return torch.arange(n, dtype=torch.int64, device=kind.device).expand(1, heads, n).clone()

    def restart_after(self, largest: int) -> None:
        """After re-numbering: continue past `largest`."""
        self.max_position = largest


class FrameClockPositions(Positions1D):
    """1-D positions plus the stream's sampling rate, for families whose prompt prints each frame's time."""

    def __init__(self, fps: float) -> None:
        super().__init__()
        self.fps = fps
