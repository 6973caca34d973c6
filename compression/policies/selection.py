"""Vectorised pieces the policies share: the recent-frame window, TaR and VaN scores, and top-k picking.

Everything works on all KV heads at once. Heads may hold different tokens (each was compressed on its
own), so every step reads the per-head `frame`/`row`/`col` metadata instead of assuming a layout; that
is what keeps patch coordinates aligned after any number of compressions."""

from __future__ import annotations

import torch

from potwatch.compression.policies.visual_tokens import VisualTokens
from potwatch.compression.quantized_kv import QuantizedView
from potwatch.errors import PolicyOptionError
from potwatch.kernels import native
from potwatch.kernels.triton_dispatch import triton_ready

# Score given to older tokens whose (row, col) has no token in the recent frames: the largest TaR score
# possible (cosine -1), so they count as novel. With no recent patch to compare with there is no
# evidence of redundancy, and such patches appear exactly when the frame grid changed (new source,
# new resolution), which is when old content is least likely to be repeated.
NOVEL_SCORE = 1.0

# Key rows TaR scores at once: their looked-up table rows (1 MB of float32 at head_dim 128) stay in the
# CPU's cache between the lookup and the dot products.
TAR_CHUNK_ROWS = 2048

# Most of a budget the recent window may take in the policies that have no TaR share of their own (van,
# expected_attention, global_score): its share in tar_van at the paper's alpha.
RECENT_SHARE = 0.5


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


