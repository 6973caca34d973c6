"""Move cached keys to new positions without recomputing them: RoPE rotations compose, so a key
rotated for position p becomes the key for p + d after one more rotation by d.

Plain torch; this is the CPU path and the reference for any faster kernel."""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def shift_rotary(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor, section: torch.Tensor) -> torch.Tensor:
    """Keys [heads, n, head_dim] rotated by per-token position shifts `delta` [rows, heads, n].

    `inv_freq` [head_dim/2] are the rotary frequencies; `section` [head_dim/2] says which position row
    drives each frequency (all 0 for plain RoPE; Qwen's M-RoPE splits them over time, height, width).
    Angles are formed in float64 so the shift adds no error beyond the keys' own precision."""
    per_frequency = delta.to(torch.float64)[section.to(delta.device)]  # [head_dim/2, heads, n]
    angle = per_frequency.permute(1, 2, 0) * inv_freq.to(device=keys.device, dtype=torch.float64)
    cos = torch.cat((angle.cos(), angle.cos()), dim=-1)
    sin = torch.cat((angle.sin(), angle.sin()), dim=-1)
    work = keys.to(torch.float64)
    return (work * cos + rotate_half(work) * sin).to(keys.dtype)
