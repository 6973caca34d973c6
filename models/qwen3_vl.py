"""Adapter for Qwen3-VL (`Qwen3VLForConditionalGeneration`: interleaved M-RoPE, DeepStack).

Video layout, as Qwen3-VL's processor lays a video out (text-timestamp alignment: one timestamp, the
mean time of the group's two frames, before each temporal group):

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n
    <0.2 seconds><|vision_start|><|video_pad|>*N<|vision_end|><1.2 seconds><|vision_start|>...<|vision_end|>
    {question}<|im_end|>\\n<|im_start|>assistant\\n

(transformers 5.x substitutes only the pad token inside the chat template's own
<|vision_start|>...<|vision_end|>, nesting one pair in another; the layout above is the one the
original processor and qwen-vl-utils produce, which the model was trained on.)

Each block's groups run through the vision tower on their own (attention stays inside a temporal
group), and its DeepStack features are added to the early language-model layers' hidden states at the
block's patch tokens through the text model's `visual_pos_masks` / `deepstack_visual_embeds`, exactly
what the stock forward does for those tokens. Timestamp and vision start/end tokens belong to their
group's frame (row -1, their slot as col), so they are evicted with it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from potwatch.compression.token_meta import TokenMeta
from potwatch.models.adapter import Block
from potwatch.models.chat_format import ChatFormat, VideoLayout, chatml_format
from potwatch.models.qwen_vl import QwenVLAdapter

MAX_STAMP_SECONDS = 100_000  # timestamps wrap past ~27.8 h so a group's token count stays bounded


@dataclass
class DeepstackBlock(Block):
    """A visual block plus what DeepStack adds inside the language model at its patch tokens."""

    visual_mask: torch.Tensor | None = None  # [1, n] bool: the patch tokens
    deepstack: list[torch.Tensor] = field(default_factory=list)  # per early layer: [patches, hidden]

    def piece(self, start: int, stop: int) -> DeepstackBlock:
        piece = super().piece(start, stop)
        if self.deepstack:
            # DeepStack features exist for the patch tokens only: take those that fall in this piece
            mask = self.visual_mask[0]
            first, last = int(mask[:start].sum()), int(mask[:stop].sum())
            piece.visual_mask = self.visual_mask[:, start:stop]
            piece.deepstack = [features[first:last] for features in self.deepstack] if last > first else []
        return piece

    def take(self, index: torch.Tensor) -> DeepstackBlock:
        taken = super().take(index)
        if self.deepstack:
            mask = self.visual_mask[0].cpu()
            patch_index = torch.cumsum(mask.long(), 0) - 1  # each token's row in the DeepStack features
            kept = index[mask[index]]
            taken.visual_mask = self.visual_mask[:, index.to(self.visual_mask.device)]
            rows = patch_index[kept].to(self.deepstack[0].device)
            taken.deepstack = [features[rows] for features in self.deepstack] if len(kept) else []
        return taken


def group_time(first_frame: int, frames_per_group: int, fps: float) -> float:
    """Mean time of a group's frames, as Qwen3-VL's processor prints it."""
    return (first_frame + (frames_per_group - 1) / 2) / fps % MAX_STAMP_SECONDS


class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL; shares Qwen2-VL's geometry, patchify and text handling, not its layout or positions."""

    def _read_config(self, config) -> None:
        super()._read_config(config)
        self._tokens_per_group: dict[tuple[int, int], int] = {}

    def rotary_frequencies(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inv_freq, section) for the interleaved layout: frequency i follows height when i % 3 == 1 and
        i < 3 * sections[1], width when i % 3 == 2 and i < 3 * sections[2], time otherwise."""
        rotary = self._rotary()
        inv_freq = rotary.inv_freq.detach().float().cpu()
        section = torch.zeros(inv_freq.shape[0], dtype=torch.long)
        for row, offset in ((1, 1), (2, 2)):
            section[offset : 3 * rotary.mrope_section[row] : 3] = row
        return inv_freq, section

    def tokens_per_group(self, height: int, width: int) -> int:
        """Tokens of the longest group block (timestamps grow a digit at 10 s, 100 s, ...)."""
        key = (height, width)
        if key not in self._tokens_per_group:
            header, footer = self._group_text(MAX_STAMP_SECONDS)  # the widest stamp printed
            self._tokens_per_group[key] = len(header) + self.processor.tokens_per_group(height, width) + len(footer)
        return self._tokens_per_group[key]

    # --- chat format ------------------------------------------------------------------------------
    def built_in_format(self) -> ChatFormat:
        return chatml_format(self.system_prompt)

    def video_layout(self) -> VideoLayout:
        """The template's <|vision_start|><|video_pad|><|vision_end|> gives way to the groups' own (above)."""
        config = self.model.config
        ids = (config.vision_start_token_id, config.video_token_id, config.vision_end_token_id)
        return VideoLayout(placeholder="".join(self._token(token_id) for token_id in ids))

    # --- blocks -----------------------------------------------------------------------------------
    def _group_text(self, seconds: float) -> tuple[list[int], list[int]]:
        return self._ids(f"<{seconds:.1f} seconds><|vision_start|>"), self._ids("<|vision_end|>")

    def vision_features(self, frames: list[np.ndarray]):
        """(the tower's output with its DeepStack features, grid (groups, grid_h, grid_w))."""
        pixels, (groups, grid_h, grid_w) = self.processor(frames)
        visual = self.model.model.visual
        grid = torch.tensor([[groups, grid_h, grid_w]], device=self.device)
        return visual(torch.from_numpy(pixels).to(self.device, visual.dtype), grid_thw=grid), (groups, grid_h, grid_w)

    def vision_block(self, frames: list[np.ndarray], first_frame: int, positions, features=None) -> Block:
        out, (groups, grid_h, grid_w) = self.vision_features(frames) if features is None else features
        per_group = out.pooler_output.shape[0] // groups
        cols = grid_w // self.processor.merge_size
        parts = []  # (embeds [n, hidden], meta, is_patch [n]) in sequence order, so positions run in order
        for index, features in enumerate(out.pooler_output.to(self.dtype).split(per_group)):
            frame = first_frame + index * self.frames_per_group
            header, footer = self._group_text(group_time(frame, self.frames_per_group, positions.fps))
            parts.append(self._text_part(header, frame, 0, positions))
            parts.append(self._patch_part(features, frame, cols, positions))
            parts.append(self._text_part(footer, frame, len(header), positions))
        meta = TokenMeta(*(torch.cat([getattr(part[1], f.name) for part in parts], dim=-1) for f in fields(TokenMeta)))
        return DeepstackBlock(
            torch.cat([part[0] for part in parts]).unsqueeze(0), meta,
            visual_mask=torch.cat([part[2] for part in parts]).unsqueeze(0).to(self.device),
            deepstack=[features.to(self.dtype) for features in out.deepstack_features],
        )

    def _text_part(self, ids: list[int], frame: int, first_slot: int, positions):
        """A group's timestamp and vision start/end tokens: text positions, evicted with the frame."""
        n = len(ids)
        embeds = self._embed(ids)[0]
        slots = torch.arange(first_slot, first_slot + n)
        meta = TokenMeta.vision(torch.full((n,), frame), torch.full((n,), -1), slots, positions.text(n))
        return embeds, meta, torch.zeros(n, dtype=torch.bool)

    def _patch_part(self, features: torch.Tensor, frame: int, cols: int, positions):
        """A group's visual tokens at their merged-patch grid coordinates."""
        k = torch.arange(features.shape[0])
        row, col = k // cols, k % cols
        group = torch.full_like(k, frame // self.frames_per_group)
        meta = TokenMeta.vision(torch.full_like(k, frame), row, col, positions.vision(group, row, col))
        return features, meta, torch.ones(len(k), dtype=torch.bool)

    # --- the language model -----------------------------------------------------------------------
    def _forward_extras(self, block: Block) -> dict:
        """DeepStack: the block's early-layer features, added at its patch tokens inside the language model."""
        if isinstance(block, DeepstackBlock) and block.deepstack:
            return dict(visual_pos_masks=block.visual_mask, deepstack_visual_embeds=block.deepstack)
        return {}
