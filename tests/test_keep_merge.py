"""`keep_merge` and the slot counts it rests on: the count-aware attention against plain sdpa in real
model forwards (counts of 1 change nothing; a count of c is c copies), the merge itself on hand-made
rows, and a capped stream that merges under the cap with every evicted token accounted for."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from potwatch.bench.logits import cache_logits
from potwatch.compression.capped_cache import CappedKVCache
from potwatch.compression.merging import merge_evicted
from potwatch.compression.token_meta import TokenKind
from potwatch.compression.token_state import SLOT_COUNT
from potwatch.models import count_attention
from potwatch.models.count_attention import count_biased_attention, install_count_attention
from potwatch.streaming.session import StreamSession
from tests.cache_invariants import assert_cache_invariants
from tests.conftest import random_frames
from tests.device import EXACT, assert_close, load_test_model
from tests.families import FAMILY_DEMOS, family_adapter

FAMILIES = ["demo", "demo-qwen2.5", *FAMILY_DEMOS]  # qwen2_vl, qwen2_5_vl, llava (qwen2), smolvlm (llama), qwen3_vl
QUESTION = "What moved?"


def adapter_for(name: str):
    return load_test_model("demo") if name == "demo" else family_adapter(name)


@contextlib.contextmanager
def plain_sdpa(adapter):
    """transformers' own sdpa on the language model for the duration (a test's reference)."""
    config = adapter.attention_modules()[0].config
    saved = config._attn_implementation
    config._attn_implementation = "sdpa"
    try:
        yield
    finally:
        config._attn_implementation = saved


def streamed(adapter, policy: str, frames) -> StreamSession:
    session = StreamSession(adapter, mem_cap="8MB", policy=policy)  # room for all: nothing is evicted
    session.feed(frames)
    return session


@pytest.mark.parametrize("name", FAMILIES)
def test_counts_of_one_give_plain_sdpa_and_a_count_reaches_attention(name):
    """In a real forward of each family: with every count 1, logits equal transformers' sdpa; raising
    one slot's count changes them (the counts reach attention through the cache's kwargs)."""
    adapter = adapter_for(name)
    frames = random_frames(4, seed=2, size=(120, 160))
    with plain_sdpa(adapter):
        reference = cache_logits(adapter, *_cache_and_positions(streamed(adapter, "tar_van", frames)), QUESTION)
    session = streamed(adapter, "keep_merge", frames)  # installs the count-aware attention
    assert adapter.attention_modules()[0].config._attn_implementation.startswith(count_attention.PREFIX)
    cache, positions = _cache_and_positions(session)
    assert_close(cache_logits(adapter, cache, positions, QUESTION), reference, EXACT, rtol=0)
    cache.rows("count")[:, session.system_tokens + 3] = 4
    assert not torch.allclose(cache_logits(adapter, cache, positions, QUESTION), reference, atol=1e-4, rtol=0)
    # the same shared model, a session of another policy: untouched by the installed function
    assert torch.equal(cache_logits(adapter, *_cache_and_positions(streamed(adapter, "tar_van", frames)), QUESTION),
                       reference)


def _cache_and_positions(session):
    return session.cache, session.positions


@pytest.mark.parametrize("name", ["demo", "demo-smolvlm"])
def test_a_slot_counting_c_equals_c_copies_of_its_token(name):
    """A slot of count c against plain sdpa over a cache holding that token c times (same key, value
    and position): the answer's logits agree."""
    adapter = adapter_for(name)
    frames = random_frames(4, seed=3, size=(120, 160))
    session = streamed(adapter, "keep_merge", frames)
    cache = session.cache
    copies, slots = 3, (session.system_tokens + 2, session.system_tokens + 9, cache.length - 1)
    counted = cache.rows("count")
    counted[:, list(slots)] = copies
    with_counts = cache_logits(adapter, cache, session.positions, QUESTION)
    plain_geometry = dataclasses.replace(cache.geometry, token_state=tuple(s for s in cache.geometry.token_state if s != SLOT_COUNT))
    duplicated = CappedKVCache(plain_geometry, cache.length + 2 * len(slots) + 64, cache.layers[0].device)
    order = [i for i in range(cache.length) for _ in range(copies if i in slots else 1)]
    for into, layer in zip(duplicated.layers, cache.layers):
        into.update(layer.keys[:, :, order], layer.values[:, :, order])
    with plain_sdpa(adapter):
        copied = cache_logits(adapter, duplicated, session.positions, QUESTION)
    assert_close(with_counts, copied, EXACT, rtol=0)
    counted[:, list(slots)] = 1
    assert not torch.allclose(cache_logits(adapter, cache, session.positions, QUESTION), copied, atol=1e-4, rtol=0)


