"""Vectorised pieces the policies share: the recent-frame window, TaR and VaN scores, and top-k picking.

Everything works on all KV heads at once. Heads may hold different tokens (each was compressed on its
own), so every step reads the per-head `frame`/`row`/`col` metadata instead of assuming a layout; that
is what keeps patch coordinates aligned after any number of compressions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from potwatch.compression.policies.base import VisualTokens
from potwatch.errors import PolicyOptionError

# Score given to older tokens whose (row, col) has no token in the recent frames: the largest TaR score
# possible (cosine -1), so they count as novel. With no recent patch to compare with there is no
# evidence of redundancy, and such patches appear exactly when the frame grid changed (new source,
# new resolution), which is when old content is least likely to be repeated.
NOVEL_SCORE = 1.0


def check_ratio(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise PolicyOptionError(f"Policy option {name}={value} is out of range; pick a value between 0 and 1.")


def check_kernel(value: int) -> None:
    if value < 1 or value % 2 == 0:
        raise PolicyOptionError(f"Policy option pool_kernel={value} is invalid; pick an odd size such as 1, 3, 5 or 7.")


def trivial_selection(heads: int, n: int, keep: int, device: torch.device) -> torch.Tensor | None:
    """The answer when there is nothing to choose (keep <= 0 or keep >= n), else None."""
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    if keep >= n:
        return torch.arange(n, device=device).expand(heads, n).contiguous()
    if keep == 0:
        return torch.empty(heads, 0, dtype=torch.long, device=device)
    return None


def top_indices(score: torch.Tensor, keep: int) -> torch.Tensor:
    """The `keep` highest-scoring indices per row, ascending. Ties go to the earlier index (stable sort),
    so the result is deterministic on every device."""
    order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :keep]
    return order.sort(dim=1).values


def mask_to_indices(mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of a mask with exactly `keep` True per row, ascending."""
    heads, n = mask.shape
    positions = torch.arange(n, device=mask.device).expand(heads, n)
    return positions[mask].view(heads, keep)


