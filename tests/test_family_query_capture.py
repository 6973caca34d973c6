"""Query capture on every family's real attention: the captured queries are the ones the model
multiplies with the cached keys (spied on each family's own RoPE step), GQA groups averaged."""

from __future__ import annotations

import importlib

import pytest

from potwatch.streaming.session import StreamSession
from tests.conftest import random_frames
from tests.device import QUERY, assert_close
from tests.families import FAMILY_DEMOS, family_adapter
from tests.query_fixtures import capture_beside_the_model

ROPE_MODULE = {  # where each family's language model applies RoPE to its queries
    "demo-llava": "transformers.models.qwen2.modeling_qwen2",
    "demo-smolvlm": "transformers.models.llama.modeling_llama",
    "demo-qwen3": "transformers.models.qwen3_vl.modeling_qwen3_vl",
}


@pytest.mark.parametrize("name", FAMILY_DEMOS)
def test_captured_queries_are_the_models_own_after_rope(name, monkeypatch):
    adapter = family_adapter(name)
    module = importlib.import_module(ROPE_MODULE[name])
    session = StreamSession(adapter, mem_cap="1MB", policy="expected_attention")
    frames = random_frames(2 * adapter.frames_per_group, seed=1, size=(120, 160))
    session.feed(frames[: adapter.frames_per_group])
    block = adapter.vision_block(frames[adapter.frames_per_group :], adapter.frames_per_group, session.positions)
    got, rows, calls = capture_beside_the_model(adapter, module, session, block, monkeypatch)
    assert calls == session.geometry.layers
    assert_close(got.mean, rows.mean(1), QUERY, scale=10)
    assert_close(got.samples, rows[:, got.offsets.to(rows.device)], QUERY, scale=10)
