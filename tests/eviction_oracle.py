"""The eviction oracle's parts, written for the tests and independent of the code they check.

`PositionLedger` follows a session's tokens by identity (a frame's patch, the i-th token of the system
prompt or of a turn) and checks every position id the session hands out or moves, EXACTLY: each new
token's ids by the stock layout rule (1-D: the next integer; M-RoPE: text at the largest id + 1, a
video segment from a fresh base), each re-numbering against the gap-free layout recomputed here by a
plain loop, and at the end every held token's ids against the ids it was last given.

`AnswerOracle` wraps the session's forwards that return logits (the question and each answer token):
before each, it copies the K/V the cache holds into a stock transformers `DynamicCache` (decoded here
for 8/4 bits), and after it runs the stock model over the same block with the block's position ids.
Slot counts (merged slots, per-head budgets' empty slots) become an additive 4-D mask per layer:
log(count) for each (layer, KV head) slot, -inf where the count is 0. The stock model takes one mask
for all layers, so a forward pre-hook hands each layer's attention its own."""

from __future__ import annotations

import contextlib
import math

import torch
from transformers import DynamicCache

from potwatch.compression.token_meta import TokenKind
from potwatch.kernels.kv_quant import QuantizedKV, quantize_reference, unpack_codes

# Largest |difference| allowed between the session's logits and the stock forward's, float32 on the CPU.
# A GPU run (bf16 / TF32) needs a looser value: change it here.
ORACLE_ATOL = 1e-5
# Every family, one demo each: Qwen2-VL, Qwen2.5-VL and Qwen3-VL (M-RoPE), LLaVA-OneVision and SmolVLM2 (1-D).
ORACLE_FAMILIES = ["demo", "demo-qwen2.5", "demo-qwen3", "demo-llava", "demo-smolvlm"]


# --- positions ----------------------------------------------------------------------------------
def _text_like(kind: int, row: int) -> bool:
    """Takes one id on every row: text, an empty slot, and Qwen3-VL's timestamp / vision start-end
    tokens (visual tokens of their frame, row -1, but laid out as text)."""
    return kind != TokenKind.VISION or row < 0


def compact_ids(fields: dict, rows: int, time_step: float = 1.0) -> list[tuple[int, ...]]:
    """Gap-free ids for one (layer, head) row, from its `kind`, `frame`, `row`, `col` lists in buffer order.

    1-D RoPE (`rows` 1): 0, 1, 2, ... M-RoPE (`rows` 3): a text-like token takes (c, c, c) and c += 1; a
    run of visual tokens is a video segment with base c, its k-th kept group at c + floor(k * step) and
    rows / columns at c + row, c + col; c then goes one past the segment's largest id."""
    n = len(fields["kind"])
    if rows == 1:
        return [(index,) for index in range(n)]
    ids, c, segment = [], 0, None  # segment: [base, k, current frame, largest id]
    for kind, frame, row, col in zip(fields["kind"], fields["frame"], fields["row"], fields["col"]):
        if _text_like(kind, row):
            if segment is not None:
                c, segment = segment[3] + 1, None
            ids.append((c, c, c))
            c += 1
            continue
        if segment is None:
            segment = [c, -1, None, c - 1]
        if frame != segment[2]:
            segment[1], segment[2] = segment[1] + 1, frame
        base = segment[0]
        token = (base + math.floor(segment[1] * time_step), base + row, base + col)
        segment[3] = max(segment[3], *token)
        ids.append(token)
    return ids


def cache_rows(cache):
    """(fields, ids) of every (layer, head) row a capped cache holds, as lists: fields maps kind, frame,
    row, col and turn to their values in buffer order, ids is one tuple of position ids per slot."""
    n, pos_rows = cache.length, cache.geometry.pos_rows
    fields = {name: cache.rows(name)[:, :n].tolist() for name in ("kind", "frame", "row", "col", "turn")}
    pos = cache.storage["pos"][..., :n]  # [layers, rows, heads, n]
    ids = pos.permute(0, 2, 3, 1).reshape(-1, n, pos_rows).tolist()
    for index in range(len(ids)):
        yield {name: values[index] for name, values in fields.items()}, [tuple(t) for t in ids[index]]


