"""Property-based tests of every policy on random shapes and budgets: the indices are valid, the count is
exact, the same input gives the same answer, and each policy keeps what its docs promise (the recent
frames, the newest tokens, evenly spaced whole frames)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from potwatch.compression.policies.base import VisualTokens, make_policy
from tests.query_fixtures import with_queries

EVICTING = [
    ("tar_van", {}), ("tar", {}), ("van", {}), ("uniform", {}), ("window", {}),
    ("tar_van", {"alpha": 0.3, "recent_ratio": 0.25, "pool_kernel": 3}),
    ("tar_van", {"alpha": 1.0, "recent_ratio": 0.0}),
    ("van", {"pool_kernel": 5, "recent_ratio": 0.5}),
    ("expected_attention", {}), ("expected_attention", {"use_variance": False, "recent_ratio": 0.5}),
    ("global_score", {}), ("global_score", {"decay": 0.0, "recent_ratio": 0.0}),
    ("keep_merge", {}), ("keep_merge", {"candidates": "all", "min_similarity": -1.0, "recent_ratio": 0.25}),
    ("adakv", {}), ("adakv", {"floor": 0.0, "smoothing": 0.5, "alpha": 0.3}),
]
RECENT_RATIO = {"tar_van": 0.125, "tar": 0.125, "van": 0.125, "expected_attention": 0.125, "global_score": 0.125,
                "keep_merge": 0.125, "adakv": 0.125}
# The most of the budget the recent window takes: TaR's share (alpha) where a policy has one, else 0.5.
WINDOW_SHARE = {"tar_van": 0.5, "tar": 1.0, "van": 0.5, "expected_attention": 0.5, "global_score": 0.5,
                "keep_merge": 0.5, "adakv": 0.5}
FEW = settings(max_examples=40, deadline=None)


@st.composite
def caches(draw):
    """One layer's visual tokens: each head holds its own subset (same size) of frames x rows x cols
    patches, in time order, as after earlier compressions; keys and values random."""
    heads = draw(st.integers(1, 4))
    frames = draw(st.integers(1, 10))
    rows, cols = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    full = frames * rows * cols
    n = draw(st.integers(1, full))
    dim = draw(st.sampled_from([2, 8, 16]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    first = draw(st.integers(0, 10**6))  # frame numbers far into a stream
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    subset = torch.stack([torch.randperm(full, generator=g)[:n].sort().values for _ in range(heads)])
    patch = subset % (rows * cols)
    tokens = VisualTokens(
        torch.randn(heads, n, dim, generator=g).to(dtype),
        torch.randn(heads, n, dim, generator=g).to(dtype),
        (subset // (rows * cols) + first).to(torch.int32),
        (patch // cols).to(torch.int16),
        (patch % cols).to(torch.int16),
    )
    return with_queries(tokens, seed) if draw(st.booleans()) else tokens  # what attention policies read


def budgets(tokens: VisualTokens):
    return st.integers(0, tokens.count + 3)


def check_valid(index: torch.Tensor, tokens: VisualTokens, keep: int) -> None:
    assert index.dtype == torch.long and index.shape == (tokens.heads, min(keep, tokens.count))
    if index.numel():
        assert int(index.min()) >= 0 and int(index.max()) < tokens.count
        assert bool((index[:, 1:] > index[:, :-1]).all()), "rows must be ascending and distinct"


@pytest.mark.parametrize("name, options", EVICTING, ids=lambda v: str(v) if isinstance(v, str) else "")
@FEW
@given(data=st.data())
def test_indices_are_valid_exact_and_deterministic(name, options, data):
    tokens = data.draw(caches())
    keep = data.draw(budgets(tokens))
    policy = make_policy(name, **options)
    index = policy.select(tokens, keep)
    check_valid(index, tokens, keep)
    assert torch.equal(index, policy.select(tokens, keep))
    if keep >= tokens.count:
        assert torch.equal(index, torch.arange(tokens.count).expand_as(index))


@pytest.mark.parametrize("name, options", [v for v in EVICTING if v[0] in RECENT_RATIO],
                         ids=lambda v: str(v) if isinstance(v, str) else "")
@FEW
@given(data=st.data())
def test_the_recent_frames_are_kept_whole_or_up_to_their_share(name, options, data):
    """The window is r = max(1, floor(ratio x tokens held / most tokens of one frame)) newest frames;
    its newest tokens are kept up to its share of the budget (VaN's share rounded half to even, the
    rest the window's), whatever the other tokens score."""
    tokens = data.draw(caches())
    keep = data.draw(budgets(tokens))
    ratio = options.get("recent_ratio", RECENT_RATIO[name])
    share = keep - round((1 - options.get("alpha", WINDOW_SHARE[name])) * keep)
    index = make_policy(name, **options).select(tokens, keep)
    for h in range(tokens.heads):
        frame = tokens.frame[h].long()
        distinct, per_frame = torch.unique(frame, return_counts=True)
        r = max(1, math.floor(tokens.count * ratio / int(per_frame.max()) + 1e-9))
        recent = torch.nonzero(torch.isin(frame, distinct[-r:])).flatten()  # in time order: the cache's
        forced = recent[len(recent) - min(share, len(recent)):]
        chosen = torch.zeros(tokens.count, dtype=torch.bool)
        chosen[index[h]] = True
        assert bool(chosen[forced].all()), f"head {h}: a recent token within the window's share was evicted"


@FEW
@given(data=st.data())
def test_window_keeps_the_newest_tokens(data):
    tokens = data.draw(caches())
    keep = data.draw(budgets(tokens))
    index = make_policy("window").select(tokens, keep)
    kept = min(keep, tokens.count)
    assert torch.equal(index, torch.arange(tokens.count - kept, tokens.count).expand(tokens.heads, kept))


@FEW
@given(heads=st.integers(1, 3), frames=st.integers(1, 12), rows=st.integers(1, 4), cols=st.integers(1, 4),
       wanted=st.integers(1, 12), seed=st.integers(0, 1000))
def test_uniform_keeps_whole_frames_evenly_spaced(heads, frames, rows, cols, wanted, seed):
    """With whole frames in the cache and a budget of m frames' tokens, uniform keeps the m frames of
    rank floor((j + 1/2) * F / m), whole."""
    m = min(wanted, frames)
    per_frame = rows * cols
    g = torch.Generator().manual_seed(seed)
    n = frames * per_frame
    frame = torch.arange(frames).repeat_interleave(per_frame).expand(heads, n).to(torch.int32)
    spot = torch.arange(per_frame).repeat(frames).expand(heads, n)
    tokens = VisualTokens(torch.randn(heads, n, 8, generator=g), torch.randn(heads, n, 8, generator=g),
                          frame, (spot // cols).to(torch.int16), (spot % cols).to(torch.int16))
    index = make_policy("uniform").select(tokens, m * per_frame)
    expected = {((2 * j + 1) * frames) // (2 * m) for j in range(m)}
    for h in range(heads):
        kept_frames = frame[h][index[h]].tolist()
        assert set(kept_frames) == expected
        assert all(kept_frames.count(f) == per_frame for f in expected)  # whole frames


@FEW
@given(data=st.data())
def test_none_keeps_everything_or_refuses(data):
    tokens = data.draw(caches())
    keep = data.draw(budgets(tokens))
    policy = make_policy("none")
    if keep < tokens.count:
        with pytest.raises(RuntimeError, match="never evicts"):
            policy.select(tokens, keep)
    else:
        check_valid(policy.select(tokens, keep), tokens, keep)


@pytest.mark.parametrize("name, options", EVICTING, ids=lambda v: str(v) if isinstance(v, str) else "")
@FEW
@given(data=st.data())
def test_rows_of_the_whole_layer_give_the_same_choice(name, options, data):
    """The monitor may hand over the layer's own K/V rows (protected text between the visual tokens)
    with `at` saying where the visual ones are; the choice must not change."""
    if "at" not in {f.name for f in dataclasses.fields(VisualTokens)}:
        pytest.skip("VisualTokens has no `at` field here")
    tokens = data.draw(caches())
    keep = data.draw(budgets(tokens))
    extra = data.draw(st.integers(0, 6))
    heads, n, dim = tokens.keys.shape
    total = n + extra
    g = torch.Generator().manual_seed(n * 31 + extra)
    at = torch.stack([torch.randperm(total, generator=g)[:n].sort().values for _ in range(heads)])
    keys = torch.randn(heads, total, dim, generator=g).to(tokens.keys.dtype)
    values = torch.randn(heads, total, dim, generator=g).to(tokens.values.dtype)
    keys.scatter_(1, at.unsqueeze(-1).expand(heads, n, dim), tokens.keys)
    values.scatter_(1, at.unsqueeze(-1).expand(heads, n, dim), tokens.values)
    spread = dataclasses.replace(tokens, keys=keys, values=values, at=at)
    policy = make_policy(name, **options)
    assert torch.equal(policy.select(spread, keep), policy.select(tokens, keep))
