"""Move cached keys to new positions without recomputing them: RoPE rotations compose, so a key
rotated for position p becomes the key for p + d after one more rotation by d.

The rotation runs in place, a few tokens at a time, so its scratch is small and fixed whatever the size
of the cache: the memory the cap does not count stays under 1 MiB on the CPU, 32 MiB on a GPU. Each
chunk's angles are formed as a float64 product reduced modulo 2*pi (right to about 1e-7 rad even for
shifts of a billion positions), then rounded to float32; the keys are rotated in float32 and written
back in their own dtype.

Plain torch; this is the CPU path and the reference for any faster kernel."""

from __future__ import annotations

import math

import torch

# Bytes of scratch a rotation works through at once (angles, cos/sin and the float32 keys of one chunk):
# on the CPU small enough to stay in its cache; on a GPU, where each chunk costs a dozen kernel launches,
# larger, so that a 2 GB cache re-rotates in a few hundred chunks rather than tens of thousands.
ROTATE_SCRATCH_BYTES = 1 << 20
DEVICE_ROTATE_SCRATCH_BYTES = 32 << 20
# Scratch bytes per key element that a chunk may hold at once. Counted from `shift_rotary_`: the angles
# in int64 then float64 (4 + 4 over half the elements, the int64 gone once converted; 6 with their
# float32 copy), then cos and sin (4), the chunk in float32 (4) and the half-width products (6): at
# most 14. The bound leaves room for allocator rounding.
SCRATCH_BYTES_PER_ELEMENT = 20


def rotation_chunk_tokens(heads: int, head_dim: int, device: torch.device | str = "cpu") -> int:
    """Tokens a rotation handles at once, so that one chunk's scratch fits `ROTATE_SCRATCH_BYTES` (on the
    CPU) or `DEVICE_ROTATE_SCRATCH_BYTES` (on any other device)."""
    scratch = ROTATE_SCRATCH_BYTES if torch.device(device).type == "cpu" else DEVICE_ROTATE_SCRATCH_BYTES
    return max(1, scratch // (SCRATCH_BYTES_PER_ELEMENT * heads * head_dim))


def rotation_angles(delta: torch.Tensor, inv_freq: torch.Tensor, section: torch.Tensor) -> torch.Tensor:
    """Angles [heads, n, head_dim/2] in float32, in [-pi, pi), for shifts `delta` [rows, heads, n].

    delta * inv_freq in float32 would be off by up to |delta| * 6e-8 rad (0.06 rad at a million
    positions), so the product is taken in float64 and reduced modulo 2*pi before rounding."""
    angle = delta[section.to(delta.device)].to(torch.float64).permute(1, 2, 0)  # [heads, n, head_dim/2]
    angle.mul_(inv_freq.to(device=delta.device, dtype=torch.float64))
    return angle.add_(math.pi).remainder_(2 * math.pi).sub_(math.pi).to(torch.float32)


def shift_rotary_(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor, section: torch.Tensor) -> None:
    """Rotate keys [heads, n, head_dim] in place by per-token position shifts `delta` [rows, heads, n].

    `inv_freq` [head_dim/2] are the rotary frequencies; `section` [head_dim/2] says which position row
    drives each frequency (all 0 for plain RoPE; Qwen's M-RoPE splits them over time, height, width).
    `keys` may be any strided view (a layer's slice of the cache)."""
    _rotate_in_chunks(keys, lambda begin, end: delta[:, :, begin:end], inv_freq, section)


def move_rotary_(keys: torch.Tensor, old_pos: torch.Tensor, new_pos: torch.Tensor, inv_freq: torch.Tensor,
                 section: torch.Tensor) -> None:
    """Rotate keys [heads, n, head_dim] in place from position ids `old_pos` to `new_pos` [rows, heads, n];
    the shifts are taken a chunk at a time too, so not even they take a layer-sized tensor."""
    _rotate_in_chunks(keys, lambda begin, end: new_pos[:, :, begin:end] - old_pos[:, :, begin:end], inv_freq, section)


def _rotate_in_chunks(keys: torch.Tensor, shifts, inv_freq: torch.Tensor, section: torch.Tensor) -> None:
    """Each chunk of tokens is read, rotated in float32 by `shifts(begin, end)` and written back in the
    keys' dtype."""
    heads, n, dim = keys.shape
    half = dim // 2
    chunk = rotation_chunk_tokens(heads, dim, keys.device)
    for begin in range(0, n, chunk):
        end = min(n, begin + chunk)
        angle = rotation_angles(shifts(begin, end), inv_freq, section)  # [heads, c, half]
        cos, sin = angle.cos(), angle.sin_()
        part = keys[:, begin:end]
        work = part.to(torch.float32)  # float32 keys: the cache itself, so both halves are made before writing
        first, second = work[..., :half], work[..., half:]
        new_first = (first * cos).sub_(second * sin)
        new_second = (second * cos).add_(first * sin)
        part[..., :half] = new_first
        part[..., half:] = new_second


def shift_rotary(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor, section: torch.Tensor) -> torch.Tensor:
    """A rotated copy of keys [heads, n, head_dim]; see `shift_rotary_`, which rotates in place."""
    out = keys.clone()
    shift_rotary_(out, delta, inv_freq, section)
    return out