class PositionLedger:
    """Every position id a session hands out or moves, checked exactly as it happens (see the module)."""

    def __init__(self, session):
        adapter, self.session = session.adapter, session
        self.rows = session.geometry.pos_rows
        self.heads = session.geometry.kv_heads
        config = adapter.model.config
        self.frames_per_group = adapter.frames_per_group
        # M-RoPE's temporal step per group: Qwen2.5-VL spaces groups by tokens_per_second x seconds a group
        tokens_per_second = getattr(getattr(config, "vision_config", None), "tokens_per_second", None)
        self.time_step = 1.0
        if config.model_type == "qwen2_5_vl":
            self.time_step = tokens_per_second * self.frames_per_group / session.fps
        self.top = -1  # largest id handed out since the start or the last re-numbering
        self.segment: tuple[int, int] | None = None  # (base, first group) of the open video segment
        self.counters: dict = {}  # tokens arrived so far: of the system prompt, of each turn
        self.given: dict[tuple, tuple[int, ...]] = {}  # token -> ids given on arrival since the last re-numbering
        self.renumbered: list[dict[tuple, tuple[int, ...]]] | None = None  # per (layer, head) row, at the last one
        self.arrival_order: dict[tuple, int] = {}
        self.renumberings = 0
        # the system prompt went in when the session was made: read it back as it arrived (nothing has moved it)
        cache = session.cache
        n = cache.length
        fields = {name: cache.rows(name)[0, :n].tolist() for name in ("kind", "frame", "row", "col", "turn")}
        pos = cache.storage["pos"][0, :, 0, :n]
        self.arrive(fields, pos)
        self._attach()

    def _attach(self) -> None:
        session, ledger = self.session, self
        write_meta, after_compaction = session.cache.write_meta, session._after_compaction

        def recording_write_meta(start, meta):
            write_meta(start, meta)
            fields = {name: getattr(meta, name).tolist() for name in ("kind", "frame", "row", "col", "turn")}
            ledger.arrive(fields, meta.pos)

        def checking_after_compaction():
            after_compaction()
            if session.positions_mode == "compact":
                ledger.check_renumbering()

        session.cache.write_meta = recording_write_meta
        session._after_compaction = checking_after_compaction

    # identities
    def _identity(self, kind: int, frame: int, row: int, col: int, turn: int, counters: dict) -> tuple | None:
        """A token's identity: (frame, row, col) for a visual token, the i-th of the system prompt or of
        its turn for text (turns go whole, so the i-th held is the i-th that arrived); None for a hole."""
        if kind == TokenKind.VISION:
            return ("vision", frame, row, col)
        if kind == TokenKind.SYSTEM:
            counters["system"] = counters.get("system", -1) + 1
            return ("system", counters["system"])
        if kind == TokenKind.DIALOGUE:
            counters[turn] = counters.get(turn, -1) + 1
            return ("turn", turn, counters[turn])
        return None

    def _row_identities(self, fields: dict) -> list[tuple | None]:
        counters: dict = {}
        return [self._identity(*values, counters)
                for values in zip(fields["kind"], fields["frame"], fields["row"], fields["col"], fields["turn"])]

    # arrivals
    def _next_ids(self, kind: int, frame: int, row: int, col: int) -> tuple[int, ...]:
        """The ids the stock layout gives the next token, and the bookkeeping that follows."""
        if self.rows == 1:
            self.top += 1
            return (self.top,)
        if _text_like(kind, row):
            self.segment = None
            self.top += 1
            return (self.top,) * 3
        group = frame // self.frames_per_group
        if self.segment is None:
            self.segment = (self.top + 1, group)
        base, first = self.segment
        ids = (base + math.floor((group - first) * self.time_step), base + row, base + col)
        self.top = max(self.top, *ids)
        return ids

    def arrive(self, fields: dict, pos: torch.Tensor) -> None:
        pos = pos.reshape(self.rows, -1).tolist()
        for index, values in enumerate(zip(fields["kind"], fields["frame"], fields["row"], fields["col"], fields["turn"])):
            kind, frame, row, col, turn = values
            expected = self._next_ids(kind, frame, row, col)
            got = tuple(p[index] for p in pos)
            assert got == expected, (
                f"token {index} of a block ({TokenKind(kind).name}, frame {frame}, row {row}, col {col}) got ids {got}; "
                f"the next ids are {expected}"
            )
            identity = self._identity(kind, frame, row, col, turn, self.counters)
            assert identity not in self.arrival_order, f"{identity} arrived twice"
            self.given[identity] = got
            self.arrival_order[identity] = len(self.arrival_order)

    # re-numbering
    def check_renumbering(self) -> None:
        """Right after a re-numbering every (layer, head) row holds exactly the gap-free layout, and the
        next token goes exactly one past the largest id held."""
        self.renumberings += 1
        largest, renumbered = -1, []
        for index, (fields, ids) in enumerate(cache_rows(self.session.cache)):
            expected = compact_ids(fields, self.rows, self.time_step)
            assert ids == expected, f"row {index} (layer {index // self.heads}) after re-numbering: {_first_difference(ids, expected)}"
            renumbered.append(dict(zip(self._row_identities(fields), ids)))
            largest = max([largest] + [max(t) for t in ids])
        self.renumbered, self.given = renumbered, {}
        self.top, self.segment = largest, None

    # the end
    def check_cache(self) -> None:
        """Every token held in every (layer, head) row carries the ids it was last given (on arrival, or
        at the last re-numbering), and the rows keep arrival order."""
        for index, (fields, ids) in enumerate(cache_rows(self.session.cache)):
            order = []
            for identity, held in zip(self._row_identities(fields), ids):
                if identity is None:  # an empty slot: no token, attention gives it nothing
                    continue
                expected = self.given.get(identity)
                if expected is None and self.renumbered is not None:
                    expected = self.renumbered[index].get(identity)
                assert expected is not None, f"row {index} holds {identity}, which never arrived"
                assert held == expected, f"row {index}: {identity} holds ids {held}, was given {expected}"
                order.append(self.arrival_order[identity])
            assert order == sorted(order), f"row {index} holds its tokens out of arrival order"


