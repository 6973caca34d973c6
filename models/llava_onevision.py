"""Adapter for LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`: SigLIP tower, Qwen2 language
model, 1-D RoPE).

Video layout, as the stock model lays out one `<video>` (and as LLaVA-OneVision was trained, in the
ChatML format of its `qwen_1_5` conversation template):

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n
    [frame 0: side x side pooled tokens][frame 1] ... [image_newline]\\n{question}<|im_end|>\\n<|im_start|>assistant\\n

Each frame is encoded alone (SigLIP attends within a frame, the projector and the 2x bilinear pooling
are per frame), so block by block equals all frames at once. The single learned `image_newline` that
closes a video belongs to the question block: it is written when the video segment closes, as the
first token of the question turn (marked NEWLINE in the ids). After an answer the stream reopens a
user turn and the next frames start a new video segment, as a multi-turn chat with one video per
user turn would."""

from __future__ import annotations

import math

import numpy as np
import torch

from potwatch.compression.token_meta import TokenMeta
from potwatch.models.adapter import Block
from potwatch.models.chat_format import ChatFormat, VideoLayout, chatml_format
from potwatch.models.qwen_vl import DEFAULT_SYSTEM_PROMPT
from potwatch.models.rope_1d_adapter import Rope1DAdapter

NEWLINE = -1  # stands for the model's `image_newline` embedding in token id lists (never a real id)


class LlavaOnevisionAdapter(Rope1DAdapter):
    default_system_prompt = DEFAULT_SYSTEM_PROMPT

    def _read_config(self, config) -> None:
        side = config.vision_config.image_size // config.vision_config.patch_size
        self.grid_side = math.ceil(side / 2)  # apply_pooling: bilinear to ceil(side / 2) per side

    def tokens_per_group(self, height: int, width: int) -> int:
        return self.grid_side**2

    # --- chat format ------------------------------------------------------------------------------
    def built_in_format(self) -> ChatFormat:
        """The qwen_1_5 ChatML LLaVA-OneVision was trained in: `<video>\\n{question}` in a user turn."""
        return chatml_format(self.system_prompt, after_video="\n")

    def video_layout(self) -> VideoLayout:
        """The processor turns the template's <video> into the frames' tokens and one image_newline."""
        placeholder = self.tokenizer.convert_ids_to_tokens(self.model.config.video_token_id)
        return VideoLayout(placeholder=placeholder, outro_ids=(NEWLINE,))

    def stop_ids(self) -> set[int]:
        ids = {self._token_id("<|im_end|>"), self._token_id("<|endoftext|>")}
        return {i for i in ids if i is not None}

    # --- blocks -----------------------------------------------------------------------------------
    def _embed(self, ids: list[int]) -> torch.Tensor:
        if NEWLINE not in ids:
            return super()._embed(ids)
        embeds = super()._embed([0 if token == NEWLINE else token for token in ids])
        mark = torch.tensor([token == NEWLINE for token in ids], device=self.device)[None, :, None]
        return torch.where(mark, self.model.model.image_newline.to(embeds.dtype), embeds)

    def vision_features(self, frames: list[np.ndarray]) -> torch.Tensor:
        """The frames' visual tokens [1, n, hidden] from the tower and projector."""
        pixels = torch.from_numpy(self.processor(frames)).unsqueeze(0)  # [1, n, 3, size, size]
        vision_dtype = self.model.model.vision_tower.dtype
        features = self.model.model.get_video_features(pixel_values_videos=pixels.to(self.device, vision_dtype))
        return features.pooler_output[:, :-1].to(self.dtype)  # drop the video's closing image_newline

    def vision_block(self, frames: list[np.ndarray], first_frame: int, positions, features=None) -> Block:
        embeds = self.vision_features(frames) if features is None else features
        per_frame = self.grid_side**2
        k = torch.arange(len(frames) * per_frame)
        frame = first_frame + k // per_frame
        row, col = (k % per_frame) // self.grid_side, k % self.grid_side
        return Block(embeds, TokenMeta.vision(frame, row, col, positions.vision(frame, row, col)))
