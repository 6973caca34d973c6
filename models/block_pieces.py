"""Cut a block of tokens into consecutive pieces for the language model, to prefill it piece by piece.

The language model attends causally, so prefilling the pieces one after another writes the same K/V
as the whole block at once (chunked prefill), with activations a fraction of the size. The session
does this when a block runs out of device memory."""

from __future__ import annotations

from dataclasses import fields, replace

from potwatch.compression.token_meta import TokenMeta
from potwatch.models.adapter import Block
from potwatch.models.qwen3_vl import DeepstackBlock


def split_block(block: Block, piece_tokens: int | None) -> list[Block]:
    """Consecutive pieces of at most `piece_tokens` tokens (the whole block when None or large enough)."""
    n = len(block)
    if piece_tokens is None or piece_tokens >= n:
        return [block]
    if piece_tokens < 1:
        raise ValueError(f"piece_tokens must be at least 1, got {piece_tokens}")
    return [_piece(block, start, min(start + piece_tokens, n)) for start in range(0, n, piece_tokens)]


def _piece(block: Block, start: int, stop: int) -> Block:
    meta = TokenMeta(*(getattr(block.meta, field.name)[..., start:stop] for field in fields(TokenMeta)))
    piece = replace(block, embeds=block.embeds[:, start:stop], meta=meta)
    if isinstance(block, DeepstackBlock) and block.deepstack:
        # DeepStack features exist for the patch tokens only: take those that fall in this piece
        mask = block.visual_mask[0]
        first, last = int(mask[:start].sum()), int(mask[:stop].sum())
        piece.visual_mask = block.visual_mask[:, start:stop]
        piece.deepstack = [features[first:last] for features in block.deepstack] if last > first else []
    return piece
