"""`expected_attention` and `global_score`: what they keep on hand-made cases, the queries they read
from the real model, and the running scores that live in the cache beside K and V."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from potwatch.compression.policies.base import VisualTokens, make_policy
from potwatch.compression.policies.global_score import update_running_scores
from potwatch.compression.query_capture import QueryCapture
from potwatch.compression.query_stats import QueryStats, sample_offsets
from potwatch.compression.token_meta import TokenKind
from potwatch.streaming.session import StreamSession
from tests.cache_invariants import assert_cache_invariants
from tests.conftest import random_frames
from tests.device import QUERY, assert_close
from tests.query_fixtures import capture_beside_the_model

DIM = 8


def frames_tokens(frames: int, per_frame: int, keys: torch.Tensor, **extra) -> VisualTokens:
    """One head of `frames` x `per_frame` tokens in time order, with the given keys and unit values."""
    n = frames * per_frame
    spot = torch.arange(per_frame).repeat(frames)
    return VisualTokens(keys.view(1, n, -1), torch.ones(1, n, keys.shape[-1]),
                        torch.arange(frames).repeat_interleave(per_frame)[None], spot[None] // 4, spot[None] % 4, **extra)


def stats(mean: torch.Tensor, var: torch.Tensor | None = None, block_tokens: int = 4) -> QueryStats:
    offsets = sample_offsets(block_tokens)
    rows = mean.view(-1, mean.shape[-1])
    return QueryStats(rows, torch.zeros_like(rows) if var is None else var.view_as(rows),
                      rows[:, None].expand(-1, len(offsets), -1).clone(), offsets, block_tokens)


# --- expected_attention ----------------------------------------------------------------------------


def test_expected_attention_keeps_the_keys_the_query_mean_points_at():
    g = torch.Generator().manual_seed(0)
    keys = 0.1 * torch.randn(8 * 4, DIM, generator=g)
    mu = torch.zeros(DIM)
    mu[0] = 4.0
    aligned = [1, 6, 13, 22]  # in old frames 0, 1, 3, 5; frame 7 is the recent window
    keys[aligned, 0] = 3.0
    keys[[2, 9], 0] = -3.0  # pointing away: least expected attention
    tokens = frames_tokens(8, 4, keys, queries=stats(mu))
    kept = make_policy("expected_attention").select(tokens, 8).tolist()[0]
    assert kept == sorted(aligned + [28, 29, 30, 31])
    assert 2 not in make_policy("expected_attention").select(tokens, 20).tolist()[0]


def test_expected_attention_variance_term_favours_keys_along_the_spread():
    """With a zero mean only the variance speaks: keys along the queries' widest dimension win."""
    keys = torch.zeros(12 * 2, DIM)
    keys[:, 1] = 1.0
    keys[[3, 10], 2] = 2.0  # same norm budget elsewhere, but along the high-variance dimension
    var = torch.full((DIM,), 0.01)
    var[2] = 5.0
    tokens = frames_tokens(12, 2, keys, queries=stats(torch.zeros(DIM), var))  # the window: frame 11
    assert make_policy("expected_attention").select(tokens, 4).tolist()[0] == [3, 10, 22, 23]
    flat = make_policy("expected_attention", use_variance=False).score(tokens)
    assert bool((flat == flat[0, 0]).all())  # equal values, zero mean: nothing to tell apart


def test_expected_attention_score_is_the_gaussian_log_expectation_times_value_norm():
    g = torch.Generator().manual_seed(1)
    keys, mu, var = torch.randn(2 * 4, DIM, generator=g), torch.randn(DIM, generator=g), torch.rand(DIM, generator=g)
    tokens = frames_tokens(2, 4, keys, queries=stats(mu, var))
    tokens.values.mul_(torch.rand(1, 8, 1, generator=g) + 0.5)
    # Monte Carlo: E[exp(q.k / sqrt(d))] over q ~ N(mu, diag(var)), times |v|
    q = mu + var.sqrt() * torch.randn(200_000, DIM, generator=g)
    expected = torch.exp(q @ keys.T / math.sqrt(DIM)).mean(0) * tokens.values[0].norm(dim=-1)
    score = make_policy("expected_attention").score(tokens)[0]
    assert torch.allclose(score.exp(), expected, rtol=0.05)


def test_expected_attention_without_queries_is_van():
    g = torch.Generator().manual_seed(2)
    tokens = frames_tokens(8, 4, torch.randn(32, DIM, generator=g))
    tokens.values.mul_(torch.rand(1, 32, 1, generator=g))
    for keep in (5, 12, 20):
        assert torch.equal(make_policy("expected_attention").select(tokens, keep), make_policy("van").select(tokens, keep))


