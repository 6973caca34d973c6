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

WORK_BYTES = 16 << 20  # float32 scratch one step of the search or the fold may use
CANDIDATES = ("patch", "all")


def merge_evicted(keys: torch.Tensor, values: torch.Tensor, counts: torch.Tensor, at: torch.Tensor,
                  chosen: torch.Tensor, coordinate: torch.Tensor, candidates: str = "patch",
                  min_similarity: float = -1.0, value_norms: torch.Tensor | None = None) -> int:
    """Fold the visual tokens not `chosen` into the chosen ones, in place.

    keys/values [R, N, D] and counts [R, N] are the cache's rows; `at` [R, n] says where the visual
    tokens lie in them, `chosen` [R, m] which of those stay (indices into `at`), `coordinate` [R, n] each
    visual token's patch id. A token whose best cosine is below `min_similarity` (or that has no
    candidate) is dropped as in plain eviction. `value_norms` [R, N], the cache's stored |v| when it keeps
    them, are taken again for the slots whose value changed. Returns how many tokens were merged."""
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
    _fold(keys, values, counts, kept_at, evicted_at, target, weight, value_norms)
    return int((weight > 0).sum())


def _unit(keys: torch.Tensor, rows: slice, at: torch.Tensor) -> torch.Tensor:
    """Unit-length float32 keys [r, k, D] of rows `rows` at `at` [r, k] (whole key rows copied at once,
    not channel by channel)."""
    part = keys[rows]
    count, length, dim = part.shape
    flat_at = (at + torch.arange(count, device=at.device)[:, None] * length).view(-1)
    picked = torch.index_select(part.reshape(-1, dim), 0, flat_at).float()
    picked.div_(torch.linalg.vector_norm(picked, dim=-1, keepdim=True).clamp_(min=1e-12))  # F.normalize
    return picked.view(count, -1, dim)


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
    with none gets similarity -inf. Per row, kept and evicted tokens are laid out in dense tables by
    coordinate ([coordinates, most per coordinate], padded), so one batched product per coordinate
    compares each evicted token with its candidates, and no key is copied once per candidate pair.
    The tables are gathered straight from the cache's key rows into buffers reused by every group of
    rows (a padding slot reads the row's first key of that table and is masked, or never read back)."""
    rows, m = kept_at.shape
    length, dim = keys.shape[1], keys.shape[2]
    coordinates = int(torch.maximum(kept_coordinate.max(), evicted_coordinate.max())) + 1
    kept_slot, kept_width = _table_slots(kept_coordinate.long(), coordinates)
    evicted_slot, evicted_width = _table_slots(evicted_coordinate.long(), coordinates)
    kept_size, evicted_size = coordinates * kept_width, coordinates * evicted_width
    base = torch.arange(rows, device=keys.device)[:, None] * length  # each row's first slot in the flat keys
    kept_source = _table_sources(kept_at + base, kept_slot, kept_size)
    evicted_source = _table_sources(evicted_at + base, evicted_slot, evicted_size)
    present = torch.zeros(rows, kept_size, dtype=torch.bool, device=keys.device).scatter_(1, kept_slot, True)
    kept_index = torch.zeros(rows, kept_size, dtype=torch.long, device=keys.device)
    kept_index.scatter_(1, kept_slot, torch.arange(m, device=keys.device).expand(rows, m))
    target = torch.zeros_like(evicted_at)
    best = torch.full(evicted_at.shape, float("-inf"), dtype=torch.float32, device=keys.device)
    per_row = 4 * coordinates * (kept_width + evicted_width) * (dim + evicted_width)
    group = min(rows, max(1, WORK_BYTES // per_row))
    flat_keys = keys.view(-1, dim)
    kept_table = torch.empty(group * kept_size, dim, dtype=torch.float32, device=keys.device)
    evicted_table = torch.empty(group * evicted_size, dim, dtype=torch.float32, device=keys.device)
    products = torch.empty(group * coordinates, evicted_width, kept_width, dtype=torch.float32, device=keys.device)
    for first in range(0, rows, group):
        span = slice(first, min(rows, first + group))
        g = span.stop - span.start
        kept = _unit_rows(flat_keys, kept_source[span].reshape(-1), kept_table[: g * kept_size])
        mine = _unit_rows(flat_keys, evicted_source[span].reshape(-1), evicted_table[: g * evicted_size])
        cosine = torch.bmm(mine.view(g * coordinates, evicted_width, dim),
                           kept.view(g * coordinates, kept_width, dim).transpose(1, 2), out=products[: g * coordinates])
        cosine = cosine.view(g, coordinates, evicted_width, kept_width)
        cosine.masked_fill_(~present[span].view(g, coordinates, 1, kept_width), float("-inf"))
        found = cosine.max(dim=3)  # [g, coordinates, evicted_width]
        at_slot = evicted_slot[span]
        best[span] = found.values.view(g, -1).gather(1, at_slot)
        column = found.indices.view(g, -1).gather(1, at_slot)  # position in the kept table's coordinate run
        table_slot = (at_slot // evicted_width) * kept_width + column
        target[span] = kept_index[span].gather(1, table_slot)
    return target, best


def _table_sources(flat_at: torch.Tensor, slot: torch.Tensor, size: int) -> torch.Tensor:
    """For each slot of a [rows, size] table, the flat key row it holds: the token at `slot` for the
    tokens `flat_at` [rows, k]; padding slots repeat the row's first token (masked or never read)."""
    return flat_at[:, :1].expand(flat_at.shape[0], size).clone().scatter_(1, slot, flat_at)


def _unit_rows(flat_keys: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Unit-length float32 copies of the key rows at `index` into `out` [len(index), D]."""
    if flat_keys.dtype == out.dtype:
        torch.index_select(flat_keys, 0, index, out=out)
    else:
        out.copy_(torch.index_select(flat_keys, 0, index))
    return out.div_(torch.linalg.vector_norm(out, dim=-1, keepdim=True).clamp_(min=1e-12))  # F.normalize


def _table_slots(coordinate: torch.Tensor, coordinates: int) -> tuple[torch.Tensor, int]:
    """Each token's slot in a [coordinates, width] table of its row (coordinate, then order of arrival),
    and the width: the most tokens any row holds at one coordinate."""
    rows, n = coordinate.shape
    order = torch.sort(coordinate * n + torch.arange(n, device=coordinate.device), dim=1).indices
    sorted_coordinate = coordinate.gather(1, order)
    first = torch.searchsorted(sorted_coordinate.contiguous(), sorted_coordinate.contiguous(), side="left")
    rank = torch.arange(n, device=coordinate.device) - first  # place inside its coordinate's run
    width = int(rank.max()) + 1 if n else 1
    slot_sorted = sorted_coordinate * width + rank
    return torch.empty_like(order).scatter_(1, order, slot_sorted), width


def _fold(keys, values, counts, kept_at, evicted_at, target, weight, value_norms=None) -> None:
    """slot <- (count * slot + sum of weight * merged) / (count + sum of weight), for K and V; counts add.
    Only the slots that receive a token are read and written, so the pass costs O(merged tokens) and
    the other slots keep their bits."""
    rows, length, dim = keys.shape
    e = evicted_at.shape[1]
    flat_keys, flat_values, flat_counts = keys.view(-1, dim), values.view(-1, dim), counts.view(-1)
    group = max(1, WORK_BYTES // (4 * max(e, 1) * dim * 3))
    for first in range(0, rows, group):
        span = slice(first, min(rows, first + group))
        w = weight[span].float()
        merged = w > 0
        if not bool(merged.any()):
            continue
        base = torch.arange(span.start, span.stop, device=keys.device)[:, None] * length
        source = (base + evicted_at[span])[merged]
        slots, into = torch.unique((base + kept_at[span].gather(1, target[span]))[merged], return_inverse=True)
        w = w[merged]
        total = flat_counts[slots].float()
        added = torch.zeros_like(total).index_add_(0, into, w)
        for flat in (flat_keys, flat_values):  # whole rows by index_select / index_copy_, not channel by channel
            summed = (flat.index_select(0, slots).float() * total[:, None])
            summed.index_add_(0, into, flat.index_select(0, source).float() * w[:, None])
            flat.index_copy_(0, slots, (summed / (total + added)[:, None]).to(flat.dtype))
        flat_counts[slots] = (total + added).to(flat_counts.dtype)
        if value_norms is not None:
            norms = torch.linalg.vector_norm(flat_values.index_select(0, slots), dim=-1, dtype=value_norms.dtype)
            value_norms.view(-1)[slots] = norms
