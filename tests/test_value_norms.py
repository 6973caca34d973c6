"""Value norms stored when a token arrives (`Policy.value_norms`): a compression pass ranks by VaN without
reading V again, so the stored norm of every held slot must equal the norm of the value it holds after
any number of compactions, merges (keep_merge rewrites merged values) and at 8/4 bits (the decoded
value); and the policies that store them pay for them under the cap."""

from __future__ import annotations

import pytest
import torch

from potwatch.compression.policies.base import make_policy
from potwatch.compression.token_meta import TokenKind
from potwatch.streaming.session import StreamSession
from tests.conftest import random_frames
from tests.eviction_oracle import held_kv


@pytest.mark.parametrize("policy, bits", [("tar_van", 16), ("keep_merge", 16), ("adakv", 16), ("tar_van", 8),
                                          ("tar_van", 4), ("expected_attention", 8)])
def test_stored_value_norms_are_the_norms_of_the_held_values(demo_adapter, policy, bits):
    session = StreamSession(demo_adapter, mem_cap="400kB", policy=policy, kv_bits=bits, max_new_tokens=3)
    for seed in range(4):
        session.feed(random_frames(8, seed=seed))
        session.ask("What moved?")
    assert session.monitor.event_count >= 2, "the stream must have compacted"
    cache, n = session.cache, session.cache.length
    stored = cache.state_rows("value_norm")[:, :n].view(cache.geometry.layers, cache.geometry.kv_heads, n)
    for layer, (_, values) in enumerate(held_kv(cache)):
        want = torch.linalg.vector_norm(values[0], dim=-1, dtype=torch.float32)
        real = cache.rows("kind")[:, :n].view_as(stored)[layer] != TokenKind.HOLE
        assert torch.equal(stored[layer][real], want[real]), f"layer {layer}"
    if policy == "keep_merge":
        assert bool((cache.state_rows("count")[:, :n] > 1).any()), "some slot must hold a merge"


def test_policies_ranking_by_value_norm_pay_for_them_under_the_cap(demo_adapter):
    plain = StreamSession(demo_adapter, mem_cap="400kB", policy="window")
    normed = StreamSession(demo_adapter, mem_cap="400kB", policy="tar_van")
    g = normed.geometry
    assert g.bytes_per_token == plain.geometry.bytes_per_token + g.layers * g.kv_heads * 4
    assert normed.cache.nbytes == g.bytes_for(normed.cache.capacity) <= normed.cap_bytes
    assert plain.cache.state_rows("value_norm") is None and normed.cache.state_rows("value_norm") is not None
    users = {name for name in ("tar_van", "van", "keep_merge", "adakv", "expected_attention", "tar", "uniform",
                               "window", "global_score") if make_policy(name).value_norms}
    assert users == {"tar_van", "van", "keep_merge", "adakv", "expected_attention"}  # the policies that read VaN
