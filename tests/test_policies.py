"""Compression policies on hand-made tensors: what each keeps, and that every one returns valid indices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from potwatch.compression.policies.base import VisualTokens, make_policy, policy_names
from potwatch.compression.policies.selection import (
    NOVEL_SCORE,
    pool_per_frame,
    recent_tokens,
    tar_scores,
    top_indices,
)
from potwatch.errors import PolicyOptionError, UnknownPolicyError
from tests.query_fixtures import with_queries

GRID = 4
DIM = 16


def grid_tokens(frames: int, heads: int, changed: dict[int, list[tuple[int, int, int]]], seed: int = 0,
                noise: float = 0.0, first_frame: int = 0) -> VisualTokens:
    """`frames` frames of a GRID x GRID grid in cache order. Static patches have the same key in every
    frame (one random key per head and coordinate); `changed[h]` lists (frame, row, col) whose key is
    the negated static key in head h. Values are random."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(heads, GRID, GRID, DIM, generator=g)
    frame = torch.arange(first_frame, first_frame + frames).repeat_interleave(GRID * GRID)
    row = torch.arange(GRID).repeat_interleave(GRID).repeat(frames)
    col = torch.arange(GRID).repeat(GRID * frames)
    keys = base[:, row, col].clone()
    for h, spots in changed.items():
        for f, r, c in spots:
            at = (f - first_frame) * GRID * GRID + r * GRID + c
            keys[h, at] = -base[h, r, c]
    if noise:
        keys = keys + noise * torch.randn(keys.shape, generator=g)
    values = torch.randn(heads, keys.shape[1], DIM, generator=g)
    expand = lambda t: t.expand(heads, -1).clone()  # noqa: E731
    return VisualTokens(keys, values, expand(frame), expand(row), expand(col))


def take(tokens: VisualTokens, index: torch.Tensor) -> VisualTokens:
    """What the cache does after a cut: gather every field per head by the kept indices."""
    dim = tokens.keys.shape[-1]
    at = index.unsqueeze(-1).expand(*index.shape, dim)
    return VisualTokens(
        tokens.keys.gather(1, at),
        tokens.values.gather(1, at),
        tokens.frame.gather(1, index),
        tokens.row.gather(1, index),
        tokens.col.gather(1, index),
    )


def append(a: VisualTokens, b: VisualTokens) -> VisualTokens:
    fields = ("keys", "values", "frame", "row", "col")
    return VisualTokens(*(torch.cat([getattr(a, k), getattr(b, k)], dim=1) for k in fields))


def kept_patches(tokens: VisualTokens, index: torch.Tensor) -> list[set[tuple[int, int, int]]]:
    """Per head, the (frame, row, col) of the kept tokens."""
    out = []
    for h in range(tokens.heads):
        i = index[h]
        out.append(set(zip(tokens.frame[h, i].tolist(), tokens.row[h, i].tolist(), tokens.col[h, i].tolist())))
    return out


def assert_valid(index: torch.Tensor, heads: int, n: int, keep: int) -> None:
    assert index.dtype == torch.long
    assert index.shape == (heads, min(keep, n))
    if index.numel():
        assert int(index.min()) >= 0 and int(index.max()) < n
        assert bool((index[:, 1:] > index[:, :-1]).all()), "rows must be strictly ascending (sorted, distinct)"


CHANGED = {0: [(2, 1, 1), (2, 2, 3)], 1: [(4, 0, 0), (1, 3, 2)]}


# --- TaR ---------------------------------------------------------------------------------------------


def test_tar_scores_static_as_redundant_and_changed_as_novel():
    tokens = grid_tokens(8, 2, CHANGED)
    in_recent, _ = recent_tokens(tokens.frame, 0.125, keep=10**6)
    assert bool((in_recent == (tokens.frame == 7)).all())  # r = max(1, floor(0.125 * 8)) = 1 frame
    score = tar_scores(tokens, in_recent)
    for h in range(2):
        is_changed = torch.zeros(tokens.count, dtype=torch.bool)
        for f, r, c in CHANGED[h]:
            is_changed |= (tokens.frame[h] == f) & (tokens.row[h] == r) & (tokens.col[h] == c)
        older = ~in_recent[h]
        assert torch.allclose(score[h][older & ~is_changed], torch.tensor(-1.0), atol=1e-5)  # identical keys
        assert torch.allclose(score[h][is_changed], torch.tensor(1.0), atol=1e-5)  # opposite keys
        assert bool(torch.isinf(score[h][in_recent[h]]).all())


