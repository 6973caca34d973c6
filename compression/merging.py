"""Folding evicted tokens into kept ones (KeepKV's merging), for every (layer, KV head) row at once.

A slot carries a count: how many original tokens it stands for. An evicted token is merged into the
kept token whose key is most like its own (cosine), in the same row; the slot's key and value become
the count-weighted means and its count the sum, so with the count's log added to the slot's logit
(models/count_attention.py) the slot draws about the attention of all the tokens it stands for, and
exactly that when they were identical.

Candidates are either every kept token of the row ("all": n x m dot products per row, the paper's
search) or the kept tokens at the same patch coordinate in other frames ("patch": the redundancy of
video is mostly temporal, and it costs evicted x frames dot products instead of evicted x kept, which
is what keeps a pass over a large cache in the milliseconds). Work runs in groups of rows (and of
evicted tokens) sized in bytes, so no step materialises a similarity matrix of the whole cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F

WORK_BYTES = 16 << 20  # float32 scratch one step of the search or the fold may use
CANDIDATES = ("patch", "all")


def merge_evicted(keys: torch.Tensor, values: torch.Tensor, counts: torch.Tensor, at: torch.Tensor,
                  chosen: torch.Tensor, coordinate: torch.Tensor, candidates: str = "patch",
                  min_similarity: float = -1.0) -> int:
    """Fold the visual tokens not `chosen` into the chosen ones, in place.

    keys/values [R, N, D] and counts [R, N] are the cache's rows; `at` [R, n] says where the visual
    tokens lie in them, `chosen` [R, m] which of those stay (indices into `at`), `coordinate` [R, n] each
    visual token's patch id. A token whose best cosine is below `min_similarity` (or that has no
    candidate) is dropped as in plain eviction. Returns how many tokens were merged."""
    rows, n = at.shape
    m = chosen.shape[1]
    if m == 0 or m >= n:
        return 0
    kept = torch.zeros(rows, n, dtype=torch.bool, device=at.device).scatter(1, chosen, True)
    evicted = (~kept).nonzero()[:, 1].view(rows, n - m)
    kept_at, evicted_at = at.gather(1, chosen), at.gather(1, evicted)
    if candidates == "all":
        target, similarity = _nearest_of_all(keys, kept_at, evicted_at)
    else:
        target, similarity = _nearest_same_patch(keys, kept_at, evicted_at, coordinate.gather(1, chosen),
                                                 coordinate.gather(1, evicted))
    weight = counts.gather(1, evicted_at) * (similarity >= min_similarity)
    _fold(keys, values, counts, kept_at, evicted_at, target, weight)
    return int((weight > 0).sum())


def _unit(keys: torch.Tensor, rows: slice, at: torch.Tensor) -> torch.Tensor:
    """Unit-length float32 keys [r, k, D] of rows `rows` at `at` [r, k]."""
    part = keys[rows]
    picked = part.gather(1, at.unsqueeze(-1).expand(-1, -1, part.shape[-1]))
    return F.normalize(picked.float(), dim=-1)


def _nearest_of_all(keys, kept_at, evicted_at) -> tuple[torch.Tensor, torch.Tensor]:
    """For each evicted token, the kept token (index into kept_at) of highest cosine, and that cosine."""
    rows, m = kept_at.shape
    e = evicted_at.shape[1]
    target = torch.empty_like(evicted_at)
    best = torch.empty(evicted_at.shape, dtype=torch.float32, device=keys.device)
    group = max(1, WORK_BYTES // (4 * m * keys.shape[-1]))
    for first in range(0, rows, group):
        span = slice(first, min(rows, first + group))
        kept = _unit(keys, span, kept_at[span])  # [g, m, D]
        step = max(1, WORK_BYTES // (4 * m * kept.shape[0]))
        for start in range(0, e, step):
            end = min(e, start + step)
            found = torch.bmm(_unit(keys, span, evicted_at[span, start:end]), kept.transpose(1, 2)).max(dim=2)
            best[span, start:end], target[span, start:end] = found.values, found.indices
    return target, best


def _nearest_same_patch(keys, kept_at, evicted_at, kept_coordinate, evicted_coordinate):
    """As `_nearest_of_all`, among the kept tokens with the evicted token's patch coordinate; a token
    with none gets similarity -inf. The kept tokens of a row are sorted by coordinate, so each evicted
    token's candidates are one run, found by two binary searches (as in `pool_per_frame`)."""
    rows, m = kept_at.shape
    e, dim = evicted_at.shape[1], keys.shape[-1]
    order = torch.sort(kept_coordinate.long() * m + torch.arange(m, device=keys.device), dim=1).indices
    sorted_coordinate = kept_coordinate.long().gather(1, order).contiguous()
    lo = torch.searchsorted(sorted_coordinate, evicted_coordinate.long().contiguous(), side="left")
    hi = torch.searchsorted(sorted_coordinate, evicted_coordinate.long().contiguous(), side="right")
    width = int((hi - lo).max()) if e else 0
    target = torch.zeros_like(evicted_at)
    best = torch.full(evicted_at.shape, float("-inf"), dtype=torch.float32, device=keys.device)
    if width == 0:
        return target, best
    slots = torch.arange(width, device=keys.device)
    step = max(1, WORK_BYTES // (4 * width * dim))  # (row, evicted) pairs per step
    flat_lo, flat_hi = lo.view(-1), hi.view(-1)
    for start in range(0, rows * e, step):
        pairs = torch.arange(start, min(rows * e, start + step), device=keys.device)
        row = pairs // e
        run = (flat_lo[pairs, None] + slots).clamp(max=m - 1)  # [p, width] positions in the sorted list
        valid = (flat_lo[pairs, None] + slots) < flat_hi[pairs, None]
        kept_index = order[row[:, None], run]  # [p, width] indices into kept_at
        candidate = F.normalize(keys[row[:, None], kept_at[row[:, None], kept_index]].float(), dim=-1)
        mine = F.normalize(keys[row, evicted_at.view(-1)[pairs]].float(), dim=-1)
        cosine = torch.bmm(candidate, mine.unsqueeze(-1)).squeeze(-1).masked_fill(~valid, float("-inf"))
        found = cosine.max(dim=1)
        best.view(-1)[pairs] = found.values
        target.view(-1)[pairs] = kept_index.gather(1, found.indices[:, None]).squeeze(1)
    return target, best


def _fold(keys, values, counts, kept_at, evicted_at, target, weight) -> None:
    """slot <- (count * slot + sum of weight * merged) / (count + sum of weight), for K and V; counts add.
    Only slots that received a token are written, so the others keep their bits."""
    rows, m = kept_at.shape
    dim = keys.shape[-1]
    group = max(1, WORK_BYTES // (4 * max(m, evicted_at.shape[1]) * dim * 2))
    for first in range(0, rows, group):
        span = slice(first, min(rows, first + group))
        w, where = weight[span], kept_at[span]
        total = counts[span].gather(1, where).float()
        added = torch.zeros_like(total).scatter_add_(1, target[span], w.float())
        touched = added > 0
        if not bool(touched.any()):
            continue
        index = where.unsqueeze(-1).expand(-1, -1, dim)
        into = target[span].unsqueeze(-1).expand(-1, -1, dim)
        for rows_of in (keys, values):
            block = rows_of[span]
            mine = block.gather(1, index).float()
            merged = block.gather(1, evicted_at[span].unsqueeze(-1).expand(-1, -1, dim)).float()
            summed = (mine * total.unsqueeze(-1)).scatter_add_(1, into, merged * w.float().unsqueeze(-1))
            mean = summed / (total + added).unsqueeze(-1)
            block.scatter_(1, index, torch.where(touched.unsqueeze(-1), mean, mine).to(block.dtype))
        counts[span] = counts[span].scatter(1, where, (total + added).to(counts.dtype))
