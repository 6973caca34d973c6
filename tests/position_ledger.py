"""Every position id a session hands out or moves, and every key it rotates, checked exactly.

`PositionLedger` follows a session's tokens by identity (a frame's patch, the i-th token of the system
prompt or of a turn) and checks, as they happen: each new token's ids by the stock layout rule (1-D:
the next integer; M-RoPE: text at the largest id + 1, a video segment from a fresh base); after each
re-numbering, every (layer, head) row against the gap-free layout recomputed here by a plain loop;
at the end, every held token's ids against the ids it was last given. For 16-bit caches it also keeps
each token's key as it arrived, turned back to position 0 by the language model's own rotary embedding,
and checks that each held key, turned back from the ids the cache now claims for it, is still that key:
the cache holds the keys the stock model gives at the positions it claims."""

from __future__ import annotations

import math
import sys

import torch

from potwatch.compression.token_meta import TokenKind
from tests.device import ON_CUDA

FIELDS = ("kind", "frame", "row", "col", "turn")
# Largest |difference| between a held key turned back to position 0 and the key that arrived, turned
# back alike: the stock rotary embedding forms its angles in float32 (at most 2.3e-6 seen here on the
# CPU; a key turned by one position too many is off by about its own size). Ten times more on CUDA, as
# for the suite's other tolerances (tests/device.py).
KEY_ATOL = 1e-3 if ON_CUDA else 1e-4


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
    fields = {name: cache.rows(name)[:, :n].tolist() for name in FIELDS}
    pos = cache.storage["pos"][..., :n]  # [layers, rows, heads, n]
    ids = pos.permute(0, 2, 3, 1).reshape(-1, n, pos_rows).tolist()
    for index in range(len(ids)):
        yield {name: values[index] for name, values in fields.items()}, [tuple(t) for t in ids[index]]


