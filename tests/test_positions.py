"""Positions that never overflow: gap-free re-numbering after compaction, with keys rotated to match."""

from __future__ import annotations

import pytest
import torch

from potwatch.compression.budget import KVGeometry
from potwatch.compression.capped_cache import CappedKVCache
from potwatch.compression.monitor import CompressionMonitor
from potwatch.compression.policies.base import make_policy
from potwatch.compression.token_meta import TokenKind, TokenMeta
from potwatch.kernels.rope_shift import shift_rotary
from potwatch.models.positions import MRopePositions
from potwatch.streaming.session import StreamSession
from tests.conftest import random_frames
from tests.device import ROTATION, assert_close, on_device
from tests.position_ledger import PositionLedger, cache_rows, compact_ids


def layer_zero_keys(adapter, embeds: torch.Tensor, pos: torch.Tensor, layer: int = 0) -> torch.Tensor:
    cache = CappedKVCache(adapter.geometry(), capacity=embeds.shape[1], device=adapter.device)
    position_ids = on_device(pos.unsqueeze(1), adapter.device)
    with torch.no_grad():
        adapter.model.model.language_model(inputs_embeds=embeds, position_ids=position_ids, cache=cache, use_cache=True)
    return cache.layers[layer].keys[0]


@pytest.mark.parametrize("adapter_name", ["demo_adapter", "demo25_adapter"])
def test_keys_rotated_to_new_positions_equal_keys_computed_there(adapter_name, request):
    adapter = request.getfixturevalue(adapter_name)
    torch.manual_seed(0)
    n = 12
    embeds = on_device(torch.randn(1, n, adapter.model.config.text_config.hidden_size), adapter.device)
    old = torch.stack([torch.arange(n) * 3 + 500, torch.arange(n) % 4 + 700, torch.arange(n) // 4 + 900])
    inv_freq, section = adapter.rotary_frequencies()
    # any per-token shift, per section: layer 0's keys depend on positions only through the rotation
    new = torch.stack([torch.arange(n), torch.arange(n) % 4 + 2, torch.arange(n) // 4 + 5])
    delta = on_device((new - old).unsqueeze(1).expand(3, 2, n), adapter.device)
    moved = shift_rotary(layer_zero_keys(adapter, embeds, old), delta, inv_freq, section)
    assert_close(moved, layer_zero_keys(adapter, embeds, new), ROTATION)
    # a uniform shift keeps every relative position, so every layer's keys must match
    shifted = old - 450
    last = adapter.geometry().layers - 1
    delta = on_device(torch.full((3, 2, n), -450), adapter.device)
    moved = shift_rotary(layer_zero_keys(adapter, embeds, old, last), delta, inv_freq, section)
    assert_close(moved, layer_zero_keys(adapter, embeds, shifted, last), ROTATION)


@pytest.mark.parametrize("time_step", [1.0, 2.0, 0.5])
def test_without_eviction_the_compact_layout_is_the_original_one(time_step):
    positions = MRopePositions(time_step=time_step)
    metas = [TokenMeta.text(TokenKind.SYSTEM, positions.text(7))]
    for first_group in (0, 3):  # two video segments with a dialogue turn between them
        for group in range(first_group, first_group + 3):
            k = torch.arange(6)
            row, col = k // 3, k % 3
            group_ids = torch.full((6,), group)
            metas.append(TokenMeta.vision(group_ids * 2, row, col, positions.vision(group_ids, row, col)))
        metas.append(TokenMeta.text(TokenKind.DIALOGUE, positions.text(5), turn=first_group))
    join = lambda name: torch.cat([getattr(m, name) for m in metas]).expand(2, -1)  # noqa: E731
    layout = positions.compact_layout(join("kind"), join("frame"), join("row"), join("col"))
    original = torch.cat([m.pos for m in metas], dim=1)
    assert torch.equal(layout[:, 0], original) and torch.equal(layout[:, 1], original)


def test_compaction_on_streams_and_questions_keeps_positions_bounded(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap="400kB", positions="compact", max_new_tokens=4)
    ledger = PositionLedger(session)  # every id handed out or moved is checked exactly as it happens
    for index, frame in enumerate(random_frames(60, seed=11)):
        session.feed(frame)
        bound = session.cache.capacity + session.block_tokens
        assert session.positions.max_position <= bound
        assert session.positions.max_position == held_max(session.cache)  # the newest block is held whole
        if index % 20 == 19:
            session.ask("and now?")
            assert session.positions.max_position == held_max(session.cache)
    stats = session.stats()
    assert stats["compressions"] > 5 and stats["max_position"] <= bound
    assert ledger.renumberings == stats["compressions"]
    ledger.check_cache()  # every held token carries the ids it was last given, in arrival order


def held_max(cache) -> int:
    return int(cache.storage["pos"][..., : cache.length].max())


def test_a_simulated_day_at_1fps_never_passes_the_bound(demo_adapter):
    """The fast path: the real cache, monitor, policy, layout and key rotation, without the model's
    forward passes (random K/V stand in for its output), for 86,400 frames at 1 fps."""
    geometry = KVGeometry(layers=1, kv_heads=2, head_dim=16, dtype=torch.float32)
    cache = CappedKVCache(geometry, capacity=400)
    monitor = CompressionMonitor(cache, make_policy("tar_van"))
    positions = MRopePositions(time_step=1.0)
    inv_freq, section = demo_adapter.rotary_frequencies()
    generator = torch.Generator().manual_seed(0)

    def write(meta):
        start = cache.length
        shape = (1, 2, len(meta), 16)
        cache.update(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator), 0)
        cache.write_meta(start, meta)

    write(TokenMeta.text(TokenKind.SYSTEM, positions.text(20)))
    groups_per_block, grid = 30, 2  # 30 temporal groups (a minute of video) of 2x2 tokens per block
    block = groups_per_block * grid * grid
    bound = cache.capacity + block
    frames_per_day = 86_400
    highest = 0
    base, segment_first = 20, 0  # the prompt holds ids 0..19; the first block opens a video segment at 20
    for first_group in range(0, frames_per_day // 2, groups_per_block):
        if monitor.make_room(block):
            largest = cache.renumber(positions.compact_layout, inv_freq, section)
            for fields, ids in cache_rows(cache):  # exactly the gap-free layout, recomputed by a plain loop
                assert ids == compact_ids(fields, rows=3, time_step=1.0)
            assert largest == held_max(cache)
            positions.restart_after(largest)
            base, segment_first = largest + 1, first_group  # the next block opens a new segment
        k = torch.arange(block)
        group = first_group + k // (grid * grid)
        row, col = (k % (grid * grid)) // grid, k % grid
        write(TokenMeta.vision(group * 2, row, col, positions.vision(group, row, col)))
        # the segment's groups take base + 0, 1, ... in time (rows and columns stay below): exactly
        assert positions.max_position == held_max(cache) == base + first_group + groups_per_block - 1 - segment_first
        highest = max(highest, positions.max_position)
        assert positions.max_position <= bound
    assert monitor.event_count > 500
    assert highest <= bound < 86_400 // 2  # "keep" would have reached 43,200
