"""TaR's per-row similarity, the plain way: the test oracle for the fused Triton kernel.

`tar_scores` (compression/policies/selection.py) needs, for every key row, the dot product with the
mean-unit-key table row of its patch coordinate, divided by the key's norm. This spells that out
with a gather of the table; the CPU path in `tar_scores` computes the same in cache-sized groups."""

from __future__ import annotations

import torch

NORM_FLOOR = 1e-12  # as torch.nn.functional.normalize: a zero key has similarity 0, not NaN


def tar_similarity_reference(keys: torch.Tensor, table: torch.Tensor, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dot(k, table[slot]) / max(|k|, 1e-12), |k|) per row, both float32 [heads, N].

    keys [heads, N, D] any float dtype; table [T, D] float32; slot [heads, N] int64 rows of `table`."""
    k = keys.float()
    looked_up = table.float()[slot]  # [heads, N, D]
    dot = (k * looked_up).sum(dim=-1)
    norm = torch.linalg.vector_norm(k, dim=-1)
    return dot / norm.clamp(min=NORM_FLOOR), norm