def frame_ranks(frame: torch.Tensor, newest_first: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank of each token's frame among the distinct frames of its head.

    Returns (rank in sorted order [H, n], the sort permutation [H, n], frames per head [H]). The sort
    is by frame, ties by cache index (ascending for oldest-first, descending for newest-first)."""
    heads, n = frame.shape
    f = frame.long()
    position = torch.arange(n, device=frame.device)
    key = (f - f.min()) * n + position  # unique per row: frame first, then cache index
    order = torch.sort(key, dim=1, descending=newest_first).indices
    sorted_frame = f.gather(1, order)
    starts = torch.ones_like(sorted_frame, dtype=torch.bool)
    starts[:, 1:] = sorted_frame[:, 1:] != sorted_frame[:, :-1]
    rank = starts.long().cumsum(dim=1) - 1
    return rank, order, rank[:, -1] + 1


def recent_tokens(frame: torch.Tensor, recent_ratio: float, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The recent window: r = max(1, floor(recent_ratio * frames)) newest frames of each head.

    Returns (in_recent: tokens of those frames, kept: the ones that fit in `keep`, newest frame first and
    within a frame the later cache positions first). Both are bool [H, n]."""
    heads, n = frame.shape
    rank, order, frames = frame_ranks(frame, newest_first=True)
    # The small epsilon keeps floor(0.29 * 100) at 29 despite binary rounding.
    r = torch.floor(frames.double() * recent_ratio + 1e-9).long().clamp(min=1)
    in_recent_sorted = rank < r[:, None]
    fits_sorted = in_recent_sorted & (torch.arange(n, device=frame.device) < keep)
    in_recent = torch.zeros_like(in_recent_sorted).scatter(1, order, in_recent_sorted)
    kept = torch.zeros_like(fits_sorted).scatter(1, order, fits_sorted)
    return in_recent, kept


def tar_scores(keys: torch.Tensor, row: torch.Tensor, col: torch.Tensor, in_recent: torch.Tensor) -> torch.Tensor:
    """TaR (Eq. 4): minus the mean cosine between a token's key and the keys at the same (row, col) in the
    recent frames; higher = more novel. Recent tokens get +inf (they are kept outright).

    Uses mean-of-cosines = dot(k_hat, mean of recent k_hat at that coordinate), so it costs one
    [slots, D] table and one dot product per token instead of a frames x frames comparison."""
    heads, n, dim = keys.shape
    r = row.long() - row.min()
    c = col.long() - col.min()
    coordinate = r * (int(c.max()) + 1) + c
    head = torch.arange(heads, device=keys.device)[:, None]
    slot_key = head * (int(coordinate.max()) + 1) + coordinate  # (head, row, col) -> one integer
    _, slot = torch.unique(slot_key.reshape(-1), return_inverse=True)  # dense slot ids, at most H * n
    slots = int(slot.max()) + 1
    flat_keys = keys.reshape(-1, dim).float()
    recent = in_recent.reshape(-1)
    recent_slot = slot[recent]
    sums = flat_keys.new_zeros(slots, dim).index_add_(0, recent_slot, F.normalize(flat_keys[recent], dim=-1))
    counts = torch.bincount(recent_slot, minlength=slots)
    mean = sums / counts.clamp(min=1)[:, None].to(sums.dtype)
    # cos(k, recent) averaged = dot(k, mean of unit recent keys) / |k|; no normalised copy of all keys.
    similarity = torch.linalg.vecdot(flat_keys, mean[slot]) / flat_keys.norm(dim=-1).clamp(min=1e-12)
    score = torch.where(counts[slot] > 0, -similarity, NOVEL_SCORE).view(heads, n)
    return score.masked_fill(in_recent, float("inf"))


def van_scores(values: torch.Tensor) -> torch.Tensor:
    """VaN (Eq. 7): L2 norm of each token's value vector, per head."""
    return values.float().norm(dim=-1)


def pool_per_frame(
    score: torch.Tensor, frame: torch.Tensor, row: torch.Tensor, col: torch.Tensor, kernel: int
) -> torch.Tensor:
    """Average of `score` over a kernel x kernel window of the same frame's grid, counting only tokens
    still in the cache (sum over present neighbours / number of present neighbours).

    Equal to a masked AvgPool2d on a dense [frames, rows, cols] grid, without building that grid (old
    frames are sparse after a few cuts, so it can be far larger than the cache). Tokens are sorted by
    (frame, row, col); the window's part in each of its `kernel` rows is then one contiguous run, whose
    sum and size come from a prefix sum and two binary searches. Memory stays O(heads x kernel x n)."""
    if kernel == 1:
        return score
    heads, n = score.shape
    pad = kernel // 2
    r = row.long() - row.min() + pad
    c = col.long() - col.min() + pad
    rows = int(r.max()) + pad + 1  # padded so a window never reaches into another row or frame
    cols = int(c.max()) + pad + 1
    key = ((frame.long() - frame.min()) * rows + r) * cols + c
    sorted_key, order = torch.sort(key, dim=1)
    prefix = torch.zeros(heads, n + 1, dtype=torch.float64, device=score.device)
    prefix[:, 1:] = score.gather(1, order).double().cumsum(dim=1)  # float64: differences of long sums
    offsets = torch.arange(-pad, pad + 1, device=score.device) * cols
    line = (key[:, None, :] + offsets[None, :, None]).reshape(heads, kernel * n)  # (frame, row + dr, col)
    lo = torch.searchsorted(sorted_key, line - pad, side="left")
    hi = torch.searchsorted(sorted_key, line + pad, side="right")
    total = (prefix.gather(1, hi) - prefix.gather(1, lo)).view(heads, kernel, n).sum(dim=1)
    present = (hi - lo).view(heads, kernel, n).sum(dim=1)  # >= 1: every token is in its own window
    return (total / present).to(score.dtype)


def pick_ranked(score: torch.Tensor, allowed: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mask of the `count[h]` highest-scoring allowed tokens in each head (counts may differ per head)."""
    heads, n = score.shape
    masked = score.masked_fill(~allowed, float("-inf"))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices
    picked_sorted = torch.arange(n, device=score.device) < count[:, None]
    return torch.zeros_like(allowed).scatter(1, order, picked_sorted) & allowed


def evenly_spaced(group: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mask of `count[h]` members of `group` (bool [H, n], in time order along dim 1) evenly spaced
    through the group: members number floor((j + 1/2) * G / count) for j < count. Needs count <= G."""
    heads, n = group.shape
    size = group.sum(dim=1)
    member = group.long().cumsum(dim=1) - 1  # position of each member inside its group
    most = int(count.max()) if heads else 0
    j = torch.arange(most, device=group.device)
    targets = ((2 * j[None, :] + 1) * size[:, None]) // (2 * count.clamp(min=1)[:, None])
    targets = torch.where(j[None, :] < count[:, None], targets, torch.full_like(targets, n))  # n = discard slot
    table = torch.zeros(heads, n + 1, dtype=torch.bool, device=group.device).scatter(1, targets, True)
    return group & table.gather(1, member.clamp(min=0))


def infinipot_score(
    tokens: VisualTokens, keep: int, alpha: float, recent_ratio: float, pool_kernel: int
) -> torch.Tensor:
    """The InfiniPot-V ranking (Algorithm 1): recent frames and the TaR picks get +inf, everything else
    its (pooled) VaN; the top `keep` of this score is the kept set. alpha=1 is TaR alone, alpha=0 VaN
    with the recent frames."""
    in_recent, recent_kept = recent_tokens(tokens.frame, recent_ratio, keep)
    forced = recent_kept
    older = ~in_recent
    n_tar = (int(alpha * keep + 0.5) - recent_kept.sum(dim=1)).clamp(min=0)  # alpha*keep rounded half up
    if alpha > 0 and bool((n_tar > 0).any()):
        tar = tar_scores(tokens.keys, tokens.row, tokens.col, in_recent)
        forced = forced | pick_ranked(tar, older, n_tar)
    if alpha < 1:
        van = pool_per_frame(van_scores(tokens.values), tokens.frame, tokens.row, tokens.col, pool_kernel)
    else:
        van = torch.zeros(tokens.frame.shape, device=tokens.keys.device)
    score = van.masked_fill(forced, float("inf"))
    # Recent tokens that did not fit must not come back through VaN.
    return score.masked_fill(in_recent & ~recent_kept, float("-inf"))
