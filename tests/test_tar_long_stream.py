"""TaR must not starve on long streams (issue 12, section 5).

A distinct two-frame event early in a synthetic stream, then one compression after another. An aligned
TaR reference, written here plainly from the paper's arithmetic, keeps the event; `tar_van` must keep at
least 90% of what the reference keeps after every round. When the recent window counted the distinct
frames held, thinned old frames counted as whole ones, the window grew until TaR had no share left, and
`tar_van` kept the event only where VaN happened to."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from potwatch.compression.policies.base import VisualTokens, make_policy
from potwatch.compression.policies.selection import recent_tokens
from tests.test_policies import append, take

ROWS = 6  # 3 layers x 2 KV heads, one row each, as the monitor hands them to a policy
GRID_COLS = 4
PER_FRAME = 12  # a 3 x 4 grid
DIM = 16
FIRST, ADDED, KEEP_FRAMES, ROUNDS = 16, 4, 12, 30
KEEP = KEEP_FRAMES * PER_FRAME
EVENT = torch.tensor([2, 3])  # the two frames of the event


def synthetic_stream(frames: int, seed: int = 0) -> VisualTokens:
    """`frames` frames in every row: a static background key per (row, patch) plus a little noise, except
    in the event frames, whose keys are their own. Values are random, the same for event and background,
    so only TaR can tell the event apart."""
    g = torch.Generator().manual_seed(seed)
    background = torch.randn(ROWS, PER_FRAME, DIM, generator=g)
    event = torch.randn(ROWS, PER_FRAME, DIM, generator=g)
    frame = torch.arange(frames).repeat_interleave(PER_FRAME)
    keys = background.repeat(1, frames, 1)
    is_event = torch.isin(frame, EVENT)
    keys[:, is_event] = event.repeat(1, len(EVENT), 1)
    keys = keys + 0.1 * torch.randn(keys.shape, generator=g)
    values = torch.randn(keys.shape, generator=g)
    spot = torch.arange(PER_FRAME).repeat(frames)
    expand = lambda t: t.expand(ROWS, -1).clone()  # noqa: E731
    return VisualTokens(keys, values, expand(frame), expand(spot // GRID_COLS), expand(spot % GRID_COLS))


def frames_of(tokens: VisualTokens, first: int, count: int) -> VisualTokens:
    at = torch.arange(first * PER_FRAME, (first + count) * PER_FRAME)
    return take(tokens, at.expand(ROWS, -1))


def aligned_tar(tokens: VisualTokens, keep: int, recent_ratio: float, alpha: float = 0.5) -> torch.Tensor:
    """The reference's choice, row by row: window = max(1, floor(ratio x tokens held / tokens per frame))
    newest frames; TaR ranks older tokens by minus the cosine of their key with the recent frames' mean
    unit key at the same (row, col), read from the metadata, and takes round(alpha x keep) - |window| of
    them; VaN (value norm) fills the rest. Returns the kept indices [ROWS, keep], ascending."""
    chosen = []
    for h in range(tokens.heads):
        frame, spot = tokens.frame[h], tokens.row[h] * GRID_COLS + tokens.col[h]
        window = max(1, math.floor(recent_ratio * tokens.count / PER_FRAME))
        recent = torch.isin(frame, frame.unique()[-window:])
        unit = F.normalize(tokens.keys[h], dim=-1)
        mean = torch.zeros(PER_FRAME, DIM).index_add_(0, spot[recent], unit[recent])
        mean = mean / torch.bincount(spot[recent], minlength=PER_FRAME).clamp(min=1)[:, None]
        tar = -(unit * mean[spot]).sum(dim=-1)
        older = torch.nonzero(~recent).flatten()
        n_tar = max(0, round(alpha * keep) - int(recent.sum()))
        kept = recent.clone()
        kept[older[torch.topk(tar[older], min(n_tar, len(older))).indices]] = True
        van = tokens.values[h].norm(dim=-1).masked_fill(kept, float("-inf"))
        kept[torch.topk(van, keep - int(kept.sum())).indices] = True
        chosen.append(torch.nonzero(kept).flatten())
    return torch.stack(chosen)


def event_kept(select, rounds: int, seed: int = 0) -> list[int]:
    """Event tokens held (over all rows) after each round: FIRST frames compressed to KEEP, then ADDED
    frames come in and the cache is compressed back, `rounds` times in all."""
    stream = synthetic_stream(FIRST + ADDED * rounds, seed)
    cache = frames_of(stream, 0, FIRST)
    counts = []
    for round_ in range(rounds):
        cache = take(cache, select(cache, KEEP))
        counts.append(int(torch.isin(cache.frame, EVENT).sum()))
        cache = append(cache, frames_of(stream, FIRST + ADDED * round_, ADDED))
    return counts


@pytest.mark.parametrize("recent_ratio", [0.125, 0.25])
def test_tar_van_keeps_the_early_event_as_the_aligned_reference_does(recent_ratio):
    policy = make_policy("tar_van", recent_ratio=recent_ratio)
    ours = event_kept(policy.select, ROUNDS)
    reference = event_kept(lambda tokens, keep: aligned_tar(tokens, keep, recent_ratio), ROUNDS)
    assert reference[-1] == len(EVENT) * PER_FRAME * ROWS, "the reference should keep the whole event"
    for round_, (got, want) in enumerate(zip(ours, reference), start=1):
        assert got >= 0.9 * want, f"round {round_}: tar_van kept {got} event tokens, the aligned reference {want}"


@pytest.mark.parametrize("name, options, share", [
    ("tar_van", {}, 0.5), ("tar_van", {"alpha": 0.3}, 0.3), ("tar_van", {"alpha": 0.0}, 0.0),
    ("tar", {}, 1.0), ("keep_merge", {}, 0.5), ("van", {}, 0.5), ("expected_attention", {}, 0.5),
    ("global_score", {}, 0.5),
])
@pytest.mark.parametrize("keep", [7, 20, 45])
def test_the_recent_window_never_takes_more_than_its_share(name, options, share, keep):
    """16 whole frames and a budget under the window (4 frames, 48 tokens, at ratio 0.25): the window
    keeps its newest tokens up to its share of the budget (alpha's; 0.5 where a policy has no alpha)
    and no more. Its frames get tiny values here, so no token of them wins a VaN slot on its own merit."""
    tokens = frames_of(synthetic_stream(16), 0, 16)
    in_recent, _ = recent_tokens(tokens.frame, 0.25, keep)
    assert int(in_recent[0].sum()) == 48
    tokens.values[in_recent] *= 0.01
    index = make_policy(name, recent_ratio=0.25, **options).select(tokens, keep)
    limit = keep - round((1 - share) * keep)  # the paper's code rounds VaN's share; the rest is TaR's
    assert limit <= math.floor(share * keep + 0.5)
    newest = torch.arange(16 * PER_FRAME - limit, 16 * PER_FRAME)  # the window's newest tokens
    for h in range(ROWS):
        kept_recent = index[h][in_recent[h, index[h]]]
        assert kept_recent.tolist() == newest.tolist(), f"{name}, row {h}: kept {kept_recent.tolist()} of the window"
