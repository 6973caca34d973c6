"""Cut a block of tokens into consecutive pieces for the language model, to prefill it piece by piece.

The language model attends causally, so prefilling the pieces one after another writes the same K/V
as the whole block at once (chunked prefill), with activations a fraction of the size. The session
does this when a block runs out of device memory."""

from __future__ import annotations

from potwatch.models.adapter import Block


def split_block(block: Block, piece_tokens: int | None) -> list[Block]:
    """Consecutive pieces of at most `piece_tokens` tokens (the whole block when None or large enough)."""
    n = len(block)
    if piece_tokens is None or piece_tokens >= n:
        return [block]
    if piece_tokens < 1:
        raise ValueError(f"piece_tokens must be at least 1, got {piece_tokens}")
    return [block.piece(start, min(start + piece_tokens, n)) for start in range(0, n, piece_tokens)]
