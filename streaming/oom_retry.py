"""Out of device memory: what to retry a block with, how to tell an allocation failed, and how to free
memory first.

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


# How allocators word running out: CUDA's "CUDA out of memory", the CPU's "can't allocate memory" or
# "not enough memory" (torch raises those as plain RuntimeErrors), MPS's "MPS backend out of memory".
_OUT_OF_MEMORY_WORDS = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` says a device (or the host) had no room for an allocation."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(words in str(error) for words in _OUT_OF_MEMORY_WORDS)


def release_device_memory(device: torch.device) -> None:
    """Give the failed attempt's tensors back to the device before the next one."""
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
