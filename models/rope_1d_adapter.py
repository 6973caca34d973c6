"""What the adapters of 1-D RoPE families share beyond the adapter base: one frame per group, one
position id per token (re-numbered after each compaction by default) and plain RoPE frequencies."""

from __future__ import annotations

import torch

from potwatch.models.adapter import ModelAdapter


class Rope1DAdapter(ModelAdapter):
    """Base of the LLaVA-OneVision and SmolVLM adapters; subclasses add the chat format and vision tower."""

    frames_per_group = 1  # these towers encode each frame on its own

    # One id per visual token (196 a frame on llava-onevision-0.5b): "keep" would pass a 32K trained
    # range within minutes, so these families re-number after each compaction by default.
    default_positions = "compact"

    def rotary_frequencies(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inv_freq, section): plain RoPE, so one position row drives every frequency."""
        inv_freq = self._rotary().inv_freq.detach().float().cpu()
        return inv_freq, torch.zeros(inv_freq.shape[0], dtype=torch.long)
