"""Per-head budgets (`adakv`): the split of a layer's budget by attention share, the dense rows padded
with holes, holes invisible to attention in a real forward and never kept again, and a capped stream
whose heads keep what their shares say, under the cap."""

from __future__ import annotations

import math

import pytest
import torch

from potwatch.bench.logits import cache_logits
from potwatch.compression.capped_cache import CappedKVCache
from potwatch.compression.head_budgets import allocate, memory_shares, pad_with_holes
from potwatch.compression.policies.base import VisualTokens, make_policy
from potwatch.compression.query_stats import QueryStats
from potwatch.compression.token_meta import TokenKind
from potwatch.streaming.session import StreamSession
from tests.cache_invariants import assert_cache_invariants
from tests.conftest import random_frames
from tests.device import EXACT, assert_close, on_device
from tests.test_keep_merge import plain_sdpa


# --- the split -------------------------------------------------------------------------------------


def test_budgets_follow_the_shares_above_a_floor_and_sum_to_the_layer_total():
    share = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    upper = torch.full((2, 4), 1000)
    budget = allocate(share, total=400, floor=20, upper=upper)
    assert budget.sum(dim=1).tolist() == [400, 400]
    assert budget[1].tolist() == [100, 100, 100, 100]  # equal shares: tar_van's equal split
    assert budget[0, 2] == budget[0, 3] == 20  # no share: the floor
    assert budget[0, 0] == 20 + round(0.9 * 320) and budget[0, 1] == 20 + round(0.1 * 320)


def test_a_full_head_passes_what_it_cannot_hold_to_the_others():
    share = torch.tensor([[0.7, 0.2, 0.1]])
    budget = allocate(share, total=300, floor=10, upper=torch.tensor([[120, 500, 500]]))
    assert budget.tolist()[0][0] == 120 and int(budget.sum()) == 300
    assert budget[0, 1] > budget[0, 2]  # the rest still in proportion
    short = allocate(share, total=300, floor=10, upper=torch.tensor([[50, 60, 5]]))
    assert short.tolist() == [[50, 60, 5]]  # the heads hold less than the total: all of it


def test_zero_shares_count_as_equal():
    assert allocate(torch.zeros(1, 3), 30, 0, torch.full((1, 3), 99)).tolist() == [[10, 10, 10]]


def test_short_rows_are_padded_with_their_earliest_spare_slots():
    evictable = torch.tensor([[False, True, True, True, True, False]] * 2)
    keep = torch.tensor([[True, False, True, True, True, True],  # keeps 3 visual
                         [True, True, False, False, False, True]])  # keeps 1: two holes
    rows, holes = pad_with_holes(keep, evictable)
    assert rows.tolist() == [[0, 2, 3, 4, 5], [0, 1, 2, 3, 5]]
    assert holes.tolist() == [[False] * 5, [False, False, True, True, False]]


def test_memory_share_is_the_sampled_attention_on_visual_tokens_before_the_block():
    g = torch.Generator().manual_seed(0)
    rows, length, dim, block = 3, 10, 4, 3
    keys = torch.randn(rows, length + 2, dim, generator=g)
    visual = torch.zeros(rows, length, dtype=torch.bool)
    visual[:, 2:] = True  # 2 text tokens, 5 older visual tokens, then the 3-token block
    counts = torch.randint(0, 3, (rows, length + 2), generator=g).float()
    counts[:, :2] = 1
    offsets = torch.tensor([0, 2])
    samples = torch.randn(rows, 2, dim, generator=g)
    queries = QueryStats(samples.mean(1), samples.var(1), samples, offsets, block)
    share = memory_shares(keys, length, queries, visual, counts)
    for r in range(rows):
        total = 0.0
        for s, offset in enumerate(offsets.tolist()):
            seen = length - block + offset + 1
            logits = keys[r, :seen] @ samples[r, s] / math.sqrt(dim) + counts[r, :seen].log()
            weights = torch.softmax(logits, 0)
            total += float(weights[2 : length - block].sum())
        assert share[r] == pytest.approx(total / 2, abs=1e-6)