# --- global_score ------------------------------------------------------------------------------------


def test_running_score_decays_and_adds_the_blocks_sampled_attention():
    g = torch.Generator().manual_seed(3)
    rows, length, capacity, block = 3, 20, 24, 8
    keys = torch.randn(rows, capacity, DIM, generator=g)
    old = torch.rand(rows, capacity, generator=g)
    scores = old.clone()
    queries = QueryStats(torch.zeros(rows, DIM), torch.zeros(rows, DIM), torch.randn(rows, 4, DIM, generator=g),
                         sample_offsets(block, 4), block)
    update_running_scores(scores, keys, length, queries, decay=0.5)
    new = scores[:, :length] - 0.5 * old[:, :length]
    assert torch.allclose(new.sum(dim=1), torch.ones(rows))  # each sampled query spreads weight 1
    assert bool((new >= 0).all())
    assert torch.equal(scores[:, length:], old[:, length:])  # free room untouched
    # causal: the last block token is seen only by the last sampled query (offset 7 of 8)
    start = length - block
    offsets = queries.offsets.tolist()
    assert offsets[-1] == block - 1
    logits = torch.einsum("rd,rnd->rn", queries.samples[:, -1], keys[:, :length]) / math.sqrt(DIM)
    assert torch.allclose(new[:, length - 1], torch.softmax(logits, dim=-1)[:, length - 1] / 4)
    # tokens before the block are seen by all four sampled queries, later block tokens by fewer
    assert bool((new[:, : start + offsets[0] + 1] > 0).all())
    # the same update with no decay and no history is the mean attention alone
    fresh = torch.zeros(rows, capacity)
    update_running_scores(fresh, keys, length, queries, decay=0.0)
    assert torch.allclose(fresh[:, :length], new)


def test_running_score_favours_the_key_the_queries_attend_to_and_fades_without_it():
    keys = torch.zeros(1, 10, DIM)
    keys[0, 2, 0] = 10.0
    sample = torch.zeros(1, 2, DIM)
    sample[0, :, 0] = 5.0
    scores = torch.zeros(1, 10)
    queries = QueryStats(torch.zeros(1, DIM), torch.zeros(1, DIM), sample, torch.tensor([2, 3]), 4)
    update_running_scores(scores, keys, 10, queries, decay=0.8)
    assert int(scores[0].argmax()) == 2 and float(scores[0, 2]) > 0.9
    quiet = QueryStats(torch.zeros(1, DIM), torch.zeros(1, DIM), torch.zeros(1, 2, DIM), torch.tensor([2, 3]), 4)
    before = float(scores[0, 2])
    update_running_scores(scores, keys, 10, quiet, decay=0.8)  # uniform attention now
    # the block is tokens 6..9: the queries at 6 + 2 and 6 + 3 see 9 and 10 tokens (causal)
    assert math.isclose(float(scores[0, 2]), 0.8 * before + (1 / 9 + 1 / 10) / 2, rel_tol=1e-5)


def test_global_score_keeps_recent_frames_then_the_highest_history():
    history = torch.zeros(1, 12 * 2)
    history[0, [0, 5, 17]] = torch.tensor([3.0, 2.0, 1.0])
    tokens = frames_tokens(12, 2, torch.zeros(24, DIM), history=history)  # the window: frame 11
    assert make_policy("global_score").select(tokens, 5).tolist()[0] == [0, 5, 17, 22, 23]


# --- in a real session on the demo model ----------------------------------------------------------------


def test_captured_queries_are_the_models_own_after_rope(demo_adapter, monkeypatch):
    """The capture equals the queries the model's attention multiplies with the cached keys (spied on
    the real RoPE step), with the query heads of each KV group averaged."""
    from transformers.models.qwen2_vl import modeling_qwen2_vl

    session = StreamSession(demo_adapter, mem_cap="400kB", policy="expected_attention")
    session.feed(random_frames(4, seed=1))
    block = demo_adapter.vision_block(random_frames(2, seed=2), 4, session.positions)
    got, rows, calls = capture_beside_the_model(demo_adapter, modeling_qwen2_vl, session, block, monkeypatch)
    assert calls == session.geometry.layers
    assert_close(got.mean, rows.mean(1), QUERY)
    assert_close(got.var, rows.var(1, unbiased=False), QUERY, scale=10)
    assert_close(got.samples, rows[:, got.offsets.to(rows.device)], QUERY)
    assert got.block_tokens == len(block)
    for attention in demo_adapter.attention_modules():  # hooks gone with the capture
        assert not attention.q_proj._forward_hooks


