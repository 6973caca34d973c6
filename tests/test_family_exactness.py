"""The exactness oracle for every 1-D RoPE family: with a cap larger than the stream, the streamed,
chunked session gives the same next-token logits (atol 1e-5 on the CPU: tests/device.py's EXACT) and
the same greedy answers as one forward pass of the stock transformers model over the same frames and
dialogue, laid out as the family's processor would lay them out (see tests/families.py)."""

from __future__ import annotations

import pytest
import torch

from potwatch.compression.capped_cache import CappedKVCache
from potwatch.compression.token_meta import TokenKind
from potwatch.kernels.rope_shift import shift_rotary
from potwatch.streaming.session import StreamSession
from tests.conftest import random_frames
from tests.device import EMBED, EXACT, ROTATION, assert_close, on_device
from tests.families import FAMILY_DEMOS, REAL_GEOMETRY_DEMOS, Turn, family_adapter, oracle_greedy, oracle_logits


def streamed_logits(session, question: str) -> torch.Tensor:
    adapter = session.adapter
    block = adapter.text_block(adapter.question_ids(question), TokenKind.DIALOGUE, session.positions, session.turns)
    return session._run(block, logits=True)


@pytest.mark.parametrize("name", FAMILY_DEMOS)
@pytest.mark.parametrize("frames_per_block", [1, 3])
def test_streamed_prefill_equals_one_forward(name, frames_per_block):
    adapter = family_adapter(name)
    frames = random_frames(6, seed=3)
    session = StreamSession(adapter, mem_cap="16MB", fps=2.0, groups_per_block=frames_per_block)
    session.feed(frames)
    assert session.stats()["compressions"] == 0 and session.frames_ingested == 6
    streamed = streamed_logits(session, "What moved?")
    oracle = oracle_logits(adapter, [Turn(frames, "What moved?")])
    assert_close(streamed, oracle, EXACT)


@pytest.mark.parametrize("name", REAL_GEOMETRY_DEMOS)
def test_real_geometry_demos_are_exact_too(name):
    """196 pooled tokens a frame (27 x 27 patches → 14 x 14), 64 pixel-shuffled ones, and Qwen3-VL-2B's
    mrope_section [24, 20, 20] interleaved over 128-dim heads with DeepStack into three layers."""
    adapter = family_adapter(name)
    frames = random_frames(2, seed=5)
    cap = "200MB" if name == "demo-qwen3-2b" else "40MB"  # fp32: 229 kB a token for Qwen3-VL-2B's geometry
    session = StreamSession(adapter, mem_cap=cap, fps=2.0)
    session.feed(frames)
    streamed = streamed_logits(session, "Why?")
    oracle = oracle_logits(adapter, [Turn(frames, "Why?")])
    assert_close(streamed, oracle, EXACT)


@pytest.mark.parametrize("name", FAMILY_DEMOS)
def test_greedy_answers_over_two_turns_equal_one_forward_greedy(name):
    """The first answer, then more frames in a reopened user turn and a second answer that sees the first."""
    adapter = family_adapter(name)
    first, second = random_frames(4, seed=4), random_frames(4, seed=14)
    session = StreamSession(adapter, mem_cap="16MB", fps=2.0, max_new_tokens=5)
    turns = []
    for frames, question in ((first, "What moved?"), (second, "And then?")):
        session.feed(frames)
        answer = session.ask(question)
        turns.append(Turn(frames, question))
        expected, _ = oracle_greedy(adapter, turns, limit=5)
        assert answer.tokens == len(expected)
        assert answer.text == adapter.decode(expected).strip()
        assert answer.meaningless  # demo weights are random
    assert session.stats()["compressions"] == 0


@pytest.mark.parametrize("name", FAMILY_DEMOS)
def test_vision_blocks_of_one_group_equal_all_frames_at_once(name):
    adapter = family_adapter(name)
    frames = random_frames(6, seed=6)
    step = adapter.frames_per_group
    together = adapter.vision_block(frames, 0, adapter.new_positions(2.0))
    positions = adapter.new_positions(2.0)
    apart = [adapter.vision_block(frames[first:first + step], first, positions) for first in range(0, 6, step)]
    with torch.no_grad():
        assert_close(torch.cat([b.embeds for b in apart], dim=1), together.embeds, EMBED)
    for field in ("frame", "row", "col", "pos"):
        assert torch.equal(torch.cat([getattr(b.meta, field) for b in apart], dim=-1), getattr(together.meta, field))


@pytest.mark.parametrize("name", FAMILY_DEMOS)
def test_keys_rotated_to_new_positions_equal_keys_computed_there(name):
    """What compact re-numbering relies on: a cached key moved by d equals the key computed at p + d, per
    position row (one row for 1-D RoPE; Qwen3-VL's three rows interleaved over the frequencies)."""
    adapter = family_adapter(name)
    torch.manual_seed(0)
    n, geometry = 10, adapter.geometry()
    embeds = on_device(torch.randn(1, n, adapter.model.config.text_config.hidden_size), adapter.device)
    inv_freq, section = adapter.rotary_frequencies()
    assert section.shape == inv_freq.shape and int(section.max()) == geometry.pos_rows - 1
    if adapter.family == "qwen3_vl":  # mrope_section [2, 3, 3]: H at 1, 4, 7; W at 2, 5; T elsewhere
        assert section.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]

    def keys_at(pos: torch.Tensor) -> torch.Tensor:
        cache = CappedKVCache(geometry, capacity=n, device=adapter.device)
        position_ids = on_device(pos if geometry.pos_rows == 1 else pos.unsqueeze(1), adapter.device)
        with torch.no_grad():
            language_model = getattr(adapter, "language_model", None) or adapter.model.model.language_model
            language_model(inputs_embeds=embeds, position_ids=position_ids, cache=cache, use_cache=True)
        return cache.layers[0].keys[0]

    rows = geometry.pos_rows
    old = torch.stack([torch.arange(n) * (7 + row) + 300 + 50 * row for row in range(rows)])
    new = torch.stack([torch.arange(n) + row for row in range(rows)])
    delta = (new - old).unsqueeze(1).expand(rows, geometry.kv_heads, n)
    assert_close(shift_rotary(keys_at(old), on_device(delta, adapter.device), inv_freq, section), keys_at(new), ROTATION)
