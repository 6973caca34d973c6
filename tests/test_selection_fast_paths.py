"""The compression hot path's shortcuts give exactly what the plain formulations give.

Compression avoids sorts and copies where it can: unsorted top-k on unique keys instead of a stable
sort, no sort when frames are already in time order, policies reading K/V where they lie in the cache,
and compaction in place in chunks. Each shortcut is checked here against the obvious version."""

from __future__ import annotations

import pytest
import torch

from potwatch.compression import capped_cache
from potwatch.compression.budget import KVGeometry
from potwatch.compression.capped_cache import CappedKVCache
from potwatch.compression.policies.base import VisualTokens, make_policy
from potwatch.compression.policies.selection import frame_ranks, pick_ranked, top_indices
from potwatch.compression.token_meta import TokenKind, TokenMeta
from tests.query_fixtures import random_queries

VARIANTS = [("tar_van", {}), ("tar_van", {"pool_kernel": 3}), ("tar", {}), ("van", {}), ("uniform", {}),
            ("window", {}), ("expected_attention", {}), ("global_score", {}), ("keep_merge", {}),
            ("adakv", {})]


def scores_with_ties(seed: int, heads: int = 3, n: int = 200) -> torch.Tensor:
    """Scores drawn from a few values (many ties), with infinities and both signed zeros."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.tensor([float("-inf"), -2.5, -1.0, -0.0, 0.0, 0.5, 1.0, 3.0, float("inf")])
    return palette[torch.randint(len(palette), (heads, n), generator=g)] + \
        (torch.rand(heads, n, generator=g) < 0.3) * torch.randn(heads, n, generator=g)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("keep", [1, 17, 100, 199])
def test_top_indices_match_a_stable_descending_sort(seed, keep):
    score = scores_with_ties(seed)
    expected = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :keep].sort(dim=1).values
    assert torch.equal(top_indices(score, keep), expected)


@pytest.mark.parametrize("seed", range(6))
def test_pick_ranked_takes_the_best_allowed_per_head(seed):
    score = scores_with_ties(seed)
    g = torch.Generator().manual_seed(100 + seed)
    allowed = torch.rand(score.shape, generator=g) < 0.6
    count = torch.tensor([0, 7, 500])  # none, some, more than allowed
    picked = pick_ranked(score, allowed, count)
    for head in range(score.shape[0]):
        candidates = allowed[head].nonzero().view(-1)
        order = torch.sort(score[head, candidates], descending=True, stable=True).indices
        want = set(candidates[order[: int(count[head])]].tolist())
        assert set(picked[head].nonzero().view(-1).tolist()) == want


def reference_ranks(frame: torch.Tensor, newest_first: bool) -> torch.Tensor:
    """Rank of each token's frame among its head's distinct frames, the plain way."""
    ranks = torch.empty_like(frame, dtype=torch.long)
    for head in range(frame.shape[0]):
        distinct = sorted(set(frame[head].tolist()), reverse=newest_first)
        where = {f: i for i, f in enumerate(distinct)}
        ranks[head] = torch.tensor([where[f] for f in frame[head].tolist()])
    return ranks


@pytest.mark.parametrize("newest_first", [False, True])
@pytest.mark.parametrize("in_time_order", [True, False])
def test_frame_ranks_with_and_without_the_time_order_shortcut(newest_first, in_time_order):
    g = torch.Generator().manual_seed(3)
    frame = torch.randint(0, 40, (2, 300), generator=g)
    frame = frame.sort(dim=1).values if in_time_order else frame
    rank, order, frames = frame_ranks(frame, newest_first)
    expected = reference_ranks(frame, newest_first)
    assert torch.equal(torch.zeros_like(rank).scatter(1, order, rank), expected)
    assert torch.equal(frames, expected.max(dim=1).values + 1)


def interleaved_layer(seed: int, heads: int = 2, frames: int = 24, grid: tuple[int, int] = (3, 4), dim: int = 8):
    """A layer's rows as the cache holds them: a system prompt, then frames with a dialogue turn
    between them; returns (keys, values, kinds, frame, row, col), each [heads, N, ...]."""
    g = torch.Generator().manual_seed(seed)
    kinds, frame, row, col = [TokenKind.SYSTEM] * 5, [-1] * 5, [-1] * 5, [-1] * 5
    rows, cols = grid
    for f in range(frames):
        if f == frames // 2:
            kinds += [TokenKind.DIALOGUE] * 6
            frame += [-1] * 6
            row += [-1] * 6
            col += [-1] * 6
        kinds += [TokenKind.VISION] * (rows * cols)
        frame += [f] * (rows * cols)
        row += [r for r in range(rows) for _ in range(cols)]
        col += list(range(cols)) * rows
    n = len(kinds)
    keys = torch.randn(heads, n, dim, generator=g)
    values = torch.randn(heads, n, dim, generator=g) * torch.rand(heads, n, 1, generator=g)
    expand = lambda values_: torch.tensor(values_).expand(heads, n)  # noqa: E731
    return keys, values, expand(kinds), expand(frame), expand(row), expand(col)


@pytest.mark.parametrize("name, options", VARIANTS)
@pytest.mark.parametrize("seed", range(3))
def test_policies_read_the_layer_in_place_as_they_would_a_copy(name, options, seed):
    keys, values, kinds, frame, row, col = interleaved_layer(seed)
    visual = kinds == TokenKind.VISION
    at = visual.nonzero()[:, 1].view(keys.shape[0], -1)
    pick = lambda t: t.gather(1, at)  # noqa: E731
    queries = random_queries(keys.shape[0], keys.shape[-1], seed)
    history = torch.rand(at.shape, generator=torch.Generator().manual_seed(seed))
    in_place = VisualTokens(keys, values, pick(frame), pick(row), pick(col), at=at, queries=queries, history=history)
    copied = VisualTokens(keys.gather(1, at[..., None].expand(-1, -1, keys.shape[-1])),
                          values.gather(1, at[..., None].expand(-1, -1, values.shape[-1])),
                          pick(frame), pick(row), pick(col), queries=queries, history=history)
    policy = make_policy(name, **options)
    for keep in (1, 40, 150, at.shape[1] - 1):
        assert torch.equal(policy.select(in_place, keep), policy.select(copied, keep)), keep


def filled_cache(seed: int, n: int = 90, layers: int = 2, heads: int = 3, dim: int = 5) -> CappedKVCache:
    cache = CappedKVCache(KVGeometry(layers=layers, kv_heads=heads, head_dim=dim, dtype=torch.float32), n)
    g = torch.Generator().manual_seed(seed)
    for layer in cache.layers:
        layer.update(torch.randn(1, heads, n, dim, generator=g), torch.randn(1, heads, n, dim, generator=g))
    frame = torch.arange(n)
    cache.write_meta(0, TokenMeta.vision(frame, frame % 7, frame % 5, torch.stack([frame, frame % 7, frame % 5])))
    return cache


def keep_sets(seed: int, rows: int, n: int, m: int) -> torch.Tensor:
    """Ascending keep indices per row: an untouched prefix, a dropped first row, a whole tail, random."""
    g = torch.Generator().manual_seed(seed)
    patterns = [
        lambda: torch.cat([torch.arange(20), torch.randperm(n - 20, generator=g)[: m - 20].sort().values + 20]),
        lambda: torch.randperm(n - 1, generator=g)[:m].sort().values + 1,
        lambda: torch.arange(n - m, n),
        lambda: torch.randperm(n, generator=g)[:m].sort().values,
    ]
    return torch.stack([patterns[r % len(patterns)]() for r in range(rows)])


@pytest.mark.parametrize("scratch_bytes", [1, 3 * 5 * 4 * 3, 4 << 20])  # one row per chunk, 3, everything
@pytest.mark.parametrize("seed", range(4))
def test_chunked_in_place_compaction_matches_a_gather(monkeypatch, scratch_bytes, seed):
    monkeypatch.setattr(capped_cache, "COMPACT_SCRATCH_BYTES", scratch_bytes)
    n, m = 90, 60
    cache = filled_cache(seed, n)
    before = [(layer.keys.clone(), layer.values.clone(), layer.meta["frame"][:, :n].clone(), layer.pos[:, :, :n].clone())
              for layer in cache.layers]
    keep = keep_sets(seed, rows=2 * 3, n=n, m=m)
    cache.compact(keep)
    for layer, layer_keep, (keys, values, frames, pos) in zip(cache.layers, keep.view(2, 3, m), before):
        at = layer_keep[None, :, :, None].expand(1, 3, m, 5)
        assert layer.length == m
        assert torch.equal(layer.keys, keys.gather(2, at))
        assert torch.equal(layer.values, values.gather(2, at))
        assert torch.equal(layer.meta["frame"][:, :m], frames.gather(1, layer_keep))
        assert torch.equal(layer.pos[:, :, :m], pos.gather(2, layer_keep.expand(pos.shape[0], 3, m)))