@pytest.mark.parametrize("masked", ["none", "bool", "float"])
def test_count_attention_in_query_chunks_equals_one_masked_softmax(monkeypatch, masked):
    """Against softmax(qk·s + log c + mask) written out, with chunks of one query (GQA, holes of count 0)."""
    g = torch.Generator().manual_seed(0)
    q_len, k_len, dim = 5, 11, 8
    query, key, value = (torch.randn(1, h, n, dim, generator=g) for h, n in ((4, q_len), (2, k_len), (2, k_len)))
    counts = torch.randint(0, 4, (2, k_len), generator=g).float()
    counts[:, :2] = 1  # every query sees some slot
    allowed = torch.arange(k_len)[None] <= (k_len - q_len + torch.arange(q_len))[:, None]
    mask = {"none": None, "bool": allowed[None, None],
            "float": torch.zeros(q_len, k_len).masked_fill(~allowed, -1e9)[None, None]}[masked]
    logits = (query @ key.repeat_interleave(2, 1).transpose(-1, -2)) / dim**0.5
    logits = logits + counts.log().repeat_interleave(2, 0)[None, :, None] + torch.where(allowed, 0.0, float("-inf"))
    expected = (F.softmax(logits, -1) @ value.repeat_interleave(2, 1)).transpose(1, 2)
    monkeypatch.setattr(count_attention, "MASK_CHUNK_BYTES", 1)
    module = torch.nn.Module()
    out, _ = count_biased_attention(module, query, key, value, mask, counts, scaling=dim**-0.5)
    assert torch.allclose(out, expected, atol=1e-6)


def test_an_unsupported_attention_implementation_is_a_clear_error():
    adapter = load_test_model("demo-qwen2.5")
    config = adapter.attention_modules()[0].config
    saved = config._attn_implementation
    config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(Exception, match="sdpa or eager attention"):
            install_count_attention(adapter.attention_modules())
    finally:
        config._attn_implementation = saved


# --- the merge --------------------------------------------------------------------------------------


def rows_of(keys: list[list[float]], counts: list[float]):
    k = torch.tensor(keys, dtype=torch.float32)[None]
    return k.clone(), (2 * k).clone(), torch.tensor(counts)[None]


def test_an_evicted_token_folds_into_its_most_similar_kept_key_by_count():
    keys, values, counts = rows_of([[1, 0], [0, 1], [1, 0.1], [-1, 0]], [2, 1, 1, 1])
    at = torch.tensor([[0, 1, 2, 3]])
    chosen = torch.tensor([[0, 1]])
    merged = merge_evicted(keys, values, counts, at, chosen, torch.zeros(1, 4, dtype=torch.long), "all", 0.5)
    assert merged == 1  # token 2 joins token 0; token 3 (cosine -1 with 0, 0 with 1) is under the threshold
    assert torch.allclose(keys[0, 0], torch.tensor([1.0, 0.1 / 3]))  # (2 * [1, 0] + [1, 0.1]) / 3
    assert torch.allclose(values[0, 0], 2 * keys[0, 0])
    assert counts.tolist() == [[3, 1, 1, 1]]
    assert torch.equal(keys[0, 1], torch.tensor([0.0, 1.0]))  # untouched slots keep their bits