def _first_difference(got: list, expected: list) -> str:
    if len(got) != len(expected):
        return f"{len(got)} ids, expected {len(expected)}"
    index = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
    return f"slot {index} holds {got[index]}, expected {expected[index]}"


# --- the stock forward over what the cache holds --------------------------------------------------
def _decode(codes, scales, mean, bits: int, group: int) -> torch.Tensor:
    """code x scale (+ the key's head mean) in float32, for rows [1, heads, n, ...]."""
    q = QuantizedKV(codes, scales, mean, bits, group)
    values = unpack_codes(q).float()
    batch, heads, n, dim = values.shape
    out = (values.view(batch, heads, n, dim // group, group) * scales.float()[..., None]).view(batch, heads, n, dim)
    return out if mean is None else out + mean.float()[:, None]


def held_kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of the K/V every layer holds, [1, heads, n, head_dim] at the model's dtype: read straight
    from the storage (codes decoded here for a quantised cache)."""
    n, geometry, storage = cache.length, cache.geometry, cache.storage
    if not geometry.quantized:
        return [(storage["keys"][i : i + 1, :, :n].clone(), storage["values"][i : i + 1, :, :n].clone())
                for i in range(geometry.layers)]
    bits, group, dtype = geometry.kv_bits, geometry.quant_group, geometry.dtype
    held = []
    for i in range(geometry.layers):
        part = lambda name: storage[name][i : i + 1, :, :n]  # noqa: E731
        keys = _decode(part("key_codes"), part("key_scales"), storage["key_mean"][i : i + 1, :n], bits, group)
        values = _decode(part("value_codes"), part("value_scales"), None, bits, group)
        held.append((keys.to(dtype), values.to(dtype)))
    return held


def slot_masks(counts: torch.Tensor, layers: int, query_heads: int, queries: int) -> list[torch.Tensor]:
    """Per layer, the additive mask [1, query heads, queries, held + queries] for slot counts [layers *
    KV heads, held]: log(count) on the held slots (-inf for an empty one), causal over the new tokens."""
    rows, held = counts.shape
    group = query_heads // (rows // layers)
    causal = torch.full((queries, queries), float("-inf")).triu(1)
    masks = []
    for layer in counts.view(layers, rows // layers, held):
        bias = layer.log().repeat_interleave(group, dim=0)[:, None, :].expand(query_heads, queries, held)
        masks.append(torch.cat([bias, causal.expand(query_heads, queries, queries)], dim=-1).unsqueeze(0))
    return masks


@contextlib.contextmanager
def stock_attention(adapter, masks: list[torch.Tensor] | None):
    """The model's own attention implementation (a slot-count session wraps it: see
    models/count_attention.py), and each layer's mask, if any, handed to its attention."""
    modules = adapter.attention_modules()
    config = modules[0].config
    saved = config._attn_implementation
    config._attn_implementation = saved.removeprefix("potwatch_counts_")
    hooks = []
    if masks is not None:
        for module, mask in zip(modules, masks):
            def hand_mask(_, args, kwargs, mask=mask):
                return args, {**kwargs, "attention_mask": mask.to(kwargs["hidden_states"].dtype)}
            hooks.append(module.register_forward_pre_hook(hand_mask, with_kwargs=True))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        config._attn_implementation = saved


def _round_trip(states: torch.Tensor, geometry, center: bool) -> torch.Tensor:
    """New K or V as a quantised cache stores and decodes them."""
    q = quantize_reference(states.to(geometry.side_dtype), geometry.kv_bits, geometry.quant_group, center)
    return _decode(q.data, q.scale, q.mean, q.bits, q.group).to(states.dtype)


def reference_logits(adapter, held, counts: torch.Tensor | None, geometry, block) -> torch.Tensor:
    """Next-token logits of the stock model over `block` after the `held` K/V, at the block's ids."""
    cache = DynamicCache(ddp_cache_data=held)
    if geometry.quantized:  # the block's own K/V go through the cache's rounding too, as in the session
        update = cache.update
        cache.update = lambda k, v, layer, *a, **kw: update(
            _round_trip(k, geometry, True), _round_trip(v, geometry, False), layer, *a, **kw)
    position_ids = block.meta.pos if geometry.pos_rows == 1 else block.meta.pos.unsqueeze(1)
    masks = None
    if counts is not None:
        config = adapter.model.config.get_text_config()
        masks = slot_masks(counts, geometry.layers, config.num_attention_heads, len(block))
    with torch.no_grad(), stock_attention(adapter, masks):
        out = adapter.model(inputs_embeds=block.embeds, position_ids=position_ids.to(adapter.device), cache=cache,
                            use_cache=True, logits_to_keep=1)
    return out.logits[0, -1].float()


class AnswerOracle:
    """Compares every logits forward of a session (its questions and answer tokens) with the stock one."""

    def __init__(self, session):
        self.session = session
        self.differences: list[float] = []
        self.count_range = (1.0, 1.0)  # the smallest and largest slot count the comparisons saw
        run = session._run

        def checked_run(block, logits, *args, **kwargs):
            if not logits:
                return run(block, logits, *args, **kwargs)
            cache = session.cache
            held = held_kv(cache)
            counts = cache.count_rows()
            if counts is not None:
                counts = counts[:, : cache.length].clone()
                low, high = self.count_range
                self.count_range = (min(low, float(counts.min())), max(high, float(counts.max())))
            out = run(block, logits, *args, **kwargs)
            expected = reference_logits(session.adapter, held, counts, session.geometry, block)
            self.differences.append(float((out - expected).abs().max()))
            return out

        session._run = checked_run

    @property
    def worst(self) -> float:
        return max(self.differences)
