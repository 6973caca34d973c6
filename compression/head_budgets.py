"""Per-head budgets (the idea of AdaKV and SurfaceLogicKV): how much each (layer, KV head) looks at the
video, how many visual tokens each row then keeps, and the dense layout that holds rows of different
lengths.

The storage stays one dense block [layers, heads, capacity, head_dim] with one length: a row that keeps
fewer tokens than the longest row is padded with holes, slots whose count is 0, which the count-aware
attention masks (log 0 = -inf). Holes take bytes like any slot, so the cache holds fewer real tokens
than its length says; that is the price of the layout (see `pad_with_holes`)."""

from __future__ import annotations

import math

import torch

from potwatch.compression.capped_cache import indices_where
from potwatch.compression.query_stats import QueryStats

ATTENTION_CHUNK_BYTES = 16 << 20  # float32 attention weights [rows, samples, tokens] formed at once


def memory_shares(keys: torch.Tensor, length: int, queries: QueryStats, visual: torch.Tensor,
                  counts: torch.Tensor | None) -> torch.Tensor:
    """Share [rows] of each row's attention that goes to the visual tokens held before the block (the
    video memory a budget pays for), from the block's sampled queries (post-RoPE, GQA groups averaged)
    attending causally over the cache as the model does, slot counts included (holes get nothing).
    Attention to the block itself and to text (prompt, sinks, dialogue) is the rest: a head that
    looks only at its own frame or at the prompt barely needs old frames."""
    rows, _, dim = keys.shape
    samples = queries.samples.to(keys.device, torch.float32)
    block_start = length - queries.block_tokens
    position = torch.arange(length, device=keys.device)
    visible = position[None, :] <= (block_start + queries.offsets.to(keys.device))[:, None]  # [S, length]
    memory = visual[:, :length] & (position < block_start)  # [rows, length]
    bias = None if counts is None else counts[:, :length].float().log()
    shares = torch.empty(rows, dtype=torch.float32, device=keys.device)
    group = max(1, ATTENTION_CHUNK_BYTES // (4 * samples.shape[1] * max(length, 1) * 2))
    for first in range(0, rows, group):
        last = min(rows, first + group)
        logits = torch.bmm(samples[first:last], keys[first:last, :length].float().transpose(1, 2)) / math.sqrt(dim)
        if bias is not None:
            logits += bias[first:last, None, :]
        weights = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)
        shares[first:last] = (weights * memory[first:last, None, :]).sum(dim=-1).mean(dim=1)
    return shares


def allocate(share: torch.Tensor, total: int, floor: int, upper: torch.Tensor) -> torch.Tensor:
    """Budgets [layers, heads] (long) from shares [layers, heads]: every head gets min(floor, upper); the
    rest of each layer's `total` goes out in proportion to the shares, no head above its `upper`
    (what it holds, and what its row may physically keep), what a full head cannot take going to the
    others. Each layer's budgets sum to min(total, sum of upper). All zero shares count as equal."""
    layers, heads = share.shape
    upper = upper.long()
    budget = upper.clamp(max=floor)
    remaining = upper.sum(dim=1).clamp(max=total) - budget.sum(dim=1)
    weight = share.float().clamp(min=0)
    weight = torch.where(weight.sum(dim=1, keepdim=True) > 0, weight, torch.ones_like(weight))
    for _ in range(heads):  # each round fills at least one head or hands out the whole remainder
        room = upper - budget
        open_weight = weight * (room > 0)
        empty = open_weight.sum(dim=1, keepdim=True) == 0
        open_weight = torch.where(empty, (room > 0).float(), open_weight)
        wanted = torch.floor(remaining[:, None] * open_weight / open_weight.sum(dim=1, keepdim=True).clamp(min=1e-30))
        added = torch.minimum(wanted.long(), room)
        budget += added
        remaining -= added.sum(dim=1)
        if not bool((remaining > 0).any()) or not bool((added > 0).any()):
            break
    while bool((remaining > 0).any()):  # the rounding leftovers: one each to the open heads of most share
        room = upper - budget
        rank = torch.argsort(torch.argsort(-(weight + 1e-6) * (room > 0), dim=1, stable=True), dim=1)
        gets = (room > 0) & (rank < remaining[:, None])
        budget += gets.long()
        remaining -= gets.sum(dim=1)
    return budget


def pad_with_holes(keep: torch.Tensor, evictable: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From a keep mask [rows, n] whose rows may keep different counts, the dense rows to keep [rows, m]
    (m = the most any row keeps) and, among them, the holes [rows, m]: each shorter row keeps m - its
    count of its earliest evictable slots that are not kept (dropped tokens or old holes), which become
    holes. `evictable` [rows, n] marks the visual tokens and holes; every row has the same number of
    them, so a row always has enough."""
    counts = keep.sum(dim=1)
    missing = counts.max() - counts
    spare = evictable & ~keep
    pad = spare & (spare.long().cumsum(dim=1) <= missing[:, None])
    rows = indices_where(keep | pad)
    return rows, pad.gather(1, rows)
