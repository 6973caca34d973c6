"""A transformers `Cache` whose memory is allocated once, from a byte cap, and never grows.

Each layer owns preallocated K/V buffers `[1, kv_heads, capacity, head_dim]` and per-head metadata.
New tokens are written in place; `update` returns views of the filled prefix, which transformers
attends over like any other cache. Compaction gathers the kept tokens of each head to the front of
the same buffers, so the storage addresses never change."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from potwatch.compression.budget import KVGeometry
from potwatch.compression.token_meta import META_FIELDS, POS_DTYPE, TokenKind, TokenMeta
from potwatch.kernels.rope_shift import shift_rotary


class CacheOverflowError(RuntimeError):
    """More tokens were written than the capacity holds: the monitor failed to make room (a bug)."""


class CappedLayer(CacheLayerMixin):
    """One decoder layer's slice of the capped cache."""

    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, geometry: KVGeometry, capacity: int, device: torch.device | str, growable: bool = False):
        super().__init__()
        self.capacity = capacity
        self.growable = growable
        self.device = torch.device(device)
        shape = (1, geometry.kv_heads, capacity, geometry.head_dim)
        self.key_buffer = torch.zeros(shape, dtype=geometry.dtype, device=self.device)
        self.value_buffer = torch.zeros(shape, dtype=geometry.dtype, device=self.device)
        self.meta = {
            name: torch.full((geometry.kv_heads, capacity), -1, dtype=dtype, device=self.device)
            for name, dtype in META_FIELDS
        }
        self.pos = torch.zeros((geometry.pos_rows, geometry.kv_heads, capacity), dtype=POS_DTYPE, device=self.device)
        self.length = 0
        self.is_initialized = True
        self._refresh_views()

    def _refresh_views(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    # --- the transformers layer interface -------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the buffers exist from the start."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[-2]
        end = self.length + n
        if end > self.capacity:
            if not self.growable:
                raise CacheOverflowError(f"writing {n} tokens into a cache holding {self.length}/{self.capacity}")
            self._grow(max(end, 2 * self.capacity))
        self.key_buffer[:, :, self.length : end].copy_(key_states)
        self.value_buffer[:, :, self.length : end].copy_(value_states)
        self.length = end
        self._refresh_views()
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1 if self.growable else self.capacity

    def reset(self) -> None:
        self.truncate(0)

    # --- potwatch's own operations --------------------------------------------------------------
    def truncate(self, length: int) -> None:
        """Forget every token from `length` on (used to roll back a failed forward)."""
        self.length = min(self.length, length)
        self._refresh_views()

    def write_meta(self, start: int, meta: TokenMeta) -> None:
        """Record metadata for tokens [start, start + len(meta)), the same for every head."""
        end = start + len(meta)
        for name, _ in META_FIELDS:
            self.meta[name][:, start:end] = getattr(meta, name).to(self.device).unsqueeze(0)
        self.pos[:, :, start:end] = meta.pos.to(self.device).unsqueeze(1)

    def compact(self, keep: torch.Tensor) -> None:
        """Keep, per head, the tokens at `keep` [heads, m] (ascending), moved to the buffer front."""
        m = keep.shape[1]
        heads, dim = self.key_buffer.shape[1], self.key_buffer.shape[3]
        index = keep.unsqueeze(-1).expand(heads, m, dim)
        for buffer in (self.key_buffer, self.value_buffer):
            kept = torch.gather(buffer[0, :, : self.length], 1, index)
            buffer[0, :, :m].copy_(kept)
        for name in self.meta:
            self.meta[name][:, :m] = torch.gather(self.meta[name][:, : self.length], 1, keep)
        pos_index = keep.unsqueeze(0).expand(self.pos.shape[0], heads, m)
        self.pos[:, :, :m] = torch.gather(self.pos[:, :, : self.length], 2, pos_index)
        self.length = m
        self._refresh_views()

    def move_positions(self, new_pos: torch.Tensor, inv_freq: torch.Tensor, section: torch.Tensor) -> None:
        """Give the held tokens new position ids [rows, heads, length], rotating their keys to match."""
        n = self.length
        delta = new_pos - self.pos[:, :, :n].long()
        self.key_buffer[0, :, :n] = shift_rotary(self.key_buffer[0, :, :n], delta, inv_freq, section)
        self.pos[:, :, :n] = new_pos.to(self.pos.dtype)

    def indices_where(self, mask: torch.Tensor) -> torch.Tensor:
        """Buffer indices [heads, count] where `mask` [heads, length] holds; every head must have the same count."""
        heads = mask.shape[0]
        return mask.nonzero()[:, 1].view(heads, -1)

    def _grow(self, capacity: int) -> None:
        """Only for an uncapped cache (`--mem-cap none`): reallocate bigger buffers."""
        def bigger(t: torch.Tensor, dim: int, fill: int = 0) -> torch.Tensor:
            shape = list(t.shape)
            shape[dim] = capacity
            out = torch.full(shape, fill, dtype=t.dtype, device=t.device)
            out.narrow(dim, 0, t.shape[dim]).copy_(t)
            return out

        self.key_buffer = bigger(self.key_buffer, 2)
        self.value_buffer = bigger(self.value_buffer, 2)
        self.meta = {name: bigger(t, 1, -1) for name, t in self.meta.items()}
        self.pos = bigger(self.pos, 2)
        self.capacity = capacity

    @property
    def nbytes(self) -> int:
        tensors = [self.key_buffer, self.value_buffer, self.pos, *self.meta.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


class CappedKVCache(Cache):
    """The whole capped cache: one `CappedLayer` per decoder layer, all holding the same token count.

    `capacity=None` makes an uncapped cache that grows (only for comparisons against the full cache)."""

    def __init__(self, geometry: KVGeometry, capacity: int | None, device: torch.device | str = "cpu"):
        growable = capacity is None
        start = 1024 if growable else capacity
        super().__init__(layers=[CappedLayer(geometry, start, device, growable) for _ in range(geometry.layers)])
        self.geometry = geometry
        self.capped = not growable

    @property
    def capacity(self) -> int:
        return self.layers[0].capacity

    @property
    def length(self) -> int:
        return self.layers[0].length

    @property
    def nbytes(self) -> int:
        """Bytes allocated for K, V and metadata of every layer (constant for a capped cache)."""
        return sum(layer.nbytes for layer in self.layers)

    @property
    def used_bytes(self) -> int:
        """Bytes taken by the tokens held now."""
        return self.geometry.bytes_for(self.length)

    def free(self) -> int:
        return self.capacity - self.length if self.capped else 1 << 62

    def write_meta(self, start: int, meta: TokenMeta) -> None:
        for layer in self.layers:
            layer.write_meta(start, meta)

    def truncate(self, length: int) -> None:
        for layer in self.layers:
            layer.truncate(length)

    def renumber(self, layout, inv_freq: torch.Tensor, section: torch.Tensor) -> int:
        """Give each layer's held tokens the ids `layout(kind, frame, row, col)` returns (per head), rotating
        their keys to match; returns the largest id now in use (-1 when empty)."""
        largest = -1
        for layer in self.layers:
            n = layer.length
            if n == 0:
                continue
            meta = layer.meta
            new = layout(meta["kind"][:, :n], meta["frame"][:, :n], meta["row"][:, :n], meta["col"][:, :n])
            layer.move_positions(new, inv_freq, section)
            largest = max(largest, int(new.max()))
        return largest

    def kind_counts(self) -> dict[TokenKind, int]:
        """How many tokens of each kind every head holds (equal across heads and layers)."""
        kinds = self.layers[0].meta["kind"][0, : self.length]
        return {kind: int((kinds == kind).sum()) for kind in TokenKind}

    def frames_held(self) -> torch.Tensor:
        """Distinct frame indices with at least one token left in any layer or head."""
        frames = [layer.meta["frame"][:, : layer.length] for layer in self.layers]
        kinds = [layer.meta["kind"][:, : layer.length] for layer in self.layers]
        held = torch.cat([f[k == TokenKind.VISION] for f, k in zip(frames, kinds)])
        return torch.unique(held)

    def retention(self, tokens_per_frame: int) -> dict[int, float]:
        """For each frame still held: the share of its `tokens_per_frame` tokens kept, over layers and heads."""
        counts: dict[int, int] = {}
        for layer in self.layers:
            kinds = layer.meta["kind"][:, : layer.length]
            frames = layer.meta["frame"][:, : layer.length][kinds == TokenKind.VISION]
            values, n = torch.unique(frames, return_counts=True)
            for frame, count in zip(values.tolist(), n.tolist()):
                counts[frame] = counts.get(frame, 0) + count
        full = tokens_per_frame * self.geometry.layers * self.geometry.kv_heads
        return {frame: count / full for frame, count in sorted(counts.items())}
