"""What the adapters of 1-D RoPE families share: KV geometry, 1-D positions, text embedding and the
language-model forward with explicit `position_ids` [1, n].

The language model runs on input embeddings with positions from the session's tracker, never from the
cache length, and the LM head runs only on the last token when logits are asked for."""

from __future__ import annotations

import torch

from potwatch.compression.budget import KVGeometry
from potwatch.compression.token_meta import TokenKind, TokenMeta
from potwatch.models.adapter import Block, ModelAdapter
from potwatch.models.positions_1d import Positions1D


class Rope1DAdapter(ModelAdapter):
    """Base of the LLaVA-OneVision and SmolVLM adapters; subclasses add the chat format and vision tower."""

    frames_per_group = 1  # these towers encode each frame on its own

    def __init__(self, model, tokenizer, language_model: torch.nn.Module, name: str, is_demo: bool):
        self.model = model
        self.tokenizer = tokenizer
        self.language_model = language_model
        self.name = name
        self.is_demo = is_demo
        self.family = model.config.model_type
        self.device = next(model.parameters()).device
        self.dtype = language_model.embed_tokens.weight.dtype
        self._text_config = model.config.text_config

    # --- geometry and positions -----------------------------------------------------------------
    def geometry(self) -> KVGeometry:
        config = self._text_config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return KVGeometry(config.num_hidden_layers, config.num_key_value_heads, head_dim, self.dtype, pos_rows=1)

    def new_positions(self, fps: float) -> Positions1D:
        return Positions1D()

    # One id per visual token (196 a frame on llava-onevision-0.5b): "keep" would pass a 32K trained
    # range within minutes, so these families re-number after each compaction by default.
    default_positions = "compact"

    def max_positions(self) -> int:
        return self._text_config.max_position_embeddings

    def rotary_frequencies(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inv_freq, section): plain RoPE, so one position row drives every frequency."""
        rotary = self.language_model.rotary_emb
        if getattr(rotary, "attention_scaling", 1.0) != 1.0:
            raise NotImplementedError("re-rotating keys needs plain RoPE scaling (attention_scaling 1.0)")
        inv_freq = rotary.inv_freq.detach().float().cpu()
        return inv_freq, torch.zeros(inv_freq.shape[0], dtype=torch.long)

    # --- text -------------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

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
        position_ids = block.meta.pos.to(self.device)  # [1, n]: batch of one, explicit 1-D positions
        out = self.language_model(inputs_embeds=block.embeds, position_ids=position_ids, cache=cache, use_cache=True)
        if not logits:
            return None
        return self.model.lm_head(out.last_hidden_state[:, -1]).float()[0]