def ranking_key(score: torch.Tensor) -> torch.Tensor:
    """An int64 per entry [H, n] that orders like `score` (as float32), ties going to the earlier index.

    Unique within a row, so an unsorted top-k returns exactly the set a stable sort would, on every
    device, at a fraction of a full sort's cost."""
    bits = (score.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats count down (32-bit ops: cheap)
    n = score.shape[1]
    key = ordered.long().bitwise_left_shift_(32)  # the order in the high half, the index in the low
    return key.add_(n - 1 - torch.arange(n, device=score.device))


def top_indices(score: torch.Tensor, keep: int) -> torch.Tensor:
    """The `keep` highest-scoring indices per row, ascending. Ties go to the earlier index, so the result
    is deterministic on every device."""
    if native.ready(score):  # one C loop per row instead of a top-k, a scatter and a nonzero
        return native.mask_positions(native.pick_top(score, None, keep), keep)
    chosen = torch.topk(ranking_key(score), keep, dim=1, sorted=False).indices
    return mask_to_indices(torch.zeros_like(score, dtype=torch.bool).scatter(1, chosen, True), keep)


def mask_to_indices(mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of a mask with exactly `keep` True per row, ascending."""
    if native.ready(mask):
        return native.mask_positions(mask, keep)
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
    if n > 1 and bool((f[:, 1:] >= f[:, :-1]).all()):
        # The usual case: the cache holds tokens in time order, so the order is known without a sort.
        order = (position.flip(0) if newest_first else position).expand(heads, n)
    else:
        key = (f - f.min()) * n + position  # unique per row: frame first, then cache index
        order = torch.sort(key, dim=1, descending=newest_first).indices
    sorted_frame = f.gather(1, order)
    starts = torch.ones_like(sorted_frame, dtype=torch.bool)
    starts[:, 1:] = sorted_frame[:, 1:] != sorted_frame[:, :-1]
    rank = starts.long().cumsum(dim=1) - 1
    return rank, order, rank[:, -1] + 1


def tar_share(keep: int | torch.Tensor, alpha: float) -> int | torch.Tensor:
    """TaR's share of a budget `keep` (an int, or one per head [H]), the recent window included, rounded
    as the paper's code rounds it: VaN gets round((1 - alpha) * keep), half to even (Python's and torch's
    round), and TaR the rest. That is round(alpha * keep) except at exact halves, where it is whichever
    of the two neighbours leaves VaN an even count."""
    if isinstance(keep, torch.Tensor):
        return keep - torch.round((1 - alpha) * keep.double()).long()
    return keep - round((1 - alpha) * keep)


def recent_tokens(frame: torch.Tensor, recent_ratio: float, keep: int | torch.Tensor,
                  valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The recent window: the r newest frames of each head, r = max(1, floor(recent_ratio * held / p)),
    where held is the head's token count and p the most tokens any one of its frames holds.

    The window is measured in frame-equivalents, as the paper's code does (tokens held / tokens per
    frame), not in distinct frames: after a few cuts every old frame keeps a token or two, and counting
    those as frames grew the window until it took TaR's whole share (issue 12). p is the largest frame
    held because the newest frames arrive whole and the window keeps them whole, so it needs no grid
    size from outside; with frames of several sizes the largest gives the smaller window. Rounding
    differs from the paper's code, int(ratio * (held // p)), in two small ways: held need not be whole
    frames here, so the product is floored once; and floor() gets a 1e-9 nudge so floor(0.29 * 100)
    stays 29 despite binary rounding. At the code's own ratios (0.125, 0.25) and whole frames both give
    the code's r; the code has no max(1, ...), which the window needs when fewer than 1/ratio frames are held.

    Returns (in_recent: tokens of those frames, kept: the ones that fit in `keep` (an int, or one per
    head [H]): the window's share of the budget, newest frame first and within a frame the later cache
    positions first). Both are bool [H, n]. Holes (`valid` False, frame -1) are in no frame."""
    if native.ready(frame):  # one C loop per row where frames ascend along it, as they usually do
        window = native.recent_window(frame, valid, recent_ratio, keep)
        if window is not None:
            return window
    heads, n = frame.shape
    rank, order, _ = frame_ranks(frame, newest_first=True)
    real = torch.ones_like(rank, dtype=torch.bool) if valid is None else valid.gather(1, order)
    per_frame = torch.zeros_like(rank).scatter_add_(1, rank, real.long()).amax(dim=1).clamp(min=1)
    held = real.sum(dim=1)
    r = torch.floor(held.double() * recent_ratio / per_frame.double() + 1e-9).long().clamp(min=1)
    in_recent_sorted = (rank < r[:, None]) & real
    limit = keep[:, None] if isinstance(keep, torch.Tensor) else keep
    fits_sorted = in_recent_sorted & (torch.arange(n, device=frame.device) < limit)
    in_recent = torch.zeros_like(in_recent_sorted).scatter(1, order, in_recent_sorted)
    kept = torch.zeros_like(fits_sorted).scatter(1, order, fits_sorted)
    return in_recent, kept


def tar_scores(tokens: VisualTokens, in_recent: torch.Tensor) -> torch.Tensor:
    """TaR (Eq. 4): minus the mean cosine between a token's key and the keys at the same (row, col) in the
    recent frames; higher = more novel. Recent tokens get +inf (they are kept outright).

    Uses mean-of-cosines = dot(k, mean of recent unit keys at that coordinate) / |k|, so it costs one
    [coordinates, D] table per head and one dot product per token instead of a frames x frames
    comparison. The keys are read where they lie (the cache's rows). On the CPU one C loop
    (kernels/cpu_pass.c) builds the table and scores every token in one read of its key; without a C
    compiler a chunk of rows at a time gets its table rows, dot products and norms while it is in the
    CPU's cache (`key_similarity`), rows that are not visual tokens looking up an all-zero table row that
    is never read back. On CUDA with triton one fused kernel (kernels/tar_similarity_triton.py) does the
    dot products and norms."""
    heads, n = tokens.frame.shape
    keys = tokens.keys  # [heads, N, D], the cache's rows at the cache's dtype
    rows_per_head = keys.shape[1]
    if native.reads_keys(keys):  # on the CPU, one C loop reads each key once (kernels/cpu_pass.c)
        score = native.tar_scores(keys, tokens.rows(), tokens.row, tokens.col, in_recent, NOVEL_SCORE)
        if score is not None:
            return score
    coordinate, coordinates = patch_coordinates(tokens.row, tokens.col)
    table = coordinates + 1  # the last row of each head's table stays zero
    rows = tokens.rows()
    first_slot = torch.arange(heads, device=tokens.device)[:, None] * table
    slot = coordinate + first_slot  # [heads, n]
    recent_slot = slot[in_recent]
    recent_at = (rows + torch.arange(heads, device=tokens.device)[:, None] * rows_per_head)[in_recent]
    sums = unit_key_sums(keys, recent_at, recent_slot, heads * table)
    counts = torch.bincount(recent_slot, minlength=heads * table)
    mean = sums / counts.clamp(min=1)[:, None].to(sums.dtype)
    slot_of_row = (first_slot + coordinates).expand(heads, rows_per_head).scatter(1, rows, slot)
    if isinstance(keys, torch.Tensor) and triton_ready(keys):  # CUDA with triton: reads 16-bit keys as they are
        from potwatch.kernels.tar_similarity_triton import tar_similarity

        per_row = tar_similarity(keys, mean, slot_of_row)[0]
    else:
        per_row = key_similarity(keys, mean, slot_of_row)
    similarity = per_row.gather(1, rows)
    score = torch.where(counts[slot] > 0, -similarity, NOVEL_SCORE)
    return score.masked_fill(in_recent, float("inf"))


def key_chunks(keys, size: int):
    """(row, start, float32 keys [r, D]) for consecutive slots of each row of `keys` [rows, N, D], at most
    `size` at a time: views of a float32 tensor (a copy of one chunk for another dtype), or the chunk
    decoded from a quantised cache (`QuantizedView`). A chunk never spans two rows."""
    rows, n, _ = keys.shape
    for row in range(rows):
        for start in range(0, n, size):
            end = min(n, start + size)
            if isinstance(keys, QuantizedView):
                yield row, start, keys.rows(row, start, end)
            else:
                yield row, start, keys[row, start:end].float()  # a no-op for a float32 cache


def select_keys(keys, index: torch.Tensor) -> torch.Tensor:
    """float32 copies [k, D] of the key rows at `index` (ascending, in the [rows * N] numbering)."""
    if isinstance(keys, QuantizedView):
        return keys.select(index)
    rows, n, dim = keys.shape
    if keys.is_contiguous():
        return torch.index_select(keys.view(rows * n, dim), 0, index).float()
    row, slot = index // n, index % n  # any other layout: one row at a time
    return torch.cat([torch.index_select(keys[r], 0, slot[row == r]).float() for r in range(rows)])


def unit_key_sums(keys, index: torch.Tensor, slot: torch.Tensor, size: int) -> torch.Tensor:
    """Sums [size, D] float32 of the unit-length key rows at `index` (ascending, in the [heads * N]
    numbering), each added into its row `slot` of the table, `TAR_CHUNK_ROWS` keys at a time, so no
    copy of all of them is ever made."""
    sums = torch.zeros(size, keys.shape[2], dtype=torch.float32, device=keys.device)
    for start in range(0, index.shape[0], TAR_CHUNK_ROWS):
        part = select_keys(keys, index[start : start + TAR_CHUNK_ROWS])
        part.div_(torch.linalg.vector_norm(part, dim=-1, keepdim=True).clamp_(min=1e-12))  # F.normalize
        sums.index_add_(0, slot[start : start + TAR_CHUNK_ROWS], part)
    return sums


def key_similarity(keys, table: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """dot(k, table[slot]) / max(|k|, 1e-12) for every key row [heads, N, D], float32 [heads, N]: what
    kernels/tar_similarity.py spells out, reading each key once. `TAR_CHUNK_ROWS` rows at a time get
    their table rows, dot products and norms while they sit in the CPU's cache."""
    heads, rows_per_head, dim = keys.shape
    dot = torch.empty(heads, rows_per_head, dtype=torch.float32, device=keys.device)
    norm = torch.empty_like(dot)
    scratch = table.new_empty(min(TAR_CHUNK_ROWS, rows_per_head), dim)  # reused: no page faults
    for row, start, part in key_chunks(keys, TAR_CHUNK_ROWS):
        end = start + part.shape[0]
        looked_up = torch.index_select(table, 0, slot[row, start:end], out=scratch[: end - start])
        torch.sum(looked_up.mul_(part), dim=-1, out=dot[row, start:end])  # not bmm: slow for 1 x D rows
        torch.linalg.vector_norm(part, dim=-1, out=norm[row, start:end])
    return dot / norm.clamp_(min=1e-12)


def patch_coordinates(row: torch.Tensor, col: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A dense id per (row, col) [H, n] and how many ids there are. Grids are small, so the id is
    simply row * width + col; the unique() fallback only guards against absurd coordinates."""
    r = row.int() - row.min()  # 32-bit arithmetic, widened once
    c = col.int() - col.min()
    coordinate = (r * (int(c.max()) + 1) + c).long()
    coordinates = int(coordinate.max()) + 1
    if coordinates > 4 * coordinate.numel() + 1024:
        _, coordinate = torch.unique(coordinate, return_inverse=True)
        coordinates = int(coordinate.max()) + 1
    return coordinate, coordinates


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
    if native.ready(score):
        return native.pick_top(score, allowed, count)
    heads, n = score.shape
    count = count.clamp(min=0, max=n)
    most = int(count.max()) if heads else 0
    if most == 0:
        return torch.zeros_like(allowed)
    key = ranking_key(score.masked_fill(~allowed, float("-inf")))
    # One top-k for every head: head h gets most - count[h] padding entries that outrank everything,
    # so its top `most` are those plus its own best count[h].
    j = torch.arange(most, device=score.device)
    padding = torch.where(j[None, :] < (most - count)[:, None], torch.iinfo(torch.int64).max - j[None, :],
                          torch.iinfo(torch.int64).min)
    chosen = torch.topk(torch.cat([key, padding], dim=1), most, dim=1, sorted=False).indices
    picked = torch.zeros(heads, n + most, dtype=torch.bool, device=score.device).scatter(1, chosen, True)
    return picked[:, :n] & allowed


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
    tokens: VisualTokens, keep: int | torch.Tensor, alpha: float, recent_ratio: float, pool_kernel: int,
    van_weight: torch.Tensor | None = None, window_share: float | None = None,
) -> torch.Tensor:
    """The InfiniPot-V ranking (Algorithm 1): the recent window and the TaR picks get +inf, everything
    else its (pooled) VaN, times `van_weight` [H, n] when given; the top `keep` of this score is the kept
    set. `keep` may differ per head ([H], per-head budgets); holes get -inf.

    The window lives inside TaR's share (`tar_share(keep, alpha)`), as in Algorithm 1, and never takes
    more than that share (`window_share` instead of alpha, when given): at a tight budget a window larger
    than its share keeps its newest tokens up to the share, and the rest of the window competes with the
    older tokens on VaN like any token (alpha=0 is then VaN alone, not "the newest frames are banned").
    alpha=1 is TaR alone."""
    valid = tokens.valid
    share = tar_share(keep, alpha if window_share is None else window_share)
    in_recent, forced = recent_tokens(tokens.frame, recent_ratio, share, valid)
    older = ~in_recent if valid is None else valid & ~in_recent
    n_tar = (tar_share(keep, alpha) - forced.sum(dim=1)).clamp(min=0)
    if alpha > 0 and bool((n_tar > 0).any()):
        tar = tar_scores(tokens, in_recent)
        forced = forced | pick_ranked(tar, older, n_tar)
    if alpha < 1:
        norms = tokens.value_norms() if van_weight is None else tokens.value_norms() * van_weight
        van = pool_per_frame(norms, tokens.frame, tokens.row, tokens.col, pool_kernel)
    else:
        van = torch.zeros(tokens.frame.shape, device=tokens.device)
    score = van.masked_fill(forced, float("inf"))
    return score if valid is None else score.masked_fill(~valid, float("-inf"))
