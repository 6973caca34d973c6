"""A transformers `Cache` whose memory is allocated once, from a byte cap, and never grows.

All layers' K/V live in one preallocated block `[layers, kv_heads, capacity, head_dim]` (and their
metadata in blocks shaped alike); each layer works on its slice `[1, kv_heads, capacity, head_dim]`.
New tokens are written in place; `update` returns views of the filled prefix, which transformers
attends over like any other cache. Compaction moves the kept tokens of every (layer, head) row to the
front of the same block in one batched pass, so the storage addresses never change and the cost of
a pass does not grow with the number of layers' Python calls."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from potwatch.compression.budget import KVGeometry
from potwatch.compression.quantized_kv import DEQUANT_CHUNK_TOKENS, QUANTIZED_FIELDS, QuantizedRows, allocate_quantized
from potwatch.compression.token_meta import META_FIELDS, POS_DTYPE, TokenKind, TokenMeta
from potwatch.kernels import native
from potwatch.kernels.rope_shift import move_rotary_
from potwatch.kernels.triton_dispatch import triton_ready


# Bytes of scratch a compaction moves rows through: small enough to stay in the CPU's cache, whatever
# the size of the KV cache, so compaction allocates next to nothing.
COMPACT_SCRATCH_BYTES = 1 << 20
COMPACT_MAX_CHUNKS = 64


class CacheOverflowError(RuntimeError):
    """More tokens were written than the capacity holds: the monitor failed to make room (a bug)."""


def allocate_storage(geometry: KVGeometry, layers: int, capacity: int, device: torch.device | str) -> dict:
    """Zero-filled K, V, metadata and positions for `layers` layers: `keys`/`values` [layers, heads,
    capacity, head_dim], each metadata field [layers, heads, capacity], `pos` [layers, rows, heads, capacity],
    and each per-token state the geometry declares [layers, heads, capacity] under its name, filled with
    its initial value."""
    heads = geometry.kv_heads
    shape = (layers, heads, capacity, geometry.head_dim)
    if geometry.quantized:  # codes, scales and key means instead (compression/quantized_kv.py)
        storage = allocate_quantized(geometry, layers, capacity, device)
    else:
        storage = {
            "keys": torch.zeros(shape, dtype=geometry.dtype, device=device),
            "values": torch.zeros(shape, dtype=geometry.dtype, device=device),
        }
    storage["pos"] = torch.zeros((layers, geometry.pos_rows, heads, capacity), dtype=POS_DTYPE, device=device)
    for name, dtype in META_FIELDS:
        storage[name] = torch.full((layers, heads, capacity), -1, dtype=dtype, device=device)
    for state in geometry.token_state:
        storage[state.name] = torch.full((layers, heads, capacity), state.initial, dtype=state.dtype, device=device)
    return storage


class CappedLayer(CacheLayerMixin):
    """One decoder layer's slice of the capped cache: views into the shared storage at `index`."""

    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, storage: dict, index: int, growable: bool = False, geometry: KVGeometry | None = None):
        super().__init__()
        self.growable = growable
        self.token_state = geometry.token_state if geometry is not None else ()
        # Either plain K/V buffers [1, heads, capacity, head_dim], or quantised rows (`--kv-bits 8|4`).
        self.quantized = None
        if "key_codes" in storage:
            self.quantized = QuantizedRows(storage, index, geometry.kv_bits, geometry.quant_group)
            self.key_buffer, self.value_buffer = self.quantized.work_keys, self.quantized.work_values
        else:
            self.key_buffer = storage["keys"][index : index + 1]
            self.value_buffer = storage["values"][index : index + 1]
        self.meta = {name: storage[name][index] for name, _ in META_FIELDS}  # [heads, capacity]
        self.pos = storage["pos"][index]  # [rows, heads, capacity]
        self.state = {state.name: storage[state.name][index] for state in self.token_state}  # each [heads, capacity]
        self.incoming: TokenMeta | None = None  # metadata of the tokens the next update writes (`CappedKVCache.arriving`)
        self.capacity = self.key_buffer.shape[2]
        self.device = self.key_buffer.device
        self.length = 0
        self.is_initialized = True
        self._refresh_views()

    def _refresh_views(self) -> None:
        """`keys`/`values`: the held prefix (for a quantised layer, the shared workspace: see `dequantized`)."""
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def dequantized(self, values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """K and V of the held tokens at the model's dtype, [1, heads, length, head_dim]. For a quantised
        layer they are decoded into the workspace the layers share: use them before the next layer reads.
        `values=False` decodes only the keys of a quantised layer (V comes back None)."""
        if self.quantized is None:
            return self.keys, self.values
        return self.quantized.read(self.length, values)

    # --- the transformers layer interface -------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the buffers exist from the start."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write the new K/V in place, with their metadata when the cache was told it (`arriving`) and
        each per-token state's arrival value; return views of everything held. A state read by attention
        (`TokenState.attention_kwarg`, the slot counts) goes to the attention function with all held
        rows: transformers' decoder attention passes its own kwargs dict here (`kwargs=kwargs`) and then
        unpacks that same dict into the attention call, so an entry added here reaches it."""
        n = key_states.shape[-2]
        end = self.length + n
        if end > self.capacity:
            if not self.growable:
                raise CacheOverflowError(f"writing {n} tokens into a cache holding {self.length}/{self.capacity}")
            self._grow(max(end, 2 * self.capacity))
        meta, self.incoming = self.incoming, None
        if meta is not None and len(meta) != n:
            raise ValueError(f"the cache was told {len(meta)} tokens' metadata but {n} arrived")
        start = self.length
        if self.quantized is not None:
            self.quantized.write(start, key_states, value_states)
            self.length = end
            self.keys, self.values = self.quantized.read(end)
        else:
            self.key_buffer[:, :, start:end].copy_(key_states)
            self.value_buffer[:, :, start:end].copy_(value_states)
            self.length = end
            self._refresh_views()
        if meta is not None:
            self.write_meta(start, meta)
        self._state_on_arrival(start, end, kwargs.get("kwargs"))
        return self.keys, self.values

    def _state_on_arrival(self, start: int, end: int, attention_kwargs) -> None:
        """Each declared state's value for the tokens in slots [start, end): its initial value, or what it
        takes from the stored K/V (for a quantised layer the decoded ones, as a policy reading them would
        see) while they are still in the CPU's cache, so a policy never reads V again for it."""
        for state in self.token_state:
            rows = self.state[state.name]
            if state.on_arrival is None:
                rows[:, start:end] = state.initial
            else:
                rows[:, start:end] = state.on_arrival(self.key_buffer[0, :, start:end], self.value_buffer[0, :, start:end])
            if state.attention_kwarg is not None and isinstance(attention_kwargs, dict):
                attention_kwargs[state.attention_kwarg] = rows[:, :end]

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
        """Forget every token from `length` on (used to roll back a failed forward), and any metadata
        told for tokens that never arrived."""
        self.incoming = None
        self.length = min(self.length, length)
        self._refresh_views()

    def write_meta(self, start: int, meta: TokenMeta) -> None:
        """Record metadata for tokens [start, start + len(meta)), the same for every head."""
        end = start + len(meta)
        for name, _ in META_FIELDS:
            self.meta[name][:, start:end] = getattr(meta, name).to(self.device).unsqueeze(0)
        self.pos[:, :, start:end] = meta.pos.to(self.device).unsqueeze(1)

    def move_positions(self, new_pos: torch.Tensor, inv_freq: torch.Tensor, section: torch.Tensor) -> None:
        """Give the held tokens new position ids [rows, heads, length], rotating their keys to match.

        The keys turn in place, in chunks (`move_rotary_`), so the move needs no copy of the layer."""
        n = self.length
        keys = self.dequantized()[0][0]
        move_rotary_(keys, self.pos[:, :, :n], new_pos, inv_freq, section)
        if self.quantized is not None:  # quantised keys are decoded, rotated and quantised again, per token
            for start in range(0, n, DEQUANT_CHUNK_TOKENS):
                self.quantized.write_keys(start, keys[None, :, start : start + DEQUANT_CHUNK_TOKENS])
        self.pos[:, :, :n].copy_(new_pos)

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
        self.state = {state.name: bigger(self.state[state.name], 1, state.initial) for state in self.token_state}
        self.capacity = capacity

    @property
    def nbytes(self) -> int:
        tensors = [self.key_buffer, self.value_buffer, self.pos, *self.meta.values()]
        tensors += list(self.state.values())
        return sum(t.numel() * t.element_size() for t in tensors)


def indices_where(mask: torch.Tensor) -> torch.Tensor:
    """Column indices [rows, count] where `mask` [rows, n] holds; every row must hold the same count."""
    if mask.shape[0] and native.ready(mask):
        return native.mask_positions(mask, int(mask[0].sum()))
    return mask.nonzero()[:, 1].view(mask.shape[0], -1)


def move_rows(rows: torch.Tensor | list[torch.Tensor], keep: torch.Tensor) -> None:
    """rows[b, j] = rows[b, keep[b, j]] for every row b of `rows` [B, capacity, D] (contiguous) and j < m;
    `rows` may be a list of such tensors with the same B and capacity (K and V, say), moved together.

    `keep` [B, m] is ascending, so keep[b, j] >= j: moving the kept rows front to back in chunks
    never overwrites a row a later chunk still has to read. On the CPU a C loop moves each run of kept
    rows with one memmove (kernels/cpu_pass.c); without a C compiler each chunk is read into a small scratch
    with one index_select over all rows, then written into place; a leading run that already sits
    where it belongs in every row is skipped (dropping one old turn leaves everything before it).
    The fields share the chunks' indices and one scratch, which is allocated once per call."""
    fields = [rows] if isinstance(rows, torch.Tensor) else list(rows)
    if triton_ready(fields[0]):  # CUDA with triton: one kernel, no scratch beyond a chunk of registers
        from potwatch.kernels.move_rows_triton import move_rows as move_rows_triton

        for field in fields:
            move_rows_triton(field, keep)
        return
    if all(native.moves_rows(field) for field in fields):  # on the CPU: one C loop, each kept row moved once
        for field in fields:
            native.move_rows(field, keep)
        return
    batch, capacity = fields[0].shape[:2]
    m = keep.shape[1]
    in_place = (keep == torch.arange(m, device=keep.device)).all(dim=0)
    start = int(in_place.long().cumprod(dim=0).sum())
    if start >= m:
        return
    row_bytes = max(field.shape[2] * field.element_size() for field in fields)
    # Scratch-sized chunks, but at most COMPACT_MAX_CHUNKS of them: every op is a chance to wait on a
    # busy core, so a huge cache moves in fewer, larger chunks.
    chunk = max(1, COMPACT_SCRATCH_BYTES // (batch * row_bytes), -(-(m - start) // COMPACT_MAX_CHUNKS))
    first_row = torch.arange(batch, device=keep.device)[:, None] * capacity
    scratch = torch.empty(batch * min(chunk, m - start) * row_bytes, dtype=torch.uint8, device=keep.device)
    for begin in range(start, m, chunk):
        end = min(m, begin + chunk)
        index = (keep[:, begin:end] + first_row).view(-1)
        for field in fields:
            width = field.shape[2]
            moved = scratch[: index.shape[0] * width * field.element_size()].view(field.dtype).view(-1, width)
            torch.index_select(field.view(batch * capacity, width), 0, index, out=moved)
            field[:, begin:end].copy_(moved.view(batch, end - begin, width))


class CappedKVCache(Cache):
    """The whole capped cache: one `CappedLayer` per decoder layer, all holding the same token count.

    `capacity=None` makes an uncapped cache that grows (only for comparisons against the full cache)."""

    def __init__(self, geometry: KVGeometry, capacity: int | None, device: torch.device | str = "cpu"):
        if capacity is None:  # each layer grows on its own
            if geometry.quantized:
                raise ValueError("a quantised cache needs a capacity: it cannot grow")
            layers = [CappedLayer(allocate_storage(geometry, 1, 1024, device), 0, growable=True, geometry=geometry)
                      for _ in range(geometry.layers)]
            self.storage = None
        else:
            self.storage = allocate_storage(geometry, geometry.layers, capacity, device)
            layers = [CappedLayer(self.storage, index, geometry=geometry) for index in range(geometry.layers)]
        super().__init__(layers=layers)
        self.geometry = geometry
        self.capped = capacity is not None

    @property
    def capacity(self) -> int:
        return self.layers[0].capacity

    @property
    def length(self) -> int:
        return self.layers[0].length

    @property
    def nbytes(self) -> int:
        """Bytes allocated for K, V and metadata of every layer (constant for a capped cache)."""
        if self.storage is not None:
            return sum(t.numel() * t.element_size() for t in self.storage.values())
        return sum(layer.nbytes for layer in self.layers)

    @property
    def quantized(self) -> bool:
        return self.geometry.quantized

    @property
    def used_bytes(self) -> int:
        """Bytes taken by the tokens held now."""
        return self.geometry.bytes_for(self.length)

    def free(self) -> int:
        return self.capacity - self.length if self.capped else 1 << 62

    def rows(self, name: str) -> torch.Tensor:
        """Every (layer, head) row of one stored field at once, as [layers * heads, capacity, ...]: `keys`,
        `values`, a metadata name or a per-token state's. Capped caches only (their storage is one block)."""
        tensor = self.storage[name]
        return tensor.view(-1, *tensor.shape[2:])

    def state_rows(self, name: str) -> torch.Tensor | None:
        """One declared per-token state's rows [layers * heads, capacity]; None when the cache keeps no
        such state (or is uncapped)."""
        return self.rows(name) if self.capped and self.geometry.keeps(name) else None

    def all_state_rows(self) -> dict[str, torch.Tensor]:
        """Every declared per-token state's rows, by name (empty for an uncapped cache)."""
        return {state.name: self.rows(state.name) for state in self.geometry.token_state} if self.capped else {}

    def compact(self, keep: torch.Tensor) -> None:
        """Keep, in every (layer, head) row, the tokens at `keep` [layers * heads, m] (ascending), in one pass."""
        m, n = keep.shape[1], self.length
        if self.quantized:  # every head of a layer keeps the same tokens, so each slot's key mean moves whole
            by_layer = keep.view(self.geometry.layers, self.geometry.kv_heads, m)
            if not bool((by_layer == by_layer[:, :1]).all()):
                raise ValueError("a quantised cache keeps the same tokens in every head of a layer")
            move_rows([self.rows(name) for name in QUANTIZED_FIELDS], keep)
            move_rows(self.storage["key_mean"], by_layer[:, 0].contiguous())
        else:
            move_rows([self.rows("keys"), self.rows("values")], keep)
        names = [name for name, _ in META_FIELDS] + [state.name for state in self.geometry.token_state]
        pos = self.storage["pos"]  # [layers, rows, heads, capacity]
        layers, pos_rows, heads, capacity = pos.shape
        if native.ready(keep):  # in place, as K and V; each position row moves as its head's row
            for name in names:
                native.move_rows(self.rows(name).unsqueeze(-1), keep)
            head_row = torch.arange(layers * heads).view(layers, 1, heads).expand(layers, pos_rows, heads)
            native.move_rows(pos.view(-1, capacity, 1), keep, keep_row=head_row.reshape(-1))
        else:
            for name in names:
                meta = self.rows(name)
                meta[:, :m] = torch.gather(meta[:, :n], 1, keep)
            index = keep.view(layers, 1, heads, m).expand(layers, pos_rows, heads, m)
            pos[..., :m] = torch.gather(pos[..., :n], 3, index)
        for layer in self.layers:
            layer.length = m
            layer._refresh_views()

    def arriving(self, meta: TokenMeta) -> None:
        """The metadata of the tokens the next forward writes: each layer's `update` stores it with their
        K/V, so tokens never sit in the cache without it."""
        for layer in self.layers:
            layer.incoming = meta

    def write_meta(self, start: int, meta: TokenMeta) -> None:
        """Record metadata for tokens already written at [start, start + len(meta)) (for callers that write
        K/V by hand; a forward's tokens get theirs through `arriving`)."""
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
            # Holes take ids like text: in a 1-D layout every head's text then keeps the same ids.
            new = layout(meta["kind"][:, :n], meta["frame"][:, :n], meta["row"][:, :n], meta["col"][:, :n])
            layer.move_positions(new, inv_freq, section)
            largest = max(largest, int(new.max()))
        return largest

    def kind_counts(self) -> dict[TokenKind, int]:
        """How many tokens of each kind a head holds: system and dialogue are the same in every head;
        visual tokens and holes too, except under per-head budgets, where this is their mean over all
        (layer, head) rows, rounded down."""
        kinds = self.rows("kind")[:, : self.length] if self.capped else self.layers[0].meta["kind"][:, : self.length]
        totals = torch.bincount(kinds.reshape(-1), minlength=len(TokenKind)).tolist()  # over every row at once
        return {kind: totals[kind] // kinds.shape[0] for kind in TokenKind}

    def mark_holes(self, holes: torch.Tensor) -> None:
        """Make the slots `holes` [layers * heads, length] marks empty: kind HOLE, no frame, patch or turn,
        and each per-token state its hole value (a slot count of 0: attention then gives them no weight).
        Only for caches that keep slot counts."""
        n = holes.shape[1]
        blank = [("kind", int(TokenKind.HOLE)), ("frame", -1), ("turn", -1), ("row", -1), ("col", -1)]
        for name, value in blank + [(state.name, state.hole) for state in self.geometry.token_state]:
            self.rows(name)[:, :n].masked_fill_(holes, value)

    def frames_held(self) -> torch.Tensor:
        """Distinct frame indices with at least one token left in any layer or head, ascending: a count per
        frame over every row (one block for a capped cache, each layer's for an uncapped one), with text and
        holes in bin 0."""
        if self.capped:
            n = self.length
            rows = [(self.rows("kind")[:, :n], self.rows("frame")[:, :n])]
        else:
            rows = [(layer.meta["kind"][:, : layer.length], layer.meta["frame"][:, : layer.length])
                    for layer in self.layers]
        frame = torch.cat([torch.where(kind == TokenKind.VISION, frame, -1).view(-1) for kind, frame in rows])
        return torch.bincount(frame + 1)[1:].nonzero().view(-1)

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
