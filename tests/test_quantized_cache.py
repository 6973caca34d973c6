"""`--kv-bits 8|4`: K/V stored as codes, scales and a 16-bit key head-mean under the same byte cap.

The cap still holds at every step, the capacity follows the bits, the decoded K/V stay within the
quantisation step of what the model wrote, compaction moves codes without touching them, and every
head of a layer keeps the same tokens. How close the answers stay to the 16-bit cache's is tested on
the trained model, whose answers depend on what it saw (tests/test_tiny_model.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from potwatch.bench.logits import copy_cache_into, spare_copy
from potwatch.compression.budget import KVGeometry
from potwatch.compression.capped_cache import CappedKVCache
from potwatch.compression.monitor import CompressionMonitor
from potwatch.compression.policies.base import make_policy
from potwatch.compression.token_meta import TokenKind, TokenMeta
from potwatch.errors import UserError
from potwatch.kernels.kv_quant import qmax
from potwatch.streaming.session import StreamSession
from tests.cache_invariants import assert_cache_invariants
from tests.conftest import random_frames
from tests.families import family_adapter

GEOMETRY = KVGeometry(layers=2, kv_heads=2, head_dim=64, dtype=torch.float32, pos_rows=3)


def quantized(bits: int, geometry: KVGeometry = GEOMETRY) -> KVGeometry:
    return dataclasses.replace(geometry, kv_bits=bits)


def keys_with_shared_outliers(tokens: int, geometry: KVGeometry = GEOMETRY, seed: int = 0) -> torch.Tensor:
    """Keys [1, heads, tokens, head_dim] with two large channels every head shares, as real keys have."""
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn((1, geometry.kv_heads, tokens, geometry.head_dim), generator=generator)
    keys[..., 3] += 40.0
    keys[..., 17] -= 25.0
    return keys


def fill(cache: CappedKVCache, keys: torch.Tensor, values: torch.Tensor, frames_of: int = 4) -> None:
    start, n = cache.length, keys.shape[2]
    for layer in range(cache.geometry.layers):
        cache.update(keys, values, layer)
    index = torch.arange(n)
    frame = index // frames_of
    meta = TokenMeta.vision(frame, index % frames_of // 2, index % 2, torch.stack([frame, index % 2, index % 2]))
    cache.write_meta(start, meta)


@pytest.mark.parametrize("bits", [8, 4])
def test_the_cap_holds_and_capacity_follows_the_bits(bits):
    plain = KVGeometry(layers=28, kv_heads=2, head_dim=128, dtype=torch.bfloat16)  # Qwen2-VL-2B on a GPU
    geometry = quantized(bits, plain)
    cap = 100_000_000
    cache = CappedKVCache(geometry, geometry.tokens_for(cap))
    assert cache.nbytes == geometry.bytes_for(cache.capacity) <= cap
    # codes + a scale per 32 channels, per head; one 16-bit key mean per token and layer; one layer's
    # K and V at the model dtype for decoding
    per_layer = 2 * 2 * 128 * bits // 8 + 2 * 2 * 4 * 2 + 128 * 2
    assert geometry.kv_bytes_per_token == 28 * per_layer
    assert geometry.workspace_bytes_per_token == 2 * 2 * 128 * 2
    gain = geometry.tokens_for(cap) / plain.tokens_for(cap)
    assert gain == pytest.approx({8: 1.21, 4: 1.70}[bits], abs=0.01)


def test_float32_side_data_is_kept_in_16_bits():
    geometry = quantized(8, dataclasses.replace(GEOMETRY, dtype=torch.float32))
    cache = CappedKVCache(geometry, 16)
    assert cache.storage["key_mean"].dtype == torch.float16 and cache.storage["key_scales"].dtype == torch.float16
    assert cache.storage["key_codes"].dtype == torch.int8
    assert CappedKVCache(quantized(4), 16).storage["key_codes"].shape[-1] == GEOMETRY.head_dim // 2


@pytest.mark.parametrize("bits", [8, 4])
def test_decoded_kv_stay_within_the_quantisation_step(bits):
    cache = CappedKVCache(quantized(bits), 64)
    keys = keys_with_shared_outliers(40)
    values = torch.randn(keys.shape, generator=torch.Generator().manual_seed(1))
    got_keys, got_values = cache.update(keys, values, 0)
    assert got_keys.shape == keys.shape and got_keys.dtype == torch.float32
    group = GEOMETRY.quant_group
    for want, got, centred in ((keys, got_keys, True), (values, got_values, False)):
        deviation = want - (want.mean(dim=1, keepdim=True) if centred else 0)
        step = deviation.view(*want.shape[:3], -1, group).abs().amax(-1) / qmax(bits)  # per group
        error = (got - want).view(*want.shape[:3], -1, group).abs()
        # half a step of rounding, plus what the 16-bit scale and key mean round away
        assert bool((error <= step[..., None] * 0.51 + 0.03 * (1 + want.abs().amax())).all())
    # the shared outliers sit in the 16-bit mean: the per-head steps stay those of the small channels
    assert float((got_keys - keys).abs().mean()) < {8: 0.02, 4: 0.2}[bits]


def test_compaction_moves_codes_whole_and_keeps_heads_of_a_layer_together():
    cache = CappedKVCache(quantized(8), 64)
    keys = keys_with_shared_outliers(32)
    fill(cache, keys, -keys)
    before = [tuple(t.clone() for t in layer.dequantized()) for layer in cache.layers]
    keep = torch.tensor([0, 3, 4, 9, 20, 31]).expand(GEOMETRY.layers * GEOMETRY.kv_heads, 6).contiguous()
    cache.compact(keep)
    for layer, (old_keys, old_values) in zip(cache.layers, before):
        new_keys, new_values = layer.dequantized()
        assert torch.equal(new_keys, old_keys[:, :, keep[0]]) and torch.equal(new_values, old_values[:, :, keep[0]])
    apart = keep.clone()
    apart[1, 1] = 2  # head 1 of layer 0 would keep another token than head 0
    with pytest.raises(ValueError, match="same tokens in every head"):
        cache.compact(apart)


@pytest.mark.parametrize("policy", ["tar_van", "expected_attention", "global_score"])
def test_the_monitor_picks_one_set_per_layer_by_the_heads_votes(policy):
    cache = CappedKVCache(quantized(4), 96)
    keys = keys_with_shared_outliers(80, seed=3)
    fill(cache, keys, torch.randn(keys.shape, generator=torch.Generator().manual_seed(4)))
    monitor = CompressionMonitor(cache, make_policy(policy))
    if make_policy(policy).needs_queries:
        from tests.query_fixtures import random_queries

        monitor.queries = random_queries(GEOMETRY.layers * GEOMETRY.kv_heads, GEOMETRY.head_dim, seed=1, block_tokens=16)
    assert monitor.make_room(40) is not None
    frames = cache.rows("frame")[:, : cache.length].view(GEOMETRY.layers, GEOMETRY.kv_heads, -1)
    assert bool((frames == frames[:, :1]).all()), "heads of a layer hold different tokens"
    assert cache.length + 40 <= cache.capacity


@pytest.mark.parametrize(("bits", "policy"), [(8, "tar_van"), (4, "tar_van"), (8, "uniform"), (8, "global_score")])
def test_a_stream_under_the_cap_with_quantised_kv(demo_adapter, bits, policy):
    session = StreamSession(demo_adapter, mem_cap="400kB", policy=policy, max_new_tokens=8, kv_bits=bits)
    plain = StreamSession(demo_adapter, mem_cap="400kB", policy=policy, max_new_tokens=8)
    assert session.cache.capacity > plain.cache.capacity
    assert f"in {bits} bits" in session.describe_cap()
    for index, frame in enumerate(random_frames(80, seed=5)):
        session.feed(frame)
        assert_cache_invariants(session)
        if index in (30, 79):
            assert session.ask("what is happening?").text is not None
            assert_cache_invariants(session)
    stats = session.stats()
    assert stats["compressions"] >= 3 and stats["kv_bits"] == bits
    assert stats["peak_bytes"] <= session.cap_bytes and session.cache.nbytes <= session.cap_bytes


def test_compact_positions_rotate_quantised_keys(demo_adapter):
    """Families that re-number positions after each compaction decode, rotate and re-quantise the keys."""
    session = StreamSession(family_adapter("demo-llava"), mem_cap="300kB", kv_bits=8, max_new_tokens=8)
    assert session.positions_mode == "compact"
    for frame in random_frames(60, seed=2, size=(64, 64)):
        session.feed(frame)
        assert_cache_invariants(session)
    assert session.stats()["compressions"] >= 3
    assert session.ask("what moved?").text is not None


def test_bad_bits_and_an_uncapped_quantised_cache_are_refused(demo_adapter):
    with pytest.raises(UserError, match="use 16 \\(no quantisation\\), 8 or 4"):
        StreamSession(demo_adapter, mem_cap="1MB", kv_bits=5)
    with pytest.raises(UserError, match="needs a memory cap"):
        StreamSession(demo_adapter, mem_cap=None, kv_bits=8)
    session = StreamSession(demo_adapter, mem_cap="1MB")
    with pytest.raises(UserError):
        session.reset(kv_bits=3)
    assert session.kv_bits == 16 and not session.cache.quantized
    session.reset(kv_bits=4)
    assert session.cache.quantized and session.stats()["kv_bits"] == 4
    with pytest.raises(ValueError, match="cannot grow"):
        CappedKVCache(quantized(8), None)


def test_a_saved_spare_copy_keeps_the_bits():
    cache = CappedKVCache(quantized(8), 32)
    keys = keys_with_shared_outliers(8)
    fill(cache, keys, keys)
    spare = spare_copy(cache, 4)
    copy_cache_into(spare, cache)
    assert spare.quantized and spare.length == 8
    copied, original = spare.layers[1].dequantized()[0].clone(), cache.layers[1].dequantized()[0]
    assert torch.allclose(copied, original, atol=0.05 * float(original.abs().max()) / qmax(8))
    assert spare.kind_counts()[TokenKind.VISION] == 8


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("center", [True, False])
def test_the_cache_decoder_matches_the_reference(bits, dtype, center):
    """The cache decodes with a two-pass torch path; the spelled-out reference is the oracle. (The
    reference rounds to the 16-bit side dtype once at the end; the cache's path writes float32
    straight into a float32 workspace, so they differ by that one rounding.)"""
    from potwatch.compression.quantized_kv import dequantize_into
    from potwatch.kernels.kv_quant import dequantize_reference, quantize_reference

    x = keys_with_shared_outliers(50, seed=11).to(dtype)
    q = quantize_reference(x.to(torch.float16 if dtype == torch.float32 else dtype), bits, 32, center)
    want = dequantize_reference(q).to(dtype)
    out = torch.full((1, 2, 60, 64), float("nan"), dtype=dtype)
    dequantize_into(out[:, :, 5:55], q)  # a strided slice of a bigger buffer, as the workspace is
    assert torch.allclose(out[:, :, 5:55], want, rtol=8e-3 if dtype == torch.bfloat16 else 1e-3, atol=1e-6)
    assert bool(out[:, :, :5].isnan().all()) and bool(out[:, :, 55:].isnan().all())


@pytest.mark.parametrize("policy", ["keep_merge", "adakv"])
def test_per_head_slot_policies_need_16_bits_and_say_so(demo_adapter, policy):
    with pytest.raises(UserError, match=f"Policy '{policy}' needs --kv-bits 16"):
        StreamSession(demo_adapter, mem_cap="1MB", kv_bits=8, policy=policy)
    session = StreamSession(demo_adapter, mem_cap="1MB", kv_bits=4)
    with pytest.raises(UserError, match="needs --kv-bits 16"):
        session.reset(policy=policy)
    assert session.policy_name == "tar_van" and session.cache.quantized  # unchanged
