"""Captures the language model's queries for the tokens of one vision block, with forward hooks that
exist only while that block runs, for policies that ask for them (`needs_queries`): every other policy
pays nothing.

The hook sits on each attention module's query projection (or on its per-head query norm, Qwen3's
`q_norm`, when it has one: that is the last step before RoPE). RoPE is then applied at the block's own
position ids with the same rotation the cache uses to move keys (`shift_rotary_`), so the queries meet
the cached keys, which are stored after RoPE, exactly as in the model's attention. The query heads of
each KV group are averaged first (rotation is linear and the same for every head, so averaging before
rotating equals rotating before averaging).

The adapter is shared by every session on a model, and sessions may run in other threads: a hook
ignores forwards that run on any thread but the one that opened the capture."""

from __future__ import annotations

import threading

import torch

from potwatch.compression.query_stats import QueryStats, sample_offsets
from potwatch.kernels.rope_shift import shift_rotary_


class QueryCapture:
    """Use as `with QueryCapture(adapter, block_tokens) as capture:`; call `capture.piece(offset, pos)`
    before each forward over a piece of the block, and read `capture.stats()` afterwards."""

    def __init__(self, adapter, block_tokens: int):
        self.modules = adapter.attention_modules()
        self.inv_freq, self.section = adapter.rotary_frequencies()
        geometry = adapter.geometry()
        self.kv_heads, self.head_dim = geometry.kv_heads, geometry.head_dim
        self.block_tokens = block_tokens
        self.offsets = sample_offsets(block_tokens)
        layers = len(self.modules)
        self._sum: list[torch.Tensor | None] = [None] * layers
        self._sumsq: list[torch.Tensor | None] = [None] * layers
        self._samples: list[torch.Tensor | None] = [None] * layers
        self._count = [0] * layers
        self._handles = []
        self._thread = None
        self._offset = 0
        self._pos = None

    def __enter__(self) -> "QueryCapture":
        self._thread = threading.get_ident()
        for layer, attention in enumerate(self.modules):
            norm = getattr(attention, "q_norm", None)
            target = attention.q_proj if norm is None else norm
            self._handles.append(target.register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def piece(self, offset: int, pos: torch.Tensor) -> None:
        """The next forward covers block tokens [offset, offset + n) at position ids `pos` [rows, n]."""
        self._offset, self._pos = offset, pos

    def _hook(self, layer: int):
        def record(module, args, output) -> None:
            if threading.get_ident() != self._thread:
                return
            self._record(layer, output)

        return record

    def _record(self, layer: int, output: torch.Tensor) -> None:
        n = output.shape[1]  # [1, n, heads * head_dim] or [1, n, heads, head_dim]
        query = output.detach()[0].reshape(n, -1, self.head_dim).float()
        grouped = query.view(n, self.kv_heads, -1, self.head_dim).mean(dim=2).transpose(0, 1)  # [kv, n, d]
        pos = self._pos.to(grouped.device).unsqueeze(1).expand(-1, self.kv_heads, n)
        shift_rotary_(grouped, pos, self.inv_freq, self.section)  # the mean made it a tensor of its own
        rotated = grouped
        if self._sum[layer] is None:
            self._sum[layer] = rotated.new_zeros(self.kv_heads, self.head_dim)
            self._sumsq[layer] = rotated.new_zeros(self.kv_heads, self.head_dim)
            self._samples[layer] = rotated.new_zeros(self.kv_heads, len(self.offsets), self.head_dim)
        self._sum[layer] += rotated.sum(dim=1)
        self._sumsq[layer] += rotated.square().sum(dim=1)
        self._count[layer] += n
        inside = (self.offsets >= self._offset) & (self.offsets < self._offset + n)
        if bool(inside.any()):
            local = (self.offsets[inside] - self._offset).to(rotated.device)
            self._samples[layer][:, inside.to(rotated.device)] = rotated[:, local]

    def stats(self) -> QueryStats | None:
        """The block's query statistics in row layout [layers * kv_heads, ...]; None if no forward ran."""
        if any(count == 0 for count in self._count):
            return None
        count = torch.tensor(self._count, dtype=torch.float32, device=self._sum[0].device)[:, None, None]
        mean = torch.stack(self._sum) / count
        var = (torch.stack(self._sumsq) / count - mean.square()).clamp(min=0)
        return QueryStats(
            mean=mean.flatten(0, 1),
            var=var.flatten(0, 1),
            samples=torch.stack(self._samples).flatten(0, 1),
            offsets=self.offsets.clone(),
            block_tokens=self.block_tokens,
        )
