"""Out of device memory in the middle of a block: what to retry with, and how to free memory first.

A CUDA out-of-memory error during a block usually comes from the language model's activations for the
block's tokens, which scale with the piece prefilled at once. Retrying with halves, quarters, ... of
the block (chunked prefill: the same K/V) fits where the whole did not; past `MIN_PIECE_TOKENS` there
is nothing left to gain and the session reports the error instead."""

from __future__ import annotations

import gc

import torch

MIN_PIECE_TOKENS = 16


def piece_sizes(block_tokens: int) -> list[int]:
    """Sizes of the pieces to try, in order, after the whole block ran out of memory."""
    sizes = []
    size = block_tokens
    while size > MIN_PIECE_TOKENS:
        size = max(MIN_PIECE_TOKENS, -(-size // 2))
        sizes.append(size)
    return sizes


def release_device_memory(device: torch.device) -> None:
    """Give the failed attempt's tensors back to the device before the next one."""
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
