"""`uniform`: evenly spaced frames, the content-blind baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from potwatch.compression.policies.base import Policy, VisualTokens
from potwatch.compression.policies.selection import evenly_spaced, frame_ranks, mask_to_indices


@dataclass
class UniformPolicy(Policy):
    """Keep whole frames evenly spaced across the frames each head holds, ignoring content.

    Per head, with F frames present and n tokens: m = max(1, floor(keep * F / n)) frames (as many as
    fit at the average frame size), the ones of rank floor((j + 1/2) * F / m) in time order. Old frames
    may have been thinned by earlier cuts, so their tokens rarely add up to `keep` exactly: if short,
    the gap is filled with tokens evenly spaced (in time order) through the other frames; if over, the
    chosen frames' tokens are thinned evenly. Either way the result is exactly `keep` and deterministic."""

    name: ClassVar[str] = "uniform"
    description: ClassVar[str] = "keeps evenly spaced frames, whatever they show (the content-blind baseline)"

    def choose(self, tokens: VisualTokens, keep: int) -> torch.Tensor:
        heads, n = tokens.heads, tokens.count
        rank, order, frames = frame_ranks(tokens.frame, newest_first=False)  # time order: frame, then index
        wanted = (keep * frames // n).clamp(min=1)
        j = torch.arange(int(wanted.max()), device=rank.device)
        targets = ((2 * j[None, :] + 1) * frames[:, None]) // (2 * wanted[:, None])
        limit = int(frames.max())
        targets = torch.where(j[None, :] < wanted[:, None], targets, torch.full_like(targets, limit))
        chosen_frame = torch.zeros(heads, limit + 1, dtype=torch.bool, device=rank.device).scatter(1, targets, True)
        chosen = chosen_frame.gather(1, rank)  # in time order
        taken = chosen.sum(dim=1)
        over = taken >= keep
        trimmed = evenly_spaced(chosen, torch.where(over, torch.full_like(taken, keep), torch.zeros_like(taken)))
        filled = chosen | evenly_spaced(~chosen, torch.where(over, torch.zeros_like(taken), keep - taken))
        kept_in_time_order = torch.where(over[:, None], trimmed, filled)
        kept = torch.zeros_like(kept_in_time_order).scatter(1, order, kept_in_time_order)
        return mask_to_indices(kept, keep)
