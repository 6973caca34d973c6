"""The adapter interface: everything model-specific (chat format, tokens, positions, vision tower)
behind one small surface, so the session and the compression code never know the model family.

The text around the video comes from one place for every family, `models/chat_format.py`: the
checkpoint's chat template when it has one, the family's `built_in_format()` otherwise."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from potwatch.compression.budget import KVGeometry
from potwatch.compression.token_meta import TokenKind, TokenMeta
from potwatch.errors import ModelLoadError
from potwatch.models.chat_format import ChatFormat, ChatPrompt, VideoLayout, chat_prompt
from potwatch.models.family import family_for

FAMILY_DEFAULT = object()  # an adapter's `system_prompt` when not given: the family's own


@dataclass
class Block:
    """Tokens ready for the language model: input embeddings, explicit positions, and metadata."""

    embeds: torch.Tensor  # [1, n, hidden]
    meta: TokenMeta  # meta.pos holds the explicit position ids

    def __len__(self) -> int:
        return self.embeds.shape[1]

    def piece(self, start: int, stop: int) -> Block:
        """Tokens start..stop of this block (a family whose blocks carry more slices that too)."""
        meta = TokenMeta(*(getattr(self.meta, field.name)[..., start:stop] for field in fields(TokenMeta)))
        return replace(self, embeds=self.embeds[:, start:stop], meta=meta)

    @staticmethod
    def join(blocks: list[Block]) -> Block:
        """Plain blocks one after the other, as one (change-aware ingest sends a few quiet groups together)."""
        if len(blocks) == 1:
            return blocks[0]
        meta = TokenMeta(*(torch.cat([getattr(b.meta, field.name) for b in blocks], dim=-1) for field in fields(TokenMeta)))
        return Block(torch.cat([b.embeds for b in blocks], dim=1), meta)

    def take(self, index: torch.Tensor) -> Block:
        """The tokens at `index` (increasing), with their own positions: a block with holes, as change-aware
        ingest sends it (streaming/change_filter.py); a family whose blocks carry more slices takes those too."""
        meta = TokenMeta(*(getattr(self.meta, field.name)[..., index] for field in fields(TokenMeta)))
        return replace(self, embeds=self.embeds[:, index.to(self.embeds.device)], meta=meta)


class ModelAdapter(ABC):
    """One model family. Shared by every session that uses the model; per-stream state lives in the
    position tracker that `new_positions()` returns.

    The set-up every family shares happens here: the language model, its device, dtype and text config,
    the family's description (models/family.py: position rule, position rows) and the chat prompt.
    Subclasses read their own sizes from the config in `_read_config`, which runs before the prompt is built."""

    name: str
    family: str  # the model's model_type
    is_demo: bool
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    frames_per_group: int  # raw frames the vision tower folds into one temporal group
    label: str | None = None  # what a potwatch-trained model knows (shown beside it); None for others
    default_system_prompt: str | None = None  # the family's system prompt; None: no system turn

    def __init__(self, model, tokenizer, processor, name: str, is_demo: bool,
                 system_prompt: str | None | object = FAMILY_DEFAULT, chat_template: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.name = name
        self.is_demo = is_demo
        self.system_prompt = self.default_system_prompt if system_prompt is FAMILY_DEFAULT else system_prompt
        self.family = model.config.model_type
        self.description = family_for(self.family)
        if self.description is None:
            raise ModelLoadError(f"potwatch has no family registered for '{self.family}' models.")
        self.language_model = self._language_model(model)
        self.device = next(model.parameters()).device
        self.dtype = self.language_model.embed_tokens.weight.dtype
        self._text_config = model.config.text_config
        # a potwatch-trained model that says ages as the position distance it reads ("About 35 seconds ago."):
        # the session reads them back to stream times (streaming/position_clock.py)
        self.ages_from_positions = bool(getattr(model.config, "potwatch_ages_from_positions", False))
        self._read_config(model.config)
        self.prompt = self._chat_prompt(chat_template)

    def _language_model(self, model) -> torch.nn.Module:
        """The decoder the stream's blocks run through (its `embed_tokens`, `layers`, `rotary_emb`)."""
        return model.model.language_model

    def _read_config(self, config) -> None:
        """Family sizes from the model config (grid sides, token ids), before the prompt is built."""

    # --- geometry and positions -----------------------------------------------------------------
    def geometry(self) -> KVGeometry:
        config = self._text_config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return KVGeometry(config.num_hidden_layers, config.num_key_value_heads, head_dim, self.dtype,
                          pos_rows=self.description.pos_rows)

    def new_positions(self, fps: float):
        """A fresh position tracker for one stream, by the family's position rule."""
        return self.description.positions(self, fps)

    @abstractmethod
    def tokens_per_group(self, height: int, width: int) -> int: ...

    default_positions: str = "compact"  # "keep" original ids, or "compact" them after each compaction

    def max_positions(self) -> int:
        """The longest position range the language model was trained for."""
        return self._text_config.max_position_embeddings

    @abstractmethod
    def rotary_frequencies(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inv_freq [head_dim/2], section [head_dim/2]): what `shift_rotary` needs to move cached keys."""

    def _rotary(self):
        """The language model's rotary embedding, checked to be one whose keys can be re-rotated."""
        rotary = self.language_model.rotary_emb
        if getattr(rotary, "attention_scaling", 1.0) != 1.0:
            raise NotImplementedError("re-rotating keys needs plain RoPE scaling (attention_scaling 1.0)")
        return rotary

    # --- the prompt around the video (see models/chat_format.py) ---------------------------------
    prompt: ChatPrompt  # from the checkpoint's chat template when it has one, else `built_in_format()`
    system_prompt: str | None = None
    video_chat_template: str | None = None  # the family processor's own template for video chats, if any

    @abstractmethod
    def built_in_format(self) -> ChatFormat:
        """The family's chat format, written out: the prompt of checkpoints without a chat template."""

    @abstractmethod
    def video_layout(self) -> VideoLayout:
        """Where the chat template puts a video, and what the family's processor writes around the frames."""

    def _chat_prompt(self, chat_template: str | None) -> ChatPrompt:
        """The prompt's pieces from `chat_template` (None: the tokenizer's own), else the built-in format."""
        template = chat_template if chat_template is not None else getattr(self.tokenizer, "chat_template", None)
        return chat_prompt(self.tokenizer, template, self.built_in_format(), self.video_layout(), self.system_prompt,
                           self._end_of_turn(), self.video_chat_template)

    def built_in_prompt(self) -> ChatPrompt:
        """The built-in format's pieces, whatever the checkpoint's template (to compare the two)."""
        return ChatPrompt(self.tokenizer, self.built_in_format(), self.video_layout(), self._end_of_turn())

    def _end_of_turn(self) -> tuple[str, ...]:
        return tuple(self.tokenizer.convert_ids_to_tokens(sorted(self.stop_ids())))

    def system_block(self, positions) -> Block:
        """The system prompt and chat header up to where the video starts."""
        return self.text_block(self.prompt.system_ids(), TokenKind.SYSTEM, positions)

    @abstractmethod
    def vision_block(self, frames: list[np.ndarray], first_frame: int, positions, features=None) -> Block:
        """Visual tokens for frames (a multiple of `frames_per_group`), the first being sampled frame `first_frame`;
        `features`: the vision tower's output for them (`vision_features`), when already at hand."""

    def vision_features(self, frames: list[np.ndarray]):
        """The vision tower's output for frames, which `vision_block(..., features=)` places: kept by change-aware
        ingest to skip the tower on a repeated group (streaming/repeat_frames.py). None: the family cannot."""
        return None

    def question_ids(self, question: str) -> list[int]:
        """Token ids that close the video, ask `question` and open the assistant's answer."""
        return self.prompt.question_ids(question)

    def resume_ids(self, answer_finished: bool) -> list[int]:
        """Token ids that close the answer and reopen the video for the stream to go on."""
        return self.prompt.resume_ids(answer_finished)

    @abstractmethod
    def stop_ids(self) -> set[int]: ...

    # --- text -------------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _token(self, token_id: int) -> str:
        return self.tokenizer.convert_ids_to_tokens(token_id)

    def _token_id(self, token: str) -> int | None:
        """Id of a special token, None when the tokenizer lacks it."""
        index = self.tokenizer.convert_tokens_to_ids(token)
        return None if index is None or index == self.tokenizer.unk_token_id else index

    def _embed(self, ids: list[int]) -> torch.Tensor:
        tensor = torch.tensor([ids], dtype=torch.long, device=self.device)
        return self.language_model.embed_tokens(tensor)

    def text_block(self, ids: list[int], kind: TokenKind, positions, turn: int = -1) -> Block:
        return Block(self._embed(ids), TokenMeta.text(kind, positions.text(len(ids)), turn=turn))

    # --- the language model -----------------------------------------------------------------------
    def forward(self, block: Block, cache, logits: bool) -> torch.Tensor | None:
        """Run the language model over `block`, writing its K/V into `cache`; next-token logits [vocab] if asked.

        Positions are explicit, never from the cache length: [3, batch=1, n] for M-RoPE, [batch=1, n] for
        plain RoPE. The LM head runs only on the last token, and only when logits are asked for."""
        pos = block.meta.pos.to(self.device)
        position_ids = pos if self.description.pos_rows == 1 else pos.unsqueeze(1)
        out = self.language_model(inputs_embeds=block.embeds, position_ids=position_ids, cache=cache, use_cache=True,
                                  **self._forward_extras(block))
        if not logits:
            return None
        return self.model.lm_head(out.last_hidden_state[:, -1]).float()[0]

    def _forward_extras(self, block: Block) -> dict:
        """Further keyword arguments of the language model for `block` (Qwen3-VL's DeepStack)."""
        return {}

    def attention_modules(self) -> list[torch.nn.Module]:
        """The language model's attention modules in layer order (for query capture: see
        `potwatch.compression.query_capture`)."""
        return [layer.self_attn for layer in self.language_model.layers]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
