"""GPU memory against what the cap promises: the device memory a configuration's run peaked at
(`torch.cuda.max_memory_allocated`) against the model's weights plus the cache, so what the cap does not
see (activations, compression scratch, the LM head's logits) is a measured figure, not a guess.

Only on CUDA: elsewhere these functions do nothing and return None."""

from __future__ import annotations

import torch


def weights_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters, as loaded (their dtype, on their device)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def start_peak(device: torch.device) -> None:
    """Count the peak from here: wait for queued work, then reset the allocator's high-water mark."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_figures(adapter, cache_bytes: int, cap_bytes: int | None) -> dict | None:
    """Peak allocated bytes since `start_peak`, beside the weights and the cache (its allocation, or for
    an uncapped cache what it grew to); None off CUDA."""
    device = adapter.device
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    weights = weights_bytes(adapter.model)
    budget = weights + (cap_bytes if cap_bytes is not None else cache_bytes)
    return {
        "device": torch.cuda.get_device_name(device),
        "peak_allocated_bytes": peak,
        "weights_bytes": weights,
        "cache_bytes": cache_bytes,
        "cap_bytes": cap_bytes,
        "beyond_weights_and_cache_bytes": peak - weights - cache_bytes,
        "peak_over_weights_and_cap": peak / budget if budget else None,
    }
