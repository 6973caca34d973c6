"""A new scoring policy with per-token state is one file: tests/fixtures/policies/key_norm.py, dropped
beside compression/policies/ (its folder joins the package's search path here), is found by the
registry, joins the benchmarks' lists, and streams a demo model under a cap with its state sized,
counted in the cap, filled on arrival and moved on every compaction by the cache, no list edited."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import potwatch.compression.policies as policies_package
from potwatch.bench.configurations import compressing_policies
from potwatch.compression.policies import base
from potwatch.compression.token_meta import TokenKind
from potwatch.streaming.session import StreamSession
from tests.cache_invariants import assert_cache_invariants
from tests.conftest import random_frames
from tests.eviction_oracle import held_kv

FIXTURES = Path(__file__).parent / "fixtures" / "policies"
MODULE = f"{policies_package.__name__}.key_norm"


@pytest.fixture
def key_norm_installed(monkeypatch):
    """The fixture folder on the package's path and the registry made to look again; undone after."""
    base.make_policy("window")  # the built-in policies are discovered first, as in any program
    monkeypatch.setattr(policies_package, "__path__", [*policies_package.__path__, str(FIXTURES)])
    monkeypatch.setattr(base, "_discovered", False)
    yield
    base.POLICIES.pop("key_norm", None)
    sys.modules.pop(MODULE, None)


def test_the_registry_finds_a_dropped_in_policy_file(key_norm_installed):
    assert "key_norm" in base.policy_names()
    policy = base.make_policy("key_norm", recent_ratio=0.25)
    assert type(policy).__module__ == MODULE and policy.recent_ratio == 0.25
    assert [state.name for state in policy.per_token_state] == ["key_norm"]
    assert "key_norm" in compressing_policies() and "key_norm" in compressing_policies(ablations=False)


def test_the_registry_does_not_know_it_without_the_file():
    assert "key_norm" not in base.policy_names()


@pytest.mark.parametrize("bits", [16, 8])
def test_a_dropped_in_policy_streams_under_a_cap_with_its_state(demo_adapter, key_norm_installed, bits):
    session = StreamSession(demo_adapter, mem_cap="400kB", policy="key_norm", kv_bits=bits, max_new_tokens=3)
    window = StreamSession(demo_adapter, mem_cap="400kB", policy="window", kv_bits=bits, max_new_tokens=3)
    g = session.geometry
    assert g.bytes_per_token == window.geometry.bytes_per_token + g.layers * g.kv_heads * 4  # its state, in the cap
    assert session.cache.nbytes == g.bytes_for(session.cache.capacity) <= session.cap_bytes
    for seed in range(3):
        frames = random_frames(8, seed=seed)
        session.feed(frames)
        window.feed(frames)
        answer = session.ask("What moved?")
        assert answer.text is not None
    assert session.monitor.event_count >= 2, "the stream must have compacted"
    assert_cache_invariants(session)
    cache, n = session.cache, session.cache.length
    # the state moved with its tokens: every held slot's stored norm is the norm of the key it holds
    stored = cache.state_rows("key_norm")[:, :n].view(g.layers, g.kv_heads, n)
    for layer, (keys, _) in enumerate(held_kv(cache)):
        want = torch.linalg.vector_norm(keys[0], dim=-1, dtype=torch.float32)
        assert torch.equal(stored[layer], want), f"layer {layer}"
    # and the policy chose: it keeps other visual tokens than the sliding window under the same cap
    visual = cache.rows("kind")[:, :n] == TokenKind.VISION
    kept = set(cache.rows("frame")[:, :n][visual].tolist())
    window_visual = window.cache.rows("kind")[:, : window.cache.length] == TokenKind.VISION
    assert kept != set(window.cache.rows("frame")[:, : window.cache.length][window_visual].tolist())
