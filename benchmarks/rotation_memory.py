"""Peak host memory of re-rotating one big cache layer (`CappedLayer.move_positions`), beyond the cache.

Run in a fresh process so the high-water mark (VmHWM) belongs to the move alone:
    .venv/bin/python benchmarks/rotation_memory.py [tokens] [kv_heads] [head_dim]
Prints the layer's key bytes and the peak RSS added by the move, in MB."""

from __future__ import annotations

import sys

import torch

from potwatch.compression.budget import KVGeometry
from potwatch.compression.capped_cache import CappedKVCache


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that over an exec from the
    process that spawned this one, so under pytest it would report pytest's own peak."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def rotation_peak(tokens: int, kv_heads: int, head_dim: int) -> tuple[float, float]:
    """(key bytes of the layer, peak RSS the move added), both in MB."""
    geometry = KVGeometry(layers=1, kv_heads=kv_heads, head_dim=head_dim, dtype=torch.float32)
    cache = CappedKVCache(geometry, capacity=tokens)
    layer = cache.layers[0]
    layer.key_buffer.normal_()  # touch every page, so the cache itself is already counted
    layer.value_buffer.normal_()
    layer.length = tokens
    layer._refresh_views()
    new_pos = torch.arange(tokens).expand(geometry.pos_rows, kv_heads, tokens)  # a view: no extra memory
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    section = torch.arange(head_dim // 2) % geometry.pos_rows
    before = peak_rss_mb()
    layer.move_positions(new_pos, inv_freq, section)
    return layer.key_buffer.nbytes / 2**20, peak_rss_mb() - before


if __name__ == "__main__":
    torch.set_num_threads(1)
    sizes = [int(arg) for arg in sys.argv[1:]] or [1 << 16, 2, 128]
    keys_mb, added_mb = rotation_peak(*sizes)
    print(f"keys {keys_mb:.1f} MB; peak RSS added by the move {added_mb:.1f} MB")
