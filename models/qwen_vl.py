"""Adapter for the Qwen2-VL and Qwen2.5-VL families (`Qwen2VLForConditionalGeneration`,
`Qwen2_5_VLForConditionalGeneration`).

Streaming prefill runs the vision tower on each block of frames (two frames per temporal group; its
attention stays inside a frame, so block by block equals all at once), then the language model on
the visual embeddings with explicit M-RoPE ids. No LM-head logits are computed for prefill tokens."""

from __future__ import annotations

import numpy as np
import torch

from potwatch.compression.budget import KVGeometry
from potwatch.compression.token_meta import TokenKind, TokenMeta
from potwatch.models.adapter import Block, ModelAdapter
from potwatch.models.chat_format import ChatFormat, VideoLayout, chatml_format
from potwatch.models.frame_preprocessing import QwenFrameProcessor
from potwatch.models.positions import MRopePositions

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant watching a live video stream. Answer questions about what you have seen so far."
)


class QwenVLAdapter(ModelAdapter):
    def __init__(self, model, tokenizer, processor: QwenFrameProcessor, name: str, is_demo: bool,
                 system_prompt: str = DEFAULT_SYSTEM_PROMPT, chat_template: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.name = name
        self.is_demo = is_demo
        self.system_prompt = system_prompt
        self.family = model.config.model_type
        self.device = next(model.parameters()).device
        self.dtype = model.model.language_model.embed_tokens.weight.dtype
        self.frames_per_group = processor.temporal_patch_size
        self._text_config = model.config.text_config
        self._tokens_per_second = getattr(model.config.vision_config, "tokens_per_second", None)
        self.prompt = self._chat_prompt(chat_template)

    # --- geometry and positions -----------------------------------------------------------------
    def geometry(self) -> KVGeometry:
        config = self._text_config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return KVGeometry(config.num_hidden_layers, config.num_key_value_heads, head_dim, self.dtype, pos_rows=3)

    def new_positions(self, fps: float) -> MRopePositions:
        if self.family == "qwen2_5_vl":
            # Qwen2.5-VL spaces temporal groups by tokens_per_second x seconds per group.
            seconds_per_group = self.frames_per_group / fps
            return MRopePositions(time_step=self._tokens_per_second * seconds_per_group)
        return MRopePositions(time_step=1.0)

    default_positions = "keep"  # ids grow one per temporal group: 32K ids last ~9 h at 2 fps

    def max_positions(self) -> int:
        return self._text_config.max_position_embeddings

    def rotary_frequencies(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inv_freq, section): the rotary frequencies and which M-RoPE row (time, height, width) drives each."""
        rotary = self.model.model.language_model.rotary_emb
        if getattr(rotary, "attention_scaling", 1.0) != 1.0:
            raise NotImplementedError("re-rotating keys needs plain RoPE scaling (attention_scaling 1.0)")
        sizes = list(rotary.mrope_section)
        section = torch.cat([torch.full((size,), index % 3, dtype=torch.long) for index, size in enumerate(sizes)])
        return rotary.inv_freq.detach().float().cpu(), section

    def tokens_per_group(self, height: int, width: int) -> int:
        return self.processor.tokens_per_group(height, width)

    # --- chat format ------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def built_in_format(self) -> ChatFormat:
        """Qwen2-VL's ChatML; its processor writes a video's tokens between <|vision_start|> and <|vision_end|>."""
        return chatml_format(self.system_prompt, "<|vision_start|>", "<|vision_end|>")

    def video_layout(self) -> VideoLayout:
        """The template writes <|vision_start|><|video_pad|><|vision_end|>; the frames replace the pad."""
        return VideoLayout(placeholder=self._token(self.model.config.video_token_id))

    def _token(self, token_id: int) -> str:
        return self.tokenizer.convert_ids_to_tokens(token_id)

    def stop_ids(self) -> set[int]:
        ids = {self.tokenizer.convert_tokens_to_ids("<|im_end|>"), self.tokenizer.convert_tokens_to_ids("<|endoftext|>")}
        return {i for i in ids if i is not None}

    # --- blocks -----------------------------------------------------------------------------------
    def text_block(self, ids: list[int], kind: TokenKind, positions, turn: int = -1) -> Block:
        tensor = torch.tensor([ids], dtype=torch.long, device=self.device)
        embeds = self.model.model.get_input_embeddings()(tensor)
        return Block(embeds, TokenMeta.text(kind, positions.text(len(ids)), turn=turn))

    def vision_block(self, frames: list[np.ndarray], first_frame: int, positions) -> Block:
        pixels, (groups, grid_h, grid_w) = self.processor(frames)
        visual = self.model.model.visual
        pixel_values = torch.from_numpy(pixels).to(self.device, visual.dtype)
        grid = torch.tensor([[groups, grid_h, grid_w]], device=self.device)
        embeds = visual(pixel_values, grid_thw=grid).pooler_output.to(self.dtype).unsqueeze(0)
        merge = self.processor.merge_size
        rows, cols = grid_h // merge, grid_w // merge
        k = torch.arange(groups * rows * cols)
        local_group, row, col = k // (rows * cols), (k % (rows * cols)) // cols, k % cols
        group = first_frame // self.frames_per_group + local_group
        pos = positions.vision(group, row, col)
        meta = TokenMeta.vision(first_frame + local_group * self.frames_per_group, row, col, pos)
        return Block(embeds, meta)

    # --- the language model -----------------------------------------------------------------------
    def forward(self, block: Block, cache, logits: bool) -> torch.Tensor | None:
        position_ids = block.meta.pos.unsqueeze(1).to(self.device)  # [3, batch=1, n]
        out = self.model.model.language_model(
            inputs_embeds=block.embeds, position_ids=position_ids, cache=cache, use_cache=True
        )
        if not logits:
            return None
        return self.model.lm_head(out.last_hidden_state[:, -1]).float()[0]