def stock_rotation(adapter):
    """rotate(keys [..., n, head_dim], ids [rows, n]): the keys turned by the angles of position ids
    `ids`, as the language model's own rotary embedding and RoPE function turn them (negative ids turn
    back)."""
    language_model = getattr(adapter, "language_model", None) or adapter.model.model.language_model
    apply_rotary = sys.modules[type(adapter.attention_modules()[0]).__module__].apply_rotary_pos_emb

    def rotate(keys: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        position_ids = ids if ids.shape[0] == 1 else ids.unsqueeze(1)  # [1, n], or [3, batch 1, n] for M-RoPE
        cos, sin = language_model.rotary_emb(keys, position_ids.to(keys.device))
        flat = keys.reshape(1, -1, *keys.shape[-2:])
        return apply_rotary(flat, flat, cos, sin)[1].view(keys.shape)

    return rotate


class PositionLedger:
    """Every position id a session hands out or moves, and (16-bit caches) every key it holds, checked
    exactly as they happen (see the module). Attach it right after making the session."""

    def __init__(self, session):
        adapter, self.session, cache = session.adapter, session, session.cache
        self.rows, self.heads = session.geometry.pos_rows, session.geometry.kv_heads
        self.frames_per_group = adapter.frames_per_group
        config = adapter.model.config
        self.time_step = 1.0  # M-RoPE's temporal step a group; Qwen2.5-VL's: tokens_per_second x seconds a group
        if config.model_type == "qwen2_5_vl":
            self.time_step = config.vision_config.tokens_per_second * self.frames_per_group / session.fps
        self.top = -1  # largest id handed out since the start or the last re-numbering
        self.segment: tuple[int, int] | None = None  # (base, first group) of the open video segment
        self.counters: dict = {}  # tokens arrived so far: of the system prompt, of each turn
        self.given: dict[tuple, tuple[int, ...]] = {}  # token -> ids given on arrival since the last re-numbering
        self.renumbered: list[dict] | None = None  # per (layer, head) row: token -> ids at the last re-numbering
        self.arrival_order: dict[tuple, int] = {}
        self.renumberings = 0
        self.rotate = None if cache.quantized else stock_rotation(adapter)  # decoded 8/4-bit keys carry rounding
        self.keys_at_zero: list[torch.Tensor] = []  # per block, [layers, heads, n, dim]: keys turned back to 0
        # the system prompt went in when the session was made: read it back as it arrived (nothing moved it)
        n = cache.length
        self.arrive(0, {name: cache.rows(name)[0, :n].tolist() for name in FIELDS}, cache.storage["pos"][0, :, 0, :n])
        self._attach()

    def _attach(self) -> None:
        session, ledger = self.session, self
        # the last layer stores a block's metadata once every layer has written its K/V (`arriving`)
        last_layer = session.cache.layers[-1]
        write_meta, after_compaction = last_layer.write_meta, session._after_compaction

        def recording_write_meta(start, meta):
            write_meta(start, meta)
            ledger.arrive(start, {name: getattr(meta, name).tolist() for name in FIELDS}, meta.pos)

        def checking_after_compaction():
            after_compaction()
            if session.positions_mode == "compact":
                ledger.check_renumbering()

        last_layer.write_meta = recording_write_meta
        session._after_compaction = checking_after_compaction

    # identities
    @staticmethod
    def _identity(kind: int, frame: int, row: int, col: int, turn: int, counters: dict) -> tuple | None:
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

    def _identities(self, fields: dict, counters: dict | None = None) -> list[tuple | None]:
        counters = {} if counters is None else counters
        return [self._identity(*values, counters) for values in zip(*(fields[name] for name in FIELDS))]

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

    def arrive(self, start: int, fields: dict, pos: torch.Tensor) -> None:
        """Tokens just written at slots [start, start + n) of every row, with their ids `pos` [rows, n]."""
        ids = [tuple(t) for t in pos.reshape(self.rows, -1).t().tolist()]
        identities = self._identities(fields, self.counters)
        for index, (identity, got) in enumerate(zip(identities, ids)):
            kind, frame, row, col = (fields[name][index] for name in ("kind", "frame", "row", "col"))
            expected = self._next_ids(kind, frame, row, col)
            assert got == expected, (f"token {index} of a block ({TokenKind(kind).name}, frame {frame}, row {row}, "
                                     f"col {col}) got ids {got}; the next ids are {expected}")
            assert identity not in self.arrival_order, f"{identity} arrived twice"
            self.given[identity] = got
            self.arrival_order[identity] = len(self.arrival_order)
        if self.rotate is not None:
            n = len(ids)
            keys = self.session.cache.storage["keys"][:, :, start : start + n]  # [layers, heads, n, dim]
            self.keys_at_zero.append(self.rotate(keys, -pos.reshape(self.rows, n).long()))  # in arrival order

    # re-numbering
    def check_renumbering(self) -> None:
        """Right after a re-numbering every (layer, head) row holds exactly the gap-free layout, its keys
        turned to match, and the next token goes exactly one past the largest id held."""
        self.renumberings += 1
        largest, renumbered = -1, []
        for index, (fields, ids) in enumerate(cache_rows(self.session.cache)):
            expected = compact_ids(fields, self.rows, self.time_step)
            assert ids == expected, f"row {index} after re-numbering: {_first_difference(ids, expected)}"
            renumbered.append(dict(zip(self._identities(fields), ids)))
            largest = max([largest] + [max(t) for t in ids])
        self.renumbered, self.given = renumbered, {}
        self.top, self.segment = largest, None
        self.check_keys()

    # the end
    def check_cache(self) -> None:
        """Every token held in every (layer, head) row carries the ids it was last given (on arrival, or
        at the last re-numbering) and its key turned to them, and the rows keep arrival order."""
        for index, (fields, ids) in enumerate(cache_rows(self.session.cache)):
            order = []
            for identity, held in zip(self._identities(fields), ids):
                if identity is None:  # an empty slot: no token, attention gives it nothing
                    continue
                expected = self.given.get(identity)
                if expected is None and self.renumbered is not None:
                    expected = self.renumbered[index].get(identity)
                assert expected is not None, f"row {index} holds {identity}, which never arrived"
                assert held == expected, f"row {index}: {identity} holds ids {held}, was given {expected}"
                order.append(self.arrival_order[identity])
            assert order == sorted(order), f"row {index} holds its tokens out of arrival order"
        self.check_keys()

    def check_keys(self) -> None:
        """Each held key, turned back from the ids the cache claims for it, is the key that arrived turned
        back from its arrival ids. Slots that stand for several tokens (a merge) or none are skipped."""
        if self.rotate is None:
            return
        cache = self.session.cache
        arrived = torch.cat(self.keys_at_zero, dim=2)  # [layers, heads, tokens arrived, dim]
        counts = cache.state_rows("count")
        counts = None if counts is None else counts[:, : cache.length].tolist()
        for index, (fields, ids) in enumerate(cache_rows(cache)):
            layer, head = divmod(index, self.heads)
            identities = self._identities(fields)
            slots = [slot for slot, identity in enumerate(identities)
                     if identity is not None and (counts is None or counts[index][slot] == 1.0)]
            order = torch.tensor([self.arrival_order[identities[slot]] for slot in slots], dtype=torch.long)
            claimed = torch.tensor([ids[slot] for slot in slots], dtype=torch.long).t()  # [rows, slots]
            at_zero = self.rotate(cache.storage["keys"][layer, head, slots], -claimed)
            difference = (at_zero - arrived[layer, head, order]).abs().amax(dim=-1)
            worst = int(difference.argmax())
            assert float(difference[worst]) <= KEY_ATOL, (
                f"row {index}: the key of {identities[slots[worst]]} at ids {ids[slots[worst]]} is not the key that "
                f"arrived, turned to them (|difference| {float(difference[worst]):.2e})")


def _first_difference(got: list, expected: list) -> str:
    if len(got) != len(expected):
        return f"{len(got)} ids, expected {len(expected)}"
    index = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
    return f"slot {index} holds {got[index]}, expected {expected[index]}"
