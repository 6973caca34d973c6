"""The hard cap, protected text and bounded positions for every 1-D RoPE family's demo model, as
tests/test_session_cap.py checks them for Qwen."""

from __future__ import annotations

import pytest

from potwatch.compression.token_meta import TokenKind
from potwatch.streaming.session import StreamSession
from tests.conftest import random_frames
from tests.families import FAMILY_DEMOS, block_length, family_adapter, patch_grid

# Tiny demos take 580 B a token: 250 kB holds ~430 tokens (LLaVA: 16 a frame), 400 kB ~690 (SmolVLM:
# 37 a frame with the byte-level timestamp line, and a long reopened user turn in the dialogue share).
# Tiny Qwen3-VL: 918 B a token, 34 a group of two 120 x 160 frames; 400 kB holds ~435.
SMALL_CAP = {"demo-llava": "250kB", "demo-smolvlm": "400kB", "demo-qwen3": "400kB"}


def storage_pointers(session):
    return [(layer.key_buffer.data_ptr(), layer.value_buffer.data_ptr()) for layer in session.cache.layers]


@pytest.mark.parametrize("name", FAMILY_DEMOS)
@pytest.mark.parametrize("policy", ["tar_van", "uniform", "expected_attention", "global_score", "keep_merge",
                                    "adakv"])
def test_cap_holds_after_every_block_and_answer(name, policy):
    adapter = family_adapter(name)
    session = StreamSession(adapter, mem_cap=SMALL_CAP[name], policy=policy, max_new_tokens=6)
    one_d = adapter.geometry().pos_rows == 1
    assert session.positions_mode == ("compact" if one_d else "keep")  # 1-D: one id a token, so re-number
    cap = session.cap_bytes
    pointers = storage_pointers(session)
    system_before = session.cache.kind_counts()[TokenKind.SYSTEM]
    frames = random_frames(60, seed=5, size=(120, 160))
    for index, frame in enumerate(frames):
        session.feed(frame)
        assert session.cache.used_bytes <= cap and session.cache.nbytes <= cap
        if one_d:
            assert session.positions.max_position <= session.cache.capacity + session.block_tokens
        if index in (15, 40, 59):
            answer = session.ask("what is happening?")
            assert answer.meaningless and session.cache.used_bytes <= cap
    stats = session.stats()
    assert stats["compressions"] >= 5, stats["compressions"]
    assert stats["peak_bytes"] <= cap
    assert storage_pointers(session) == pointers, "the cache reallocated its storage"
    counts = session.cache.kind_counts()
    assert counts[TokenKind.SYSTEM] == system_before, "system prompt tokens were evicted"
    assert counts[TokenKind.DIALOGUE] > 0, "the dialogue turns were lost"
    # every layer and head holds the same count, and the newest frame is whole in every head
    for layer in session.cache.layers:
        assert layer.length == session.cache.length
        kinds = layer.meta["kind"][:, : layer.length]
        frames_held = layer.meta["frame"][:, : layer.length]
        newest = int(frames_held[kinds == TokenKind.VISION].max())
        per_head = ((frames_held == newest) & (kinds == TokenKind.VISION)).sum(1)
        assert (per_head == block_length(adapter, newest)).all()
        assert int(layer.pos[:, :, : layer.length].max()) <= session.positions.max_position


@pytest.mark.parametrize("name", FAMILY_DEMOS)
def test_patch_grid_metadata_matches_the_frame_grid(name):
    """TaR compares the same (row, col) across frames: every frame carries the same set of coordinates,
    a full side x side grid of patches (plus, for SmolVLM, its timestamp and wrapper slots at row -1)."""
    adapter = family_adapter(name)
    step = adapter.frames_per_group
    block = adapter.vision_block(random_frames(3 * step, seed=2, size=(120, 160)), 10, adapter.new_positions(2.0))
    meta = block.meta
    assert (meta.kind == TokenKind.VISION).all()
    coordinates = []
    for frame in (10, 10 + step, 10 + 2 * step):  # a group's tokens carry its first frame's index
        mine = meta.frame == frame
        coordinates.append(sorted(zip(meta.row[mine].tolist(), meta.col[mine].tolist())))
    assert coordinates[0] == coordinates[1] == coordinates[2]
    rows, cols = patch_grid(adapter, 120, 160)
    assert {(r, c) for r, c in coordinates[0] if r >= 0} == {(r, c) for r in range(rows) for c in range(cols)}
    assert len(set(coordinates[0])) == len(coordinates[0]) <= adapter.tokens_per_group(120, 160)
    if adapter.geometry().pos_rows == 1:  # 1-D RoPE: one id a token, in order
        assert meta.pos.shape == (1, len(block)) and (meta.pos.diff() == 1).all()


@pytest.mark.parametrize("name", FAMILY_DEMOS)
def test_old_turns_drop_whole_and_the_system_prompt_stays(name):
    adapter = family_adapter(name)
    session = StreamSession(adapter, mem_cap=SMALL_CAP[name], max_new_tokens=6)
    session.feed(random_frames(4, seed=6, size=(120, 160)))
    system = session.cache.kind_counts()[TokenKind.SYSTEM]
    for index in range(10):
        session.ask(f"question number {index}?")
        if session.monitor.events:  # every pass that made room restored the dialogue's share
            assert session.monitor.events[-1].dialogue_tokens <= session.monitor.dialogue_capacity
    layer = session.cache.layers[0]
    kinds = layer.meta["kind"][:, : layer.length]
    turns = set(layer.meta["turn"][:, : layer.length][kinds == TokenKind.DIALOGUE].tolist())
    assert 0 not in turns and 9 in turns, turns
    assert session.cache.kind_counts()[TokenKind.SYSTEM] == system
