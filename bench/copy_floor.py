"""The memory-traffic floor a compression pass is held against: the time to copy the same K/V bytes
once into memory that is already allocated and touched (`Tensor.copy_`), measured in the same run.

A TaR+VaN pass must read every key and value and write back what it keeps, so one to two copies' worth
of time is the floor whatever the model's size; a ratio far above that means work or allocation in the
hot path. The at-scale check fills a cache of many tokens with random K/V to see how that ratio holds
where a real stream's cache would be."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace

import torch

from potwatch.bench.configurations import configuration
from potwatch.compression.budget import KVGeometry
from potwatch.compression.capped_cache import CappedKVCache
from potwatch.compression.monitor import CompressionMonitor
from potwatch.compression.policies.base import make_policy
from potwatch.compression.quantized_kv import QUANTIZED_FIELDS
from potwatch.compression.query_stats import QueryStats, sample_offsets
from potwatch.compression.token_meta import TokenKind, TokenMeta
from potwatch.compression.token_state import union


def stored_kv(cache: CappedKVCache, tokens: int) -> list[torch.Tensor]:
    """The K/V of the first `tokens` tokens of every layer as stored: the buffers, or for a quantised
    cache its codes, scales and key means."""
    if cache.quantized:
        return [cache.storage[name][:, :, :tokens] for name in QUANTIZED_FIELDS] + [cache.storage["key_mean"][:, :tokens]]
    return [b[:, :, :tokens] for layer in cache.layers for b in (layer.key_buffer, layer.value_buffer)]


def copy_floor_ms(cache: CappedKVCache, tokens: int, repeats: int = 5) -> float:
    """Median ms to copy_ the K and V of the first `tokens` tokens of every layer into preallocated buffers."""
    tokens = min(int(tokens), cache.capacity)
    sources = stored_kv(cache, tokens)
    targets = [torch.empty(s.shape, dtype=s.dtype, device=s.device) for s in sources]
    for target, source in zip(targets, sources):  # first touch, not timed
        target.copy_(source)
    times = []
    for _ in range(repeats):
        _sync(cache)
        started = time.perf_counter()
        for target, source in zip(targets, sources):
            target.copy_(source)
        _sync(cache)
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def clone_ms(cache: CappedKVCache, tokens: int) -> float:
    """ms to clone the same bytes into new tensors (allocation included; first touch too unless the allocator
    reuses memory freed earlier), for scale."""
    _sync(cache)
    started = time.perf_counter()
    clones = [t.clone() for t in stored_kv(cache, tokens)]
    _sync(cache)
    elapsed = 1000 * (time.perf_counter() - started)
    del clones
    return elapsed


@dataclass
class BlockLayout:
    """What one vision block of a model puts in the cache beside its K/V: for each of its tokens the frame
    (counted from the block's first), the patch row and column (-1 and a slot number for the text a
    family wraps its frames in, as SmolVLM2's timestamps), taken from a real block of the model."""

    frame: torch.Tensor  # [t] frame offset inside the block
    row: torch.Tensor  # [t]
    col: torch.Tensor  # [t]
    frames: int  # frames a block covers

    @property
    def tokens(self) -> int:
        return self.frame.shape[0]


def block_layout(adapter, frame_size: tuple[int, int], fps: float) -> tuple[BlockLayout, int]:
    """The layout of one vision block of `adapter` for frames of `frame_size` (width, height), and the
    system prompt's token count: read from an uncapped session fed one block of synthetic frames."""
    from potwatch.streaming.session import StreamSession
    from potwatch.world.demo_scene import render_frame

    session = StreamSession(adapter, mem_cap=None, policy="none", fps=fps)
    try:
        frames = adapter.frames_per_group * session.groups_per_block
        session.feed([render_frame(i / fps, frame_size, 60.0) for i in range(frames)])
        system, layer = session.system_tokens, session.cache.layers[0]
        meta = {name: layer.meta[name][0, system : layer.length].long() for name in ("frame", "row", "col")}
        layout = BlockLayout(meta["frame"] - meta["frame"].min(), meta["row"], meta["col"], frames)
        return layout, system
    finally:
        session.close()


def qwen_layout(grid: tuple[int, int], frames_per_group: int = 2) -> BlockLayout:
    """A Qwen-style block: one temporal group whose tokens are its patch grid in raster order."""
    rows, cols = grid
    k = torch.arange(rows * cols)
    return BlockLayout(torch.zeros_like(k), k // cols, k % cols, frames_per_group)


def synthetic_cache(geometry: KVGeometry, tokens: int, layout: BlockLayout, system_tokens: int,
                    device: str = "cpu", seed: int = 0) -> CappedKVCache:
    """A cache filled to `tokens` with random K/V: a system prompt, then whole blocks of visual tokens."""
    cache = CappedKVCache(geometry, tokens, device)
    fill_synthetic(cache, layout, system_tokens, seed)
    return cache


def fill_synthetic(cache: CappedKVCache, layout: BlockLayout, system_tokens: int, seed: int = 0) -> None:
    """(Re)fill `cache` to capacity with the same random K/V and layout every time for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    geometry = cache.geometry
    blocks = (cache.capacity - system_tokens) // layout.tokens
    n = system_tokens + blocks * layout.tokens
    shape = (1, geometry.kv_heads, n, geometry.head_dim)
    for layer in cache.layers:
        layer.truncate(0)
        keys = torch.randn(shape, generator=generator, dtype=torch.float32).to(layer.device, geometry.dtype)
        values = torch.randn(shape, generator=generator, dtype=torch.float32).to(layer.device, geometry.dtype)
        layer.update(keys, values)
        del keys, values
    positions = torch.arange(system_tokens).expand(geometry.pos_rows, system_tokens)
    cache.write_meta(0, TokenMeta.text(TokenKind.SYSTEM, positions))
    block = torch.arange(blocks).repeat_interleave(layout.tokens)
    frame = block * layout.frames + layout.frame.repeat(blocks)
    row, col = layout.row.repeat(blocks), layout.col.repeat(blocks)
    pos = (system_tokens + torch.arange(blocks * layout.tokens)).expand(geometry.pos_rows, -1)  # never read
    cache.write_meta(system_tokens, TokenMeta.vision(frame, row, col, pos))
    scores = cache.state_rows("score")
    if scores is not None:  # a running score per token, as a stream leaves them: all different
        scores[:, :n] = torch.rand(scores[:, :n].shape, generator=generator).to(scores.device)


def synthetic_queries(geometry: KVGeometry, block_tokens: int, device: str) -> QueryStats:
    """Random query statistics in the monitor's row layout, for policies that read them (a policy's running
    per-token scores are random too: see `fill_synthetic`)."""
    rows, dim = geometry.layers * geometry.kv_heads, geometry.head_dim
    offsets = sample_offsets(block_tokens)
    return QueryStats(torch.randn(rows, dim, device=device), torch.rand(rows, dim, device=device),
                      torch.randn(rows, len(offsets), dim, device=device), offsets, block_tokens)


def compression_at_scale(geometry: KVGeometry, tokens: int, policies: list[str], layout: BlockLayout,
                         system_tokens: int, device: str = "cpu", repeats: int = 3) -> dict:
    """One compression pass (to 0.75 of the cache, as the monitor does) per configuration on a cache of
    `tokens` tokens, against copy_ and clone of the same K/V bytes; a quantised configuration
    (`tar_van@8bit`) is also held against the copy of its own, smaller, stored bytes. The cache keeps slot
    counts, running scores and value norms when a policy needs them (a merging policy's pass includes its
    merge); policies that do not ignore them. Each configuration's figure is the median of `repeats`
    passes over the same refilled cache: one pass on a shared machine is one sample of its noise."""
    needs = union(geometry.token_state, *(make_policy(configuration(name)[0]).per_token_state for name in policies))
    by_width: dict[int, list[str]] = {}
    for name in policies:
        by_width.setdefault(configuration(name)[1], []).append(name)
    result = None
    for bits, names in by_width.items():
        # a quantised cache keeps no state attention reads (per-head slots: compression/quantized_kv.py)
        kept = tuple(state for state in needs if bits == 16 or state.attention_kwarg is None)
        shaped = replace(geometry, kv_bits=bits, token_state=kept)
        cache = synthetic_cache(shaped, tokens, layout, system_tokens, device)
        held = cache.length
        if result is None:
            allocating = clone_ms(cache, held)  # before copy_floor_ms frees buffers of this size for reuse
            result = {
                "tokens": held,
                "kv_bytes": held * cache.geometry.kv_bytes_per_token,
                "copy_ms": copy_floor_ms(cache, held, repeats),
                "clone_ms": allocating,
                "policies": {},
            }
        own_copy_ms = copy_floor_ms(cache, held, repeats)
        for index, name in enumerate(names):
            passes = []
            for attempt in range(repeats):
                if index or attempt:
                    fill_synthetic(cache, layout, system_tokens)
                policy = make_policy(configuration(name)[0])
                monitor = CompressionMonitor(cache, policy)
                if policy.needs_queries:  # what a session would hold: the latest block's query statistics
                    monitor.queries = synthetic_queries(geometry, layout.tokens, device)
                passes.append(monitor.make_room(cache.capacity - held + layout.tokens))
            ms = statistics.median(event.ms for event in passes)
            result["policies"][name] = {
                "ms": ms,
                "passes_ms": [event.ms for event in passes],
                "tokens_after": passes[-1].tokens_after,
                "vs_copy": ms / result["copy_ms"] if result["copy_ms"] else None,
                "vs_own_copy": ms / own_copy_ms if own_copy_ms else None,
            }
        del cache
    return result


def _sync(cache: CappedKVCache) -> None:
    device = cache.layers[0].device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