def test_only_policies_that_need_queries_get_them(demo_adapter):
    installed = []
    original = QueryCapture.__enter__

    def counting(self):
        installed.append(self)
        return original(self)

    QueryCapture.__enter__ = counting
    try:
        for policy, wanted in (("tar_van", False), ("expected_attention", True)):
            installed.clear()
            session = StreamSession(demo_adapter, mem_cap="400kB", policy=policy, max_new_tokens=4)
            session.feed(random_frames(4, seed=3))
            session.ask("what now?")
            assert (session.monitor.queries is not None) == wanted
            assert len(installed) == (2 if wanted else 0)  # one capture per vision block, none for text
    finally:
        QueryCapture.__enter__ = original


def test_global_score_pays_for_its_scores_under_the_cap(demo_adapter):
    plain = StreamSession(demo_adapter, mem_cap="400kB", policy="uniform")  # keeps nothing beside K/V and metadata
    scored = StreamSession(demo_adapter, mem_cap="400kB", policy="global_score")
    g = scored.geometry
    assert g.bytes_per_token == plain.geometry.bytes_per_token + g.layers * g.kv_heads * 4
    assert scored.cache.capacity < plain.cache.capacity
    assert scored.cache.nbytes == g.bytes_for(scored.cache.capacity) <= scored.cap_bytes
    assert scored.cache.state_rows("score") is not None and plain.cache.state_rows("score") is None
    plain.reset(policy="global_score")  # switching policy re-sizes the cache for the scores
    assert plain.cache.capacity == scored.cache.capacity and plain.cache.state_rows("score") is not None


def held_scores(session) -> dict[tuple, float]:
    """Each held token's running score, by (row, kind, frame, patch row, patch col, turn)."""
    cache, n = session.cache, session.cache.length
    ident = torch.stack([cache.rows(f)[:, :n].long() for f in ("kind", "frame", "row", "col", "turn")], -1).cpu()
    scores = cache.state_rows("score")[:, :n].cpu()
    return {(r, *ident[r, i].tolist()): float(scores[r, i]) for r in range(ident.shape[0]) for i in range(n)}


def test_global_scores_move_with_their_tokens_when_the_cache_compacts(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap="400kB", policy="global_score", max_new_tokens=4)
    frames = random_frames(80, seed=4)
    for round_ in range(3):
        session.feed(frames[20 * round_ : 20 * round_ + 20])
        before = held_scores(session)
        assert sum(before.values()) > 0
        event = session.monitor.make_room(session.cache.free() + session.block_tokens)  # forces a cut
        assert event is not None and event.tokens_after < event.tokens_before
        after = held_scores(session)
        assert set(after) < set(before)  # some tokens went, none came
        assert all(after[token] == before[token] for token in after), "a score did not follow its token"
        assert_cache_invariants(session)
        for row in range(session.cache.rows("kind").shape[0]):  # the lowest scores went, the recent frames stayed
            visual = {t: v for t, v in before.items() if t[0] == row and t[1] == TokenKind.VISION}
            per_frame = Counter(t[2] for t in visual)
            r = max(1, math.floor(0.125 * len(visual) / max(per_frame.values())))  # frames' worth held
            recent = set(sorted(per_frame)[-r:])
            window = [t for t in visual if t[2] in recent]
            kept_now = sum(t in after for t in visual)
            assert len(window) <= kept_now - round(0.5 * kept_now), "the window fits in its share here"
            assert all(t in after for t in window)
            kept = [v for t, v in visual.items() if t in after and t[2] not in recent]
            gone = [v for t, v in visual.items() if t not in after]
            assert gone and max(gone) <= min(kept)
        session.feed(frames[20 * round_ + 20 : 20 * round_ + 22])
        assert_cache_invariants(session)



@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expected_attention_scores_in_chunks_without_touching_the_keys(monkeypatch, dtype):
    from potwatch.compression.policies import expected_attention

    g = torch.Generator().manual_seed(5)
    tokens = frames_tokens(6, 4, torch.randn(24, DIM, generator=g).to(dtype))
    tokens = VisualTokens(tokens.keys.expand(3, -1, -1).clone(), tokens.values.expand(3, -1, -1).clone(),
                          tokens.frame.expand(3, -1), tokens.row.expand(3, -1), tokens.col.expand(3, -1),
                          queries=stats(torch.randn(3, DIM, generator=g), torch.rand(3, DIM, generator=g)))
    keys = tokens.keys.clone()
    whole = make_policy("expected_attention").score(tokens)
    monkeypatch.setattr(expected_attention, "SCORE_CHUNK_ROWS", 5)  # chunks that split every head
    assert torch.allclose(make_policy("expected_attention").score(tokens), whole)
    assert torch.equal(tokens.keys, keys)