def test_tar_keeps_changed_patches_at_tight_budget():
    tokens = grid_tokens(8, 2, CHANGED)
    keep = GRID * GRID + 2  # the recent frame and exactly two more
    index = make_policy("tar").select(tokens, keep)
    assert_valid(index, 2, tokens.count, keep)
    kept = kept_patches(tokens, index)
    for h in range(2):
        recent = {(7, r, c) for r in range(GRID) for c in range(GRID)}
        assert kept[h] == recent | set(CHANGED[h])


def test_tar_uses_the_mean_over_several_recent_frames():
    # 16 frames -> r = 2 recent frames. Patch (0, 0) in frame 14 flips, so the recent mean at (0, 0) is 0
    # and the older (0, 0) tokens score 0, above every other static token (-1).
    tokens = grid_tokens(16, 1, {0: [(14, 0, 0)]})
    in_recent, _ = recent_tokens(tokens.frame, 0.125, keep=10**6)
    assert int(in_recent.sum()) == 2 * GRID * GRID
    score = tar_scores(tokens, in_recent)
    at_origin = (tokens.row[0] == 0) & (tokens.col[0] == 0) & ~in_recent[0]
    assert torch.allclose(score[0][at_origin], torch.tensor(0.0), atol=1e-5)
    assert torch.allclose(score[0][~at_origin & ~in_recent[0]], torch.tensor(-1.0), atol=1e-5)


def test_tar_coordinate_without_recent_token_counts_as_novel():
    tokens = grid_tokens(4, 1, {})
    # The newest frame lost its (3, 3) patch in an earlier cut: older (3, 3) tokens have nothing to compare with.
    gone = (tokens.frame[0] == 3) & (tokens.row[0] == 3) & (tokens.col[0] == 3)
    tokens = take(tokens, torch.nonzero(~gone).T)
    in_recent, _ = recent_tokens(tokens.frame, 0.125, keep=10**6)
    score = tar_scores(tokens, in_recent)
    lonely = (tokens.row[0] == 3) & (tokens.col[0] == 3)
    assert bool((score[0][lonely] == NOVEL_SCORE).all())
    assert bool((score[0][~lonely & ~in_recent[0]] < -0.99).all())


def test_alignment_survives_repeated_compressions():
    """Cut, gather, append new frames, cut again: the changed patches stay, and static leftovers still
    score as redundant, which only holds if TaR looks coordinates up by metadata, not by position."""
    changed = {0: [(1, 0, 2), (3, 3, 1)], 1: [(2, 2, 2), (4, 1, 0)]}  # none in the newest frame
    policy = make_policy("tar_van", alpha=0.5)
    keep = 40
    cache = grid_tokens(6, 2, changed, seed=1)
    next_frame = 6
    for step in range(5):
        index = policy.select(cache, keep)
        assert_valid(index, 2, cache.count, keep)
        cache = take(cache, index)
        kept = kept_patches(cache, torch.arange(keep).expand(2, keep))
        for h in range(2):
            assert set(changed[h]) <= kept[h], f"step {step}: head {h} lost a changed patch"
        # Heads hold different tokens by now, so positions no longer line up across heads.
        if step > 0:
            assert not torch.equal(cache.frame[0], cache.frame[1]) or not torch.equal(cache.row[0], cache.row[1])
        in_recent, _ = recent_tokens(cache.frame, 0.125, keep=10**6)
        score = tar_scores(cache, in_recent)
        for h in range(2):
            static = ~in_recent[h] & torch.tensor([p not in changed[h] for p in zip(
                cache.frame[h].tolist(), cache.row[h].tolist(), cache.col[h].tolist())])
            assert torch.allclose(score[h][static], torch.tensor(-1.0), atol=1e-5)
        # New frames share the static keys of the same seed, so build them from a full grid and slice.
        fresh = grid_tokens(next_frame + 3, 2, changed, seed=1)
        fresh = take(fresh, torch.arange(next_frame * GRID * GRID, fresh.count).expand(2, -1))
        cache = append(cache, fresh)
        next_frame += 3


@pytest.mark.parametrize("name, options", [("tar_van", {}), ("tar_van", {"pool_kernel": 3}), ("tar", {}),
                                           ("van", {"pool_kernel": 3})])