def test_patch_candidates_stay_at_the_same_coordinate():
    keys, values, counts = rows_of([[1, 0], [0, 1], [1, 0], [0.9, 0.1]], [1, 1, 1, 1])
    coordinate = torch.tensor([[0, 1, 1, 2]])  # token 2 sits at coordinate 1, like token 1, not like 0
    at, chosen = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 1]])
    merged = merge_evicted(keys, values, counts, at, chosen, coordinate, "patch", -1.0)
    assert merged == 1  # token 3 has no kept token at its coordinate: dropped
    assert counts.tolist() == [[1, 2, 1, 1]] and torch.allclose(keys[0, 1], torch.tensor([0.5, 0.5]))


def test_merging_in_groups_equals_merging_at_once(monkeypatch):
    from potwatch.compression import merging

    g = torch.Generator().manual_seed(1)
    rows, n, dim = 6, 40, 8
    keys, values = torch.randn(rows, n + 5, dim, generator=g), torch.randn(rows, n + 5, dim, generator=g)
    counts = torch.randint(1, 4, (rows, n + 5), generator=g).float()
    at = torch.stack([torch.randperm(n + 5, generator=g)[:n].sort().values for _ in range(rows)])
    chosen = torch.stack([torch.randperm(n, generator=g)[:15].sort().values for _ in range(rows)])
    coordinate = torch.randint(0, 5, (rows, n), generator=g)
    for candidates in ("patch", "all"):
        whole = [t.clone() for t in (keys, values, counts)]
        merge_evicted(*whole, at, chosen, coordinate, candidates, -1.0)
        monkeypatch.setattr(merging, "WORK_BYTES", 1)
        pieces = [t.clone() for t in (keys, values, counts)]
        merge_evicted(*pieces, at, chosen, coordinate, candidates, -1.0)
        monkeypatch.undo()
        for a, b in zip(whole, pieces):
            assert torch.allclose(a, b, atol=1e-6)
        kept_at = at.gather(1, chosen)
        if candidates == "all":  # every evicted token found a slot: its count moved there, none was lost
            assert torch.equal(whole[2].gather(1, kept_at).sum(1), counts.gather(1, at).sum(1))


@pytest.mark.parametrize("options", [{}, {"candidates": "all", "min_similarity": -1.0}])
def test_a_capped_stream_merges_under_the_cap(demo_adapter, options):
    """Invariants after every block and answer; with every evicted token merged, the counts of each
    row's visual slots add up to every visual token the stream brought."""
    session = StreamSession(demo_adapter, mem_cap="400kB", policy="keep_merge", max_new_tokens=4,
                            policy_options=options)
    for index, frame in enumerate(random_frames(48, seed=7)):
        session.feed(frame)
        assert_cache_invariants(session)
        if index in (20, 47):
            session.ask("what is happening?")
            assert_cache_invariants(session)
    assert session.monitor.event_count >= 5
    cache, n = session.cache, session.cache.length
    visual = cache.rows("kind")[:, :n] == TokenKind.VISION
    held = (cache.state_rows("count")[:, :n] * visual).sum(dim=1)
    brought = session.blocks * session.block_tokens
    if options:
        assert held.tolist() == [brought] * held.shape[0]
    else:
        assert bool((held > visual.sum(dim=1)).all()) and bool((held <= brought).all())
    system = cache.rows("kind")[:, :n] != TokenKind.VISION
    assert bool((cache.state_rows("count")[:, :n][system] == 1).all()), "text slots count one token each"


def test_keep_merge_pays_for_its_counts_under_the_cap(demo_adapter):
    plain = StreamSession(demo_adapter, mem_cap="400kB", policy="tar_van")
    merging_session = StreamSession(demo_adapter, mem_cap="400kB", policy="keep_merge")
    g = merging_session.geometry
    assert g.bytes_per_token == plain.geometry.bytes_per_token + g.layers * g.kv_heads * 4
    assert merging_session.cache.nbytes == g.bytes_for(merging_session.cache.capacity) <= merging_session.cap_bytes
    assert merging_session.cache.state_rows("count") is not None and plain.cache.state_rows("count") is None


