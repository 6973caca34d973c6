"""The adapter interface: everything model-specific (chat format, tokens, positions, vision tower)
behind one small surface, so the session and the compression code never know the model family."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from potwatch.compression.budget import KVGeometry
from potwatch.compression.token_meta import TokenMeta


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

    @abstractmethod
    def system_block(self, positions) -> Block:
        """The system prompt and chat header up to where the video starts."""

    @abstractmethod
    def vision_block(self, frames: list[np.ndarray], first_frame: int, positions) -> Block:
        """Visual tokens for frames (a multiple of `frames_per_group`), the first being sampled frame `first_frame`."""

    @abstractmethod
    def question_ids(self, question: str) -> list[int]:
        """Token ids that close the video, ask `question` and open the assistant's answer."""

    @abstractmethod
    def resume_ids(self, answer_finished: bool) -> list[int]:
        """Token ids that close the answer and reopen the video for the stream to go on."""

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
