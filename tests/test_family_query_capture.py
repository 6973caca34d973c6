"""Query capture on every family's real attention: the captured queries are the ones the model
multiplies with the cached keys (spied on each family's own RoPE step), GQA groups averaged."""

from __future__ import annotations

import importlib

import pytest
import torch

from potwatch.compression.query_capture import QueryCapture
from potwatch.streaming.session import StreamSession
from tests.conftest import random_frames
from tests.families import FAMILY_DEMOS, family_adapter

ROPE_MODULE = {  # where each family's language model applies RoPE to its queries
    "demo-llava": "transformers.models.qwen2.modeling_qwen2",
    "demo-smolvlm": "transformers.models.llama.modeling_llama",
    "demo-qwen3": "transformers.models.qwen3_vl.modeling_qwen3_vl",
}


@pytest.mark.parametrize("name", FAMILY_DEMOS)
def test_captured_queries_are_the_models_own_after_rope(name, monkeypatch):
    adapter = family_adapter(name)
    module = importlib.import_module(ROPE_MODULE[name])
    seen = []
    real = module.apply_rotary_pos_emb

    def spy(q, k, *args, **kwargs):
        q_embed, k_embed = real(q, k, *args, **kwargs)
        seen.append(q_embed.detach().clone())
        return q_embed, k_embed

    session = StreamSession(adapter, mem_cap="1MB", policy="expected_attention")
    frames = random_frames(2 * adapter.frames_per_group, seed=1, size=(120, 160))
    session.feed(frames[: adapter.frames_per_group])
    block = adapter.vision_block(frames[adapter.frames_per_group :], adapter.frames_per_group, session.positions)
    monkeypatch.setattr(module, "apply_rotary_pos_emb", spy)
    g = session.geometry
    with torch.no_grad(), QueryCapture(adapter, len(block)) as capture:
        capture.piece(0, block.meta.pos)
        adapter.forward(block, session.cache, logits=False)
    got = capture.stats()
    assert len(seen) == g.layers
    queries = torch.stack([q[0] for q in seen])  # [layers, heads, n, d]
    rows = queries.view(g.layers, g.kv_heads, -1, len(block), g.head_dim).mean(2).flatten(0, 1)
    assert torch.allclose(got.mean, rows.mean(1), atol=1e-4)
    assert torch.allclose(got.samples, rows[:, got.offsets], atol=1e-4)
