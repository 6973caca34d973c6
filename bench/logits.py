"""Next-token logits of a question on a cache as it stands, leaving the cache as it found it; and
copies of a cache to compress.

Loyalty and the accuracy harness ask the same question of many caches (the full one, and copies
compressed by each policy to each ratio), so asking must not add a turn that the next question sees."""

from __future__ import annotations

import copy
import dataclasses

import torch

from potwatch.compression.capped_cache import CappedKVCache
from potwatch.compression.token_meta import TokenKind
from potwatch.errors import QuestionError


def cache_logits(adapter, cache, positions, question: str) -> torch.Tensor:
    """Logits [vocab] of the first answer token to `question` over `cache`; the cache is rolled back after."""
    ids = adapter.question_ids(question)
    positions = copy.deepcopy(positions)  # text positions advance as tokens are placed
    start = cache.length
    block = adapter.text_block(ids, TokenKind.DIALOGUE, positions, turn=0)
    try:
        with torch.no_grad():
            return adapter.forward(block, cache, logits=True).float()
    finally:
        cache.truncate(start)


def cache_answer(adapter, cache, positions, question: str, max_tokens: int) -> tuple[str, int]:
    """The greedy free-text answer to `question` over `cache`, as `ask` would give it, and the question's
    first position id; the cache is rolled back after, so the next question sees the cache as it was."""
    positions = copy.deepcopy(positions)
    start = cache.length
    stops = adapter.stop_ids()
    generated: list[int] = []
    try:
        with torch.no_grad():
            block = adapter.text_block(adapter.question_ids(question), TokenKind.DIALOGUE, positions, turn=0)
            question_position = int(block.meta.pos.reshape(-1, block.meta.pos.shape[-1])[0, 0])
            logits = adapter.forward(block, cache, logits=True)
            while len(generated) < max_tokens:
                token = int(torch.argmax(logits))
                if token in stops:
                    break
                generated.append(token)
                block = adapter.text_block([token], TokenKind.DIALOGUE, positions, turn=0)
                logits = adapter.forward(block, cache, logits=True)
    finally:
        cache.truncate(start)
    return adapter.decode(generated).strip(), question_position


def make_question_room(session, question: str, answer_tokens: int = 1) -> None:
    """Make room for `question` and `answer_tokens` on a live session, as `ask` would, under its cap."""
    needed = len(session.adapter.question_ids(question)) + answer_tokens
    if needed > session.monitor.dialogue_capacity:
        raise QuestionError(
            f"The question is {needed - answer_tokens} tokens, but this cap leaves {session.monitor.dialogue_capacity} "
            "tokens for a question; shorten it or raise the cap."
        )
    if session.monitor.make_room_for_turn(needed) and session.positions_mode == "compact":
        session._after_compaction()  # no public hook yet: re-number as `ask` does


def session_logits(session, question: str) -> torch.Tensor:
    """`cache_logits` on a live session: makes room for the question first, as `ask` would, under its cap."""
    with session._lock:
        make_question_room(session, question)
        return cache_logits(session.adapter, session.cache, session.positions, question)


def session_answer(session, question: str, max_tokens: int) -> str:
    """`cache_answer` on a live session, with room made for the question and its answer first; an age is
    read back to stream time as `ask` does (streaming/position_clock.py)."""
    with session._lock:
        make_question_room(session, question, max_tokens + 1)
        text, question_position = cache_answer(session.adapter, session.cache, session.positions, question, max_tokens)
        return session.read_back_ages(text, question_position)


def spare_copy(cache: CappedKVCache, extra_tokens: int, kv_bits: int | None = None) -> CappedKVCache:
    """A capped cache with room for everything `cache` holds plus `extra_tokens` (e.g. a question),
    storing K/V in `kv_bits` (default: as `cache` does)."""
    geometry = cache.geometry if kv_bits is None else dataclasses.replace(cache.geometry, kv_bits=kv_bits)
    return CappedKVCache(geometry, cache.length + extra_tokens, cache.layers[0].device)


def copy_cache_into(target: CappedKVCache, source: CappedKVCache) -> None:
    """Make `target` hold exactly what `source` holds: K, V, metadata and positions of every layer."""
    for into, layer in zip(target.layers, source.layers):
        n = layer.length
        into.truncate(0)
        into.update(*layer.dequantized())  # a quantised target quantises them on the way in
        for name, tensor in layer.meta.items():
            into.meta[name][:, :n].copy_(tensor[:, :n])
        into.pos[:, :, :n].copy_(layer.pos[:, :, :n])
        for state in into.token_state:  # running scores, slot counts: what update() does not take from K/V
            if state.on_arrival is None and state.name in layer.state:
                into.state[state.name][:, :n].copy_(layer.state[state.name][:, :n])