def test_selection_is_invariant_to_token_order(name, options):
    tokens = grid_tokens(8, 3, {0: [(1, 1, 1)], 1: [(3, 2, 0)], 2: [(0, 0, 0), (5, 3, 3)]}, seed=3, noise=0.05)
    keep = 45
    policy = make_policy(name, **options)
    reference = kept_patches(tokens, policy.select(tokens, keep))
    g = torch.Generator().manual_seed(7)
    permutation = torch.argsort(torch.rand(tokens.heads, tokens.count, generator=g), dim=1)  # differs per head
    shuffled = take(tokens, permutation)
    index = policy.select(shuffled, keep)
    assert_valid(index, tokens.heads, tokens.count, keep)
    assert kept_patches(shuffled, index) == reference


# --- VaN ---------------------------------------------------------------------------------------------


def test_van_keeps_largest_value_norms_after_recent_frames():
    tokens = grid_tokens(8, 2, {})
    n = tokens.count
    norms = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(s)).float() + 1 for s in (0, 1)])
    tokens.values = F.normalize(tokens.values, dim=-1) * norms[..., None]
    keep = 16 + 16  # the window (one frame) fits in its share, half the budget
    index = make_policy("van").select(tokens, keep)
    for h in range(2):
        older = tokens.frame[h] != 7
        expected = set(torch.nonzero(~older).flatten().tolist())
        older_norms = torch.where(older, norms[h], torch.tensor(-1.0))
        expected |= set(torch.topk(older_norms, 16).indices.tolist())
        assert set(index[h].tolist()) == expected


def spike_and_cluster() -> VisualTokens:
    """Two 5x5 frames, one head. Frame 0 (old): a lone spike of norm 10 at (0, 0), a 3x3 block of norm 3
    centred on (3, 3), the rest 0.1. Frame 1 is the recent frame."""
    side = 5
    frame = torch.arange(2).repeat_interleave(side * side)
    row = torch.arange(side).repeat_interleave(side).repeat(2)
    col = torch.arange(side).repeat(side * 2)
    norm = torch.full((2 * side * side,), 0.1)
    norm[0] = 10.0
    block = (frame == 0) & (row >= 2) & (row <= 4) & (col >= 2) & (col <= 4)
    norm[block] = 3.0
    values = torch.zeros(1, 2 * side * side, DIM)
    values[0, :, 0] = norm
    keys = torch.randn(1, 2 * side * side, DIM, generator=torch.Generator().manual_seed(0))
    return VisualTokens(keys, values, frame[None], row[None], col[None])


def test_van_pooling_prefers_a_cluster_over_a_lone_spike():
    tokens = spike_and_cluster()
    # One token kept by VaN alone (tar_van with alpha 0 has no recent window; van's window would take
    # half of any budget this small).
    plain = make_policy("tar_van", alpha=0.0).select(tokens, 1)
    pooled = make_policy("tar_van", alpha=0.0, pool_kernel=3).select(tokens, 1)
    assert plain.tolist() == [[0]]  # the spike (0, 0)
    assert pooled.tolist() == [[3 * 5 + 3]]  # the block centre (3, 3): mean 3 beats the spike's (10 + 0.3) / 4


def test_masked_pooling_ignores_missing_tokens():
    tokens = spike_and_cluster()
    # Evict everything of frame 0 but (0, 0) and (0, 1): the mean must be over the two present tokens only.
    keep_mask = (tokens.frame[0] == 1) | ((tokens.row[0] == 0) & (tokens.col[0] <= 1))
    tokens = take(tokens, torch.nonzero(keep_mask).T)
    norm = tokens.value_norms()
    pooled = pool_per_frame(norm, tokens.frame, tokens.row, tokens.col, 3)
    assert pooled[0, 0].item() == pytest.approx((10.0 + 0.1) / 2)
    assert pooled[0, 1].item() == pytest.approx((10.0 + 0.1) / 2)
    # Frames never mix: frame 1's (0, 0) sees only frame 1's 0.1 values.
    assert pooled[0, 2].item() == pytest.approx(0.1)