def grid_tokens(heads: int, frames: int, per_frame: int, seed: int) -> VisualTokens:
    g = torch.Generator().manual_seed(seed)
    n = frames * per_frame
    spot = torch.arange(per_frame).repeat(frames)
    return VisualTokens(torch.randn(heads, n, 8, generator=g), torch.randn(heads, n, 8, generator=g),
                        torch.arange(frames).repeat_interleave(per_frame).expand(heads, n).contiguous(),
                        (spot // 4).expand(heads, n).contiguous(), (spot % 4).expand(heads, n).contiguous())


@pytest.mark.parametrize("keep", [1, 13, 40, 79])
def test_with_equal_shares_each_head_keeps_what_tar_van_keeps(keep):
    tokens = grid_tokens(heads=4, frames=10, per_frame=8, seed=keep)
    chosen = make_policy("adakv").select_budgets(tokens, keep, longest=10**6, kv_heads=2)
    expected = torch.zeros_like(chosen).scatter(1, make_policy("tar_van").select(tokens, keep), True)
    assert torch.equal(chosen, expected)


def test_a_head_with_more_share_keeps_more_and_never_a_hole():
    tokens = grid_tokens(heads=4, frames=10, per_frame=8, seed=1)
    valid = torch.ones(4, 80, dtype=torch.bool)
    valid[1, :30] = False  # row 1 holds 30 holes (frame -1) before its tokens
    tokens.frame = torch.where(valid, tokens.frame, -1)
    tokens.valid = valid
    policy = make_policy("adakv", floor=0.1)
    policy.share = torch.tensor([0.05, 0.95, 0.5, 0.5])
    chosen = policy.select_budgets(tokens, 30, longest=55, kv_heads=2)
    kept = chosen.sum(dim=1).tolist()
    assert kept[0] + kept[1] == 60 and kept[2] == kept[3] == 30
    assert kept[1] == 50 and kept[0] == 10  # row 1 holds only 50 tokens: the rest goes to row 0's floor and share
    assert not bool(chosen[~valid].any()), "a hole was kept"
    newest = tokens.frame == 9
    # The recent frame goes first in every row, up to half the row's budget: row 0 keeps 10, so its 5 newest.
    assert bool(chosen[0, -5:].all()) and bool(chosen[1:][newest[1:]].all()), "the recent frame goes first"


# --- holes in a real model ----------------------------------------------------------------------------


def test_holes_are_invisible_to_attention_in_a_real_forward(demo_adapter):
    """A cache padded with count-0 slots of random K/V, in different places per row, answers as the
    same cache without them under plain sdpa."""
    session = StreamSession(demo_adapter, mem_cap="8MB", policy="adakv")
    session.feed(random_frames(6, seed=4))
    cache, n = session.cache, session.cache.length
    with plain_sdpa(demo_adapter):
        reference = cache_logits(demo_adapter, cache, session.positions, "What moved?")
    padded = CappedKVCache(cache.geometry, n + 40 + 64, cache.layers[0].device)
    g = torch.Generator().manual_seed(0)
    extra = 40
    rows = cache.geometry.kv_heads
    for into, layer in zip(padded.layers, cache.layers):
        keys = on_device(torch.randn(1, rows, n + extra, layer.keys.shape[-1], generator=g) * 5, layer.device)
        values = on_device(torch.randn(1, rows, n + extra, layer.values.shape[-1], generator=g) * 5, layer.device)
        count = torch.zeros(rows, n + extra, device=layer.device)
        for head in range(rows):
            real = on_device(torch.randperm(n + extra, generator=g)[:n].sort().values, layer.device)
            keys[0, head, real], values[0, head, real] = layer.keys[0, head], layer.values[0, head]
            count[head, real] = 1
        into.update(keys, values)
        into.state["count"][:, : n + extra] = count
    assert_close(cache_logits(demo_adapter, padded, session.positions, "What moved?"), reference, EXACT, rtol=0)
    padded.rows("count")[:, :n + extra].clamp_(min=1)  # the same slots counted: the answer changes
    assert not torch.allclose(cache_logits(demo_adapter, padded, session.positions, "What moved?"), reference,
                              atol=1e-3, rtol=0)


def skewed_session(adapter, share: list[float], **options) -> StreamSession:
    session = StreamSession(adapter, mem_cap="400kB", policy="adakv", max_new_tokens=4,
                            policy_options={"smoothing": 1.0, **options})
    session.policy.share = torch.tensor(share)  # smoothing 1: the observed shares do not move it
    return session


def test_a_skewed_stream_keeps_per_head_budgets_under_the_cap(demo_adapter):
    session = skewed_session(demo_adapter, [0.9, 0.1, 0.3, 0.7])
    frames = random_frames(60, seed=9)
    holes_seen = 0
    for index, frame in enumerate(frames):
        session.feed(frame)
        assert_cache_invariants(session)
        kinds = session.cache.rows("kind")[:, : session.cache.length]
        holes_seen = max(holes_seen, int((kinds == TokenKind.HOLE).sum()))
        if index in (30, 59):
            session.ask("what is happening?")
            assert_cache_invariants(session)
    assert holes_seen > 0 and session.monitor.event_count >= 5
    cache = session.cache
    incoming = cache.free() + session.block_tokens
    event = session.monitor.make_room(incoming)  # a cut now, then look at it
    assert event is not None and event.reason == "visual"
    kinds = cache.rows("kind")[:, : cache.length]
    visual = (kinds == TokenKind.VISION).sum(dim=1)
    assert visual[0] > visual[1] and visual[3] > visual[2], visual.tolist()  # more share, more tokens
    protected = int(((kinds[0] == TokenKind.SYSTEM) | (kinds[0] == TokenKind.DIALOGUE)).sum())
    assert cache.length == protected + int(visual.max())  # as long as the longest row, the rest holes
    keep = min(int(0.75 * cache.capacity), cache.capacity - incoming) - protected  # tar_van's per-row count
    assert visual.view(2, 2).sum(dim=1).tolist() == [2 * keep, 2 * keep]  # each layer's total, as tar_van's
    assert_cache_invariants(session)


def test_holes_are_never_kept_and_text_is_never_a_hole(demo_adapter):
    session = skewed_session(demo_adapter, [0.95, 0.05, 0.95, 0.05], floor=0.0)
    for frame in random_frames(40, seed=2):
        session.feed(frame)
        cache, n = session.cache, session.cache.length
        kinds, frames_ = cache.rows("kind")[:, :n], cache.rows("frame")[:, :n]
        assert not bool((frames_[kinds == TokenKind.VISION] < 0).any()), "a hole came back as a visual token"
        assert int((kinds == TokenKind.SYSTEM).sum(1).min()) == session.system_tokens
    assert int((cache.rows("kind")[:, : cache.length] == TokenKind.HOLE).sum()) > 0


def test_reset_forgets_the_shares_and_keeps_the_options(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap="400kB", policy="adakv", policy_options={"floor": 0.5})
    session.feed(random_frames(4, seed=1))
    assert session.policy.share is not None
    session.reset()
    assert session.policy.share is None and session.policy.floor == 0.5


def test_adakv_pays_for_its_counts_under_the_cap(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap="400kB", policy="adakv")
    g = session.geometry
    assert g.keeps("count") and session.cache.nbytes == g.bytes_for(session.cache.capacity) <= session.cap_bytes
