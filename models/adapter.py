"""The adapter interface: everything model-specific (chat format, tokens, positions, vision tower)
behind one small surface, so the session and the compression code never know the model family.

The text around the video comes from one place for every family, `models/chat_format.py`: the
checkpoint's chat template when it has one, the family's `built_in_format()` otherwise."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from potwatch.compression.budget import KVGeometry
from potwatch.compression.token_meta import TokenKind, TokenMeta
from potwatch.models.chat_format import ChatFormat, ChatPrompt, VideoLayout, chat_prompt


@dataclass
class Block:
    """Tokens ready for the language model: input embeddings, explicit positions, and metadata."""

    embeds: torch.Tensor  # [1, n, hidden]
    meta: TokenMeta  # meta.pos holds the explicit position ids

    def __len__(self) -> int:
        return self.embeds.shape[1]


class ModelAdapter(ABC):
    """One model family. Shared by every session that uses the model; per-stream state lives in the
    position tracker that `new_positions()` returns."""

    name: str
    family: str
    is_demo: bool
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    frames_per_group: int  # raw frames the vision tower folds into one temporal group
    label: str | None = None  # what a potwatch-trained model knows (shown beside it); None for others

    @abstractmethod
    def geometry(self) -> KVGeometry: ...

    @abstractmethod
    def new_positions(self, fps: float): ...

    @abstractmethod
    def tokens_per_group(self, height: int, width: int) -> int: ...

    default_positions: str = "compact"  # "keep" original ids, or "compact" them after each compaction

    @abstractmethod
    def max_positions(self) -> int:
        """The longest position range the language model was trained for."""

    @abstractmethod
    def rotary_frequencies(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inv_freq [head_dim/2], section [head_dim/2]): what `shift_rotary` needs to move cached keys."""

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
    def vision_block(self, frames: list[np.ndarray], first_frame: int, positions) -> Block:
        """Visual tokens for frames (a multiple of `frames_per_group`), the first being sampled frame `first_frame`."""

    def question_ids(self, question: str) -> list[int]:
        """Token ids that close the video, ask `question` and open the assistant's answer."""
        return self.prompt.question_ids(question)

    def resume_ids(self, answer_finished: bool) -> list[int]:
        """Token ids that close the answer and reopen the video for the stream to go on."""
        return self.prompt.resume_ids(answer_finished)

    @abstractmethod
    def stop_ids(self) -> set[int]: ...

    @abstractmethod
    def text_block(self, ids: list[int], meta_kind, positions, turn: int = -1) -> Block: ...

    @abstractmethod
    def forward(self, block: Block, cache, logits: bool) -> torch.Tensor | None:
        """Run the language model over `block`, writing its K/V into `cache`; next-token logits [vocab] if asked."""

    def attention_modules(self) -> list[torch.nn.Module]:
        """The language model's attention modules in layer order (for query capture: see
        `potwatch.compression.query_capture`)."""
        language_model = getattr(self, "language_model", None) or self.model.model.language_model
        return [layer.self_attn for layer in language_model.layers]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
