"""The capped cache: allocated once, written in place, compacted per head with metadata in step,
and attended over by transformers exactly like its own DynamicCache."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from potwatch.compression.budget import KVGeometry
from potwatch.compression.capped_cache import CacheOverflowError, CappedKVCache, indices_where
from potwatch.compression.token_meta import TokenKind, TokenMeta
from tests.device import on_device

GEOMETRY = KVGeometry(layers=2, kv_heads=3, head_dim=8, dtype=torch.float32, pos_rows=3)


def tagged_tokens(first_frame: int, frames: int, per_frame: int = 4):
    """Visual tokens whose keys encode (frame, row, col) and values encode a unique id."""
    frame = torch.arange(first_frame, first_frame + frames).repeat_interleave(per_frame)
    k = torch.arange(frames * per_frame) % per_frame
    row, col = k // 2, k % 2
    pos = torch.stack([frame, row, col])
    meta = TokenMeta.vision(frame, row, col, pos)
    keys = torch.zeros(1, GEOMETRY.kv_heads, len(frame), GEOMETRY.head_dim)
    keys[..., 0], keys[..., 1], keys[..., 2] = frame.float(), row.float(), col.float()
    keys[..., 3] = torch.arange(GEOMETRY.kv_heads).float()[:, None]  # the head it was written to
    values = keys.clone() * 10
    return keys, values, meta


def write(cache: CappedKVCache, keys, values, meta):
    start = cache.length
    for index in range(GEOMETRY.layers):
        cache.update(keys, values, index)
    cache.write_meta(start, meta)


def test_storage_is_allocated_once_and_bounded():
    cache = CappedKVCache(GEOMETRY, capacity=50)
    pointers = [(layer.key_buffer.data_ptr(), layer.value_buffer.data_ptr()) for layer in cache.layers]
    assert cache.nbytes <= GEOMETRY.bytes_for(50)
    keys, values, meta = tagged_tokens(0, 10)
    write(cache, keys, values, meta)
    assert cache.length == 40
    with pytest.raises(CacheOverflowError):
        write(cache, *tagged_tokens(10, 3))
    cache.truncate(40)
    cache.compact(torch.arange(0, 40, 2).expand(GEOMETRY.layers * GEOMETRY.kv_heads, -1))
    assert cache.length == 20
    assert pointers == [(layer.key_buffer.data_ptr(), layer.value_buffer.data_ptr()) for layer in cache.layers]


def test_update_returns_views_of_the_filled_prefix():
    cache = CappedKVCache(GEOMETRY, capacity=32)
    keys, values, _ = tagged_tokens(0, 2)
    out_k, out_v = cache.update(keys, values, 0)
    assert out_k.shape == (1, 3, 8, 8)
    assert out_k.data_ptr() == cache.layers[0].key_buffer.data_ptr()
    assert torch.equal(out_k, keys) and torch.equal(out_v, values)


def test_per_head_compaction_keeps_keys_values_and_metadata_in_step():
    torch.manual_seed(0)
    cache = CappedKVCache(GEOMETRY, capacity=200)
    system = TokenMeta.text(TokenKind.SYSTEM, torch.arange(5).expand(3, 5))
    sys_keys = torch.full((1, 3, 5, 8), -1.0)
    write(cache, sys_keys, sys_keys, system)
    next_frame = 0
    for _ in range(12):  # many rounds of append + random per-head eviction
        write(cache, *tagged_tokens(next_frame, 5))
        next_frame += 5
        keeps = []
        for layer in cache.layers:
            kinds = layer.meta["kind"][:, : layer.length]
            visual = indices_where(kinds == TokenKind.VISION)
            protected = indices_where(kinds != TokenKind.VISION)
            keep_n = visual.shape[1] // 2
            choice = torch.stack([torch.randperm(visual.shape[1])[:keep_n].sort().values for _ in range(3)])
            keeps.append(torch.cat([protected, torch.gather(visual, 1, choice)], 1).sort(1).values)
        cache.compact(torch.cat(keeps))  # every (layer, head) row at once
    for layer in cache.layers:
        n = layer.length
        kinds = layer.meta["kind"][:, :n]
        assert int((kinds == TokenKind.SYSTEM).sum()) == 5 * 3, "protected tokens were evicted"
        vis = kinds == TokenKind.VISION
        keys = layer.key_buffer[0, :, :n]
        assert torch.equal(keys[..., 0][vis], layer.meta["frame"][:, :n][vis].float())
        assert torch.equal(keys[..., 1][vis], layer.meta["row"][:, :n][vis].float())
        assert torch.equal(keys[..., 2][vis], layer.meta["col"][:, :n][vis].float())
        assert torch.equal(layer.pos[0, :, :n][vis], layer.meta["frame"][:, :n][vis])
        heads = torch.arange(3)[:, None].expand(3, n)
        assert torch.equal(keys[..., 3][vis], heads[vis].float()), "a token moved to another head"
        assert torch.equal(layer.value_buffer[0, :, :n][vis], keys[vis] * 10)
        # heads made different choices, yet each holds the same count
        frames_per_head = [set(layer.meta["frame"][h, :n][vis[h]].tolist()) for h in range(3)]
        assert len({len(layer.meta["frame"][h, :n][vis[h]]) for h in range(3)}) == 1
        assert frames_per_head[0] != frames_per_head[1] or frames_per_head[1] != frames_per_head[2]


def test_language_model_gives_identical_logits_with_capped_and_dynamic_cache(demo_adapter):
    lm = demo_adapter.model.model.language_model
    torch.manual_seed(1)
    device = demo_adapter.device
    embeds = on_device(torch.randn(1, 30, lm.config.hidden_size), device)
    pos = on_device(torch.arange(30).view(1, 1, -1).expand(3, 1, 30), device)
    capped = CappedKVCache(demo_adapter.geometry(), capacity=64, device=device)
    dynamic = DynamicCache(config=lm.config)
    with torch.no_grad():
        outputs = []
        for cache in (capped, dynamic):
            first = lm(inputs_embeds=embeds[:, :20], position_ids=pos[..., :20], cache=cache, use_cache=True)
            second = lm(inputs_embeds=embeds[:, 20:], position_ids=pos[..., 20:], cache=cache, use_cache=True)
            outputs.append(torch.cat([first.last_hidden_state, second.last_hidden_state], 1))
    assert torch.equal(outputs[0], outputs[1])


def test_uncapped_cache_grows_for_full_cache_comparisons():
    cache = CappedKVCache(GEOMETRY, capacity=None)
    start = cache.capacity
    write(cache, *tagged_tokens(0, start // 4 + 10))
    assert cache.capacity > start and cache.length == (start // 4 + 10) * 4