def test_counts_move_with_their_tokens_when_the_cache_compacts():
    from potwatch.compression.budget import KVGeometry

    geometry = KVGeometry(layers=2, kv_heads=3, head_dim=4, dtype=torch.float32, token_state=(SLOT_COUNT,))
    cache = CappedKVCache(geometry, 20)
    g = torch.Generator().manual_seed(0)
    for layer in cache.layers:
        layer.update(torch.randn(1, 3, 20, 4, generator=g), torch.randn(1, 3, 20, 4, generator=g))
    counts = cache.state_rows("count")
    assert bool((counts == 1).all()), "new tokens count one"
    counts.copy_(torch.randint(1, 9, counts.shape, generator=g).float())
    before = counts.clone()
    keep = torch.stack([torch.randperm(20, generator=g)[:12].sort().values for _ in range(6)])
    cache.compact(keep)
    assert torch.equal(counts[:, :12], before.gather(1, keep))
    cache.layers[0].update(torch.zeros(1, 3, 2, 4), torch.zeros(1, 3, 2, 4))
    assert bool((counts[:3, 12:14] == 1).all()), "a slot written again counts one"



def test_patch_search_finds_what_a_loop_over_candidates_finds():
    from potwatch.compression.merging import _nearest_same_patch

    g = torch.Generator().manual_seed(3)
    rows, n, dim = 4, 30, 6
    keys = torch.randn(rows, n, dim, generator=g)
    kept_at = torch.stack([torch.randperm(n, generator=g)[:12] for _ in range(rows)])
    evicted_at = torch.stack([torch.tensor([i for i in range(n) if i not in set(r.tolist())]) for r in kept_at])
    kept_coordinate = torch.randint(0, 4, kept_at.shape, generator=g)
    evicted_coordinate = torch.randint(0, 5, evicted_at.shape, generator=g)  # coordinate 4: no candidate
    target, best = _nearest_same_patch(keys, kept_at, evicted_at, kept_coordinate, evicted_coordinate)
    unit = F.normalize(keys, dim=-1)
    for r in range(rows):
        for j in range(evicted_at.shape[1]):
            same = (kept_coordinate[r] == evicted_coordinate[r, j]).nonzero().view(-1)
            if same.numel() == 0:
                assert best[r, j] == float("-inf")
                continue
            cosine = unit[r, kept_at[r, same]] @ unit[r, evicted_at[r, j]]
            assert torch.isclose(best[r, j], cosine.max(), atol=1e-6)
            assert int(target[r, j]) == int(same[cosine.argmax()])


def test_van_ranks_a_slot_by_the_tokens_it_stands_for():
    """Old tokens with unit values, one slot standing for 5 tokens with a value of norm 0.5: plain VaN
    drops that slot first, count-weighted VaN (the default) keeps it."""
    from potwatch.compression.policies.base import VisualTokens, make_policy

    frames, per_frame = 8, 4
    n = frames * per_frame
    spot = torch.arange(per_frame).repeat(frames)
    values = torch.ones(1, n, 4)
    values[0, 5] = 0.25  # norm 0.5 against 2 for the others
    counts = torch.ones(1, n)
    counts[0, 5] = 5
    tokens = VisualTokens(torch.randn(1, n, 4, generator=torch.Generator().manual_seed(0)), values,
                          torch.arange(frames).repeat_interleave(per_frame)[None], spot[None] // 2, spot[None] % 2,
                          counts=counts)
    keep = 12
    assert 5 in make_policy("keep_merge", alpha=0.0).select(tokens, keep).tolist()[0]
    assert 5 not in make_policy("keep_merge", alpha=0.0, weigh_counts=False).select(tokens, keep).tolist()[0]
