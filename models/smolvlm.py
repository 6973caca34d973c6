"""Adapter for SmolVLM2 (`SmolVLMForConditionalGeneration`, Idefics3 family: SigLIP tower, pixel-shuffle
connector, Llama language model with 1-D RoPE).

The SmolVLM processor expands a `<video>` in a user turn to an intro naming the frame count and
duration, then per frame a timestamp line and the frame's image tokens, then a blank line:

    <|im_start|>User: You are provided the following series of {N} frames from a {H:MM:SS} [H:MM:SS] video.\\n
    \\nFrame from 00:00:<fake_token_around_image><global-img><image>*64<fake_token_around_image>
    \\nFrame from 00:01:...<fake_token_around_image>\\n\\n{question}<end_of_utterance>\\nAssistant:

A stream knows neither N nor the duration when it starts, so the streaming intro is the same sentence
without them: "You are provided the following series of frames from a live video.\\n". Each
frame's block is its timestamp line (stream time, from the sampled frame index and fps) plus its
image tokens; the question block starts with the blank line that closes the video. After an answer a
new user turn repeats the intro and the frames go on, as a chat with one video per user turn would.

Every token of a frame block is a visual token of that frame, so it is evicted with the frame's
tokens: image tokens carry their pixel-shuffled grid coordinates (row, col); the timestamp and wrapper
tokens carry row -1 and their slot in the block as col, so TaR compares them with the same slot of the
recent frames. Each frame is encoded alone (attention within a frame, per-frame pixel shuffle), so
block by block equals all frames at once."""

from __future__ import annotations

import numpy as np
import torch
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

from potwatch.compression.token_meta import TokenMeta
from potwatch.models.adapter import Block
from potwatch.models.chat_format import ChatFormat, VideoLayout
from potwatch.models.rope_1d_adapter import Rope1DAdapter

STREAM_INTRO = "You are provided the following series of frames from a live video.\n"
FRAME_HEADER = "\nFrame from {timestamp}:<fake_token_around_image><global-img>"
FRAME_END = "<fake_token_around_image>"
MEDIA_OUTRO = "\n\n"


def timestamp(seconds: float) -> str:
    """MM:SS as the SmolVLM processor prints it. Minutes wrap at 100, so the 6,000 possible stamps bound
    the token count of a frame block (the session makes room for a block before building it)."""
    return f"{int(seconds // 60) % 100:02d}:{int(seconds % 60):02d}"


class SmolVLMAdapter(Rope1DAdapter):
    # SmolVLM's processor renders every chat with a video through this template, whatever the checkpoint's
    # (SmolVLM2's own templates have no video part); potwatch takes it when the checkpoint's drops the video
    video_chat_template = DEFAULT_CHAT_TEMPLATE
    default_system_prompt = None  # no system turn, as in SmolVLM2's video prompts

    def _language_model(self, model) -> torch.nn.Module:
        return model.model.text_model

    def _read_config(self, config) -> None:
        self.grid_side = config.vision_config.image_size // config.vision_config.patch_size // config.scale_factor
        self.image_token_id = config.image_token_id
        self._frame_end_ids = self._ids(FRAME_END)
        self._tokens_per_frame: int | None = None

    def tokens_per_group(self, height: int, width: int) -> int:
        """Tokens of the longest frame block: every block has this many when the tokenizer gives every
        MM:SS stamp the same length (the demo's byte tokenizer, SmolLM2's digit-splitting one)."""
        if self._tokens_per_frame is None:
            stamps = [FRAME_HEADER.format(timestamp=f"{m:02d}:{s:02d}") for m in range(100) for s in range(60)]
            headers = self.tokenizer(stamps, add_special_tokens=False)["input_ids"]
            self._tokens_per_frame = max(map(len, headers)) + self.grid_side**2 + len(self._frame_end_ids)
        return self._tokens_per_frame

    # --- chat format ------------------------------------------------------------------------------
    def built_in_format(self) -> ChatFormat:
        """SmolVLM's turns: `User: ` and the video, `Assistant:` (a system turn only when one is given)."""
        system = f"System: {self.system_prompt}<end_of_utterance>\n" if self.system_prompt is not None else ""
        return ChatFormat(
            opening=f"<|im_start|>{system}User: ",
            before_question="",
            after_question="<end_of_utterance>\nAssistant:",
            reopening="<end_of_utterance>\nUser: ",
        )

    def video_layout(self) -> VideoLayout:
        """The processor writes the intro, the frames and a blank line where the template writes <video>."""
        return VideoLayout(placeholder=getattr(self.tokenizer, "video_token", None) or "<video>", intro=STREAM_INTRO,
                           outro=MEDIA_OUTRO)

    def stop_ids(self) -> set[int]:
        ids = {self._token_id("<end_of_utterance>"), self.tokenizer.eos_token_id}
        return {i for i in ids if i is not None}

    # --- blocks -----------------------------------------------------------------------------------
    def _frame_ids(self, seconds: float) -> list[int]:
        """One frame's tokens: timestamp line, wrappers, and `grid_side**2` image placeholders."""
        header = self._ids(FRAME_HEADER.format(timestamp=timestamp(seconds)))
        return header + [self.image_token_id] * self.grid_side**2 + self._frame_end_ids

    def vision_features(self, frames: list[np.ndarray]) -> torch.Tensor:
        """The frames' visual tokens [n * grid_side**2, hidden] from the tower and connector."""
        pixels = torch.from_numpy(self.processor(frames)).unsqueeze(0)  # [1, n, 3, size, size]
        vision_dtype = self.model.model.vision_model.dtype
        features = self.model.model.get_image_features(pixels.to(self.device, vision_dtype)).pooler_output
        return torch.cat(list(features), dim=0).to(self.dtype)

    def vision_block(self, frames: list[np.ndarray], first_frame: int, positions, features=None) -> Block:
        features = self.vision_features(frames) if features is None else features
        ids, frame, row, col = [], [], [], []
        for index in range(len(frames)):
            frame_ids = self._frame_ids((first_frame + index) / positions.fps)
            is_image = torch.tensor(frame_ids) == self.image_token_id
            k = torch.cumsum(is_image.long(), 0) - 1  # index among the image tokens
            slot = torch.cumsum((~is_image).long(), 0) - 1  # index among the other tokens
            ids += frame_ids
            frame.append(torch.full((len(frame_ids),), first_frame + index))
            row.append(torch.where(is_image, k // self.grid_side, -1))
            col.append(torch.where(is_image, k % self.grid_side, slot))
        embeds = self._embed(ids)
        image_mask = (torch.tensor(ids, device=self.device) == self.image_token_id)[None, :, None]
        embeds = embeds.masked_scatter(image_mask, features)
        frame, row, col = torch.cat(frame), torch.cat(row), torch.cat(col)
        return Block(embeds, TokenMeta.vision(frame, row, col, positions.vision(frame, row, col)))