def dense_masked_pool(score, frame, row, col, kernel):
    """Reference: scatter into a dense [frames, rows, cols] grid with a mask, sum-pool both, divide."""
    out = torch.empty_like(score)
    for h in range(score.shape[0]):
        grid = torch.zeros(int(frame.max()) + 1, int(row.max()) + 1, int(col.max()) + 1)
        mask = torch.zeros_like(grid)
        grid[frame[h], row[h], col[h]] = score[h]
        mask[frame[h], row[h], col[h]] = 1.0
        ones = torch.ones(1, 1, kernel, kernel)
        total = F.conv2d(grid[:, None], ones, padding=kernel // 2)[:, 0]
        count = F.conv2d(mask[:, None], ones, padding=kernel // 2)[:, 0]
        out[h] = (total / count.clamp(min=1))[frame[h], row[h], col[h]]
    return out


@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_pooling_matches_dense_masked_average_pool(kernel):
    g = torch.Generator().manual_seed(kernel)
    frames, rows, cols, heads, n = 6, 5, 7, 3, 120
    full = frames * rows * cols
    subset = torch.stack([torch.randperm(full, generator=g)[:n] for _ in range(heads)])  # different per head
    frame, rest = subset // (rows * cols), subset % (rows * cols)
    row, col = rest // cols, rest % cols
    score = torch.rand(heads, n, generator=g) * 5
    expected = dense_masked_pool(score, frame, row, col, kernel)
    assert torch.allclose(pool_per_frame(score, frame, row, col, kernel), expected, atol=1e-5)
    assert torch.equal(pool_per_frame(score, frame, row, col, 1), score)


# --- tar_van -----------------------------------------------------------------------------------------


def test_tar_van_keeps_recent_frames_tar_picks_and_exact_count():
    tokens = grid_tokens(16, 2, CHANGED, seed=5, noise=0.01)  # r = 2 recent frames = 32 tokens
    keep = 80  # TaR share round(0.5 * 80) - 32 = 8
    policy = make_policy("tar_van")
    index = policy.select(tokens, keep)
    assert_valid(index, 2, tokens.count, keep)
    in_recent, _ = recent_tokens(tokens.frame, 0.125, keep)
    score = tar_scores(tokens, in_recent)
    for h in range(2):
        chosen = set(index[h].tolist())
        assert set(torch.nonzero(in_recent[h]).flatten().tolist()) <= chosen
        older_score = score[h].masked_fill(in_recent[h], float("-inf"))
        assert set(torch.topk(older_score, 8).indices.tolist()) <= chosen
        for f, r, c in CHANGED[h]:
            assert f * GRID * GRID + r * GRID + c in chosen


def test_tar_van_alpha_zero_is_van_alone_and_alpha_one_is_tar():
    """The recent window lives in TaR's share, so alpha 0 leaves it none: VaN alone, no window."""
    tokens = grid_tokens(16, 2, CHANGED, seed=6, noise=0.01)
    for keep in (20, 50, 100, 200):
        for kernel in (1, 3):
            van = pool_per_frame(tokens.value_norms(), tokens.frame, tokens.row, tokens.col, kernel)
            assert torch.equal(make_policy("tar_van", alpha=0.0, pool_kernel=kernel).select(tokens, keep),
                               top_indices(van, keep))
        assert torch.equal(make_policy("tar_van", alpha=1.0).select(tokens, keep),
                           make_policy("tar").select(tokens, keep))
    # And alpha matters once its share exceeds the recent window (round(0.5 * 100) - 32 = 18 TaR picks).
    assert not torch.equal(make_policy("tar_van", alpha=0.0).select(tokens, 100),
                           make_policy("tar_van").select(tokens, 100))


def test_recent_window_larger_than_its_share_keeps_the_newest_that_fit():
    tokens = grid_tokens(16, 2, {})  # recent = frames 14 and 15, 32 tokens
    index = make_policy("tar").select(tokens, 20)  # TaR's share is the whole budget
    assert_valid(index, 2, tokens.count, 20)
    frames = tokens.frame.gather(1, index)
    assert int((frames == 15).sum(dim=1).min()) == 16  # newest frame whole
    assert bool((frames >= 14).all())
    for name in ("tar_van", "van"):  # the window's share is half the budget: the 10 newest tokens
        index = make_policy(name).select(tokens, 20)
        assert_valid(index, 2, tokens.count, 20)
        assert bool(torch.isin(torch.arange(246, 256), index).all())


def test_recent_window_counts_frames_per_head():
    # Head 0 holds 8 frames, head 1 holds 16 frames (same token count, whole frames): r is 1 and 2 frames.
    frame = torch.stack([torch.arange(8).repeat_interleave(4), torch.arange(16).repeat_interleave(2)])
    in_recent, kept = recent_tokens(frame, 0.125, keep=100)
    assert in_recent[0].sum() == 4 and bool(in_recent[0, -4:].all())
    assert in_recent[1].sum() == 4 and bool(in_recent[1, -4:].all())
    assert torch.equal(in_recent, kept)
    _, kept = recent_tokens(frame, 0.125, keep=3)
    assert torch.equal(kept.sum(dim=1), torch.tensor([3, 3]))


def test_recent_window_counts_thinned_frames_as_frame_equivalents():
    """4 whole frames of 4 tokens after 28 old frames thinned to one token each: 44 tokens are 11
    frames' worth, so r = floor(0.125 * 11) = 1 frame, not floor(0.125 * 32 frames held) = 4."""
    frame = torch.cat([torch.arange(28), torch.arange(28, 32).repeat_interleave(4)])[None]
    in_recent, _ = recent_tokens(frame, 0.125, keep=100)
    assert torch.equal(in_recent[0], frame[0] == 31)
    in_recent, _ = recent_tokens(frame, 0.5, keep=100)  # floor(0.5 * 11) = 5 frames
    assert torch.equal(in_recent[0], frame[0] >= 27)


def test_bad_options_are_rejected():
    with pytest.raises(PolicyOptionError):
        make_policy("tar_van", alpha=1.5)
    with pytest.raises(PolicyOptionError):
        make_policy("van", pool_kernel=4)
    with pytest.raises(PolicyOptionError):
        make_policy("tar", recent_ratio=-0.1)


# --- uniform, window, none ---------------------------------------------------------------------------


def frames_of(count: int, per_frame: int, heads: int = 1) -> VisualTokens:
    n = count * per_frame
    frame = torch.arange(count).repeat_interleave(per_frame).expand(heads, n).clone()
    row = torch.zeros(heads, n, dtype=torch.long)
    col = torch.arange(per_frame).repeat(count).expand(heads, n).clone()
    return VisualTokens(torch.randn(heads, n, 8), torch.randn(heads, n, 8), frame, row, col)


def test_uniform_keeps_evenly_spaced_frames():
    tokens = frames_of(8, 4)
    index = make_policy("uniform").select(tokens, 8)  # 2 frames fit: ranks floor(0.5 * 4)=2 and floor(1.5 * 4)=6
    assert index.tolist() == [[8, 9, 10, 11, 24, 25, 26, 27]]
    index = make_policy("uniform").select(tokens, 16)  # 4 frames: 1, 3, 5, 7
    assert tokens.frame[0, index[0]].unique().tolist() == [1, 3, 5, 7]


def test_uniform_fills_and_trims_deterministically():
    tokens = frames_of(8, 4)
    # keep 10: frames 2 and 6 (8 tokens), then 2 evenly spaced among the 24 others -> their 6th and 18th.
    index = make_policy("uniform").select(tokens, 10)
    assert index.tolist() == [[6, 8, 9, 10, 11, 22, 24, 25, 26, 27]]
    # keep 3: one frame (rank floor(0.5 * 8) = 4) has 4 tokens; thin it evenly to members 0, 2, 3.
    index = make_policy("uniform").select(tokens, 3)
    assert index.tolist() == [[16, 18, 19]]


def test_uniform_with_different_frames_per_head():
    a = frames_of(4, 6).frame[0]  # 4 frames of 6
    b = frames_of(12, 2).frame[0]  # 12 frames of 2
    tokens = frames_of(4, 6, heads=2)
    tokens.frame = torch.stack([a, b])
    index = make_policy("uniform").select(tokens, 12)
    assert_valid(index, 2, 24, 12)
    assert tokens.frame[0, index[0]].unique().tolist() == [1, 3]  # 2 of 4 frames: ranks floor(0.5 * 2), floor(1.5 * 2)
    assert tokens.frame[1, index[1]].unique().tolist() == [1, 3, 5, 7, 9, 11]  # 6 of 12 frames


def test_window_keeps_the_newest_tokens():
    tokens = frames_of(3, 4, heads=2)
    assert make_policy("window").select(tokens, 5).tolist() == [[7, 8, 9, 10, 11]] * 2


def test_none_never_evicts():
    policy = make_policy("none")
    assert policy.evicts is False
    tokens = frames_of(3, 4, heads=2)
    assert policy.select(tokens, 12).tolist() == [list(range(12))] * 2
    assert policy.select(tokens, 20).shape == (2, 12)
    with pytest.raises(RuntimeError):
        policy.select(tokens, 11)


def test_evicting_policies_are_flagged():
    for name in policy_names():
        assert make_policy(name).evicts is (name != "none")


# --- every policy --------------------------------------------------------------------------------------


def random_cache(seed: int) -> VisualTokens:
    """Heads holding different random subsets of frames x grid tokens, in cache order, odd grids, bf16 keys."""
    g = torch.Generator().manual_seed(seed)
    heads = int(torch.randint(1, 5, (1,), generator=g))
    frames, rows, cols = (int(torch.randint(1, 9, (1,), generator=g)) for _ in range(3))
    full = frames * rows * cols
    n = int(torch.randint(1, full + 1, (1,), generator=g))
    subset = torch.stack([torch.randperm(full, generator=g)[:n].sort().values for _ in range(heads)])
    frame, rest = subset // (rows * cols) + 100, subset % (rows * cols)
    dim = 8
    return VisualTokens(
        torch.randn(heads, n, dim, generator=g).to(torch.bfloat16),
        torch.randn(heads, n, dim, generator=g).to(torch.bfloat16),
        frame.to(torch.int32),
        (rest // cols).to(torch.int16),
        (rest % cols).to(torch.int16),
    )


VARIANTS = [(name, {}) for name in ("tar_van", "tar", "van", "uniform", "window", "none", "expected_attention",
                                     "global_score")] + [
    ("tar_van", {"pool_kernel": 3, "alpha": 0.3, "recent_ratio": 0.25}),
    ("van", {"pool_kernel": 7}),
    ("expected_attention", {"use_variance": False, "recent_ratio": 0.25}),
    ("global_score", {"decay": 0.5}),
    ("keep_merge", {}), ("keep_merge", {"candidates": "all", "alpha": 0.3}),
    ("adakv", {}), ("adakv", {"floor": 0.5, "recent_ratio": 0.25}),
]


@pytest.mark.parametrize("name, options", VARIANTS)
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("queries", [False, True])
def test_every_policy_returns_valid_indices(name, options, seed, queries):
    tokens = with_queries(random_cache(seed), seed) if queries else random_cache(seed)
    policy = make_policy(name, **options)
    n = tokens.count
    for keep in sorted({0, 1, n // 3, n - 1, n, n + 5}):
        if keep < 0:
            continue
        if name == "none" and keep < n:
            with pytest.raises(RuntimeError):
                policy.select(tokens, keep)
            continue
        index = policy.select(tokens, keep)
        assert_valid(index, tokens.heads, n, keep)
        assert index.device == tokens.keys.device


def test_all_policies_are_registered():
    assert policy_names() == ["adakv", "expected_attention", "global_score", "keep_merge", "none", "tar", "tar_van",
                              "uniform", "van", "window"]


def test_unknown_policy_names_the_known_ones():
    with pytest.raises(UnknownPolicyError) as caught:
        make_policy("nope")
    message = str(caught.value)
    assert "nope" in message
    for name in policy_names():
        assert name in message


def test_large_cache_runs_in_one_shot():
    """A realistic layer (8 heads, 6K tokens, dim 128) goes through without per-token work."""
    g = torch.Generator().manual_seed(0)
    heads, per_frame, frames = 8, 130, 48
    n = per_frame * frames
    frame = torch.arange(frames).repeat_interleave(per_frame).expand(heads, n)
    spot = torch.arange(per_frame).repeat(frames).expand(heads, n)
    tokens = VisualTokens(torch.randn(heads, n, 128, generator=g), torch.randn(heads, n, 128, generator=g),
                          frame, spot // 10, spot % 10)
    keep = int(0.75 * n)
    for name, options in VARIANTS:
        if name != "none":
            assert_valid(make_policy(name, **options).select(tokens, keep), heads, n, keep)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name, options", [v for v in VARIANTS if v[0] != "none"])
def test_gpu_matches_cpu(name, options):
    tokens = grid_tokens(16, 4, CHANGED, seed=9, noise=0.05)
    on_gpu = VisualTokens(*(getattr(tokens, k).cuda() for k in ("keys", "values", "frame", "row", "col")))
    policy = make_policy(name, **options)
    for keep in (1, 40, 100, 200):
        index = policy.select(on_gpu, keep)
        assert index.device.type == "cuda"
        assert torch.equal(index.cpu(), policy.select(tokens, keep))
