"""Adapter for the Qwen2-VL and Qwen2.5-VL families (`Qwen2VLForConditionalGeneration`,
`Qwen2_5_VLForConditionalGeneration`).

Streaming prefill runs the vision tower on each block of frames (two frames per temporal group; its
attention stays inside a frame, so block by block equals all at once), then the language model on
the visual embeddings with explicit M-RoPE ids. No LM-head logits are computed for prefill tokens."""

from __future__ import annotations

import numpy as np
import torch

from potwatch.compression.token_meta import TokenMeta
from potwatch.models.adapter import Block, ModelAdapter
from potwatch.models.chat_format import ChatFormat, VideoLayout, chatml_format

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant watching a live video stream. Answer questions about what you have seen so far."
)


class QwenVLAdapter(ModelAdapter):
    default_system_prompt = DEFAULT_SYSTEM_PROMPT
    default_positions = "keep"  # ids grow one per temporal group: 32K ids last ~9 h at 2 fps

    def _read_config(self, config) -> None:
        self.frames_per_group = self.processor.temporal_patch_size

    def rotary_frequencies(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inv_freq, section): the rotary frequencies and which M-RoPE row (time, height, width) drives each."""
        rotary = self._rotary()
        sizes = list(rotary.mrope_section)
        section = torch.cat([torch.full((size,), index % 3, dtype=torch.long) for index, size in enumerate(sizes)])
        return rotary.inv_freq.detach().float().cpu(), section

    def tokens_per_group(self, height: int, width: int) -> int:
        return self.processor.tokens_per_group(height, width)

    # --- chat format ------------------------------------------------------------------------------
    def built_in_format(self) -> ChatFormat:
        """Qwen2-VL's ChatML; its processor writes a video's tokens between <|vision_start|> and <|vision_end|>."""
        return chatml_format(self.system_prompt, "<|vision_start|>", "<|vision_end|>")

    def video_layout(self) -> VideoLayout:
        """The template writes <|vision_start|><|video_pad|><|vision_end|>; the frames replace the pad."""
        return VideoLayout(placeholder=self._token(self.model.config.video_token_id))

    def stop_ids(self) -> set[int]:
        ids = {self.tokenizer.convert_tokens_to_ids("<|im_end|>"), self.tokenizer.convert_tokens_to_ids("<|endoftext|>")}
        return {i for i in ids if i is not None}

    # --- blocks -----------------------------------------------------------------------------------
    def vision_features(self, frames: list[np.ndarray]):
        """(embeds [1, n, hidden], grid (groups, grid_h, grid_w)) from the vision tower."""
        pixels, (groups, grid_h, grid_w) = self.processor(frames)
        visual = self.model.model.visual
        pixel_values = torch.from_numpy(pixels).to(self.device, visual.dtype)
        grid = torch.tensor([[groups, grid_h, grid_w]], device=self.device)
        embeds = visual(pixel_values, grid_thw=grid).pooler_output.to(self.dtype).unsqueeze(0)
        return embeds, (groups, grid_h, grid_w)

    def vision_block(self, frames: list[np.ndarray], first_frame: int, positions, features=None) -> Block:
        embeds, (groups, grid_h, grid_w) = self.vision_features(frames) if features is None else features
        merge = self.processor.merge_size
        rows, cols = grid_h // merge, grid_w // merge
        k = torch.arange(groups * rows * cols)
        local_group, row, col = k // (rows * cols), (k % (rows * cols)) // cols, k % cols
        group = first_frame // self.frames_per_group + local_group
        pos = positions.vision(group, row, col)
        meta = TokenMeta.vision(first_frame + local_group * self.frames_per_group, row, col, pos)
        return Block(embeds, meta)
