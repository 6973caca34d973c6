"""When the Triton kernels run: only on CUDA tensors, and only where triton imports. Everything else
(the CPU, a machine without triton) takes the plain-torch path, which is also the kernels' test oracle."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_ready(tensor: torch.Tensor) -> bool:
    """True when `tensor` lives on a CUDA device and triton is installed."""
    return tensor.is_cuda and triton_importable()
