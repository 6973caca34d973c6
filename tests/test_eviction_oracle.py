"""The eviction oracle: after several compressions, for every registered policy, every family demo,
both position modes and 16/8/4-bit K/V, each logits forward of the session's answers (the question,
then each answer token) equals a stock transformers forward of the same block over exactly the K/V the
cache holds, at the block's position ids, within ORACLE_ATOL; every position id the session hands out
or moves is the exact one (compact: the gap-free layout recomputed in the test, the next token one
past it; keep: the ids given on arrival); and every held 16-bit key is the key that arrived, turned to
the ids the cache claims. tests/eviction_oracle.py builds the stock forward, tests/position_ledger.py
checks the ids and keys; docs/testing.md says what each check catches."""

from __future__ import annotations

import dataclasses
import functools

import pytest

from potwatch.compression.policies.base import make_policy, policy_names
from potwatch.errors import CacheFullError, UserError
from potwatch.streaming.session import StreamSession
from tests.conftest import random_frames
from tests.eviction_oracle import ORACLE_ATOL, ORACLE_FAMILIES, AnswerOracle
from tests.families import family_adapter
from tests.position_ledger import PositionLedger

FRAME_SIZE = (112, 112)  # 16 visual tokens a frame group on every family
FIRST_QUESTION, SECOND_QUESTION = "What moved?", "And now?"
MAX_FRAMES = 60  # a stream that does not compress within this many frames fails the test
ANSWER_TOKENS = 2

EVICTING = [name for name in policy_names() if make_policy(name).evicts]
NON_EVICTING = [name for name in policy_names() if not make_policy(name).evicts]  # `none`
CASES = [  # (policy, width): a slot-count policy works on 16-bit K/V only
    (name, bits) for name in EVICTING for bits in (16, 8, 4) if bits == 16 or not make_policy(name).slot_counts
]
REFUSED = [(name, bits) for name in policy_names() for bits in (8, 4) if make_policy(name).slot_counts]


@functools.lru_cache(maxsize=None)
def frames() -> list:
    return random_frames(MAX_FRAMES, seed=7, size=FRAME_SIZE)


@functools.lru_cache(maxsize=None)
def cap_tokens(family: str) -> int:
    """A cap (in tokens) a little above the smallest the session takes, holding about four frame blocks
    beside the system prompt and room for a question with its answer: a few frames make it compress."""
    probe = StreamSession(family_adapter(family), mem_cap=None, max_new_tokens=ANSWER_TOKENS, frame_size=FRAME_SIZE)
    reserve = max(probe._question_budget(q, None)[2] for q in (FIRST_QUESTION, SECOND_QUESTION))
    return max(probe.min_tokens(), 4 * reserve + 1, int((probe.system_tokens + 4 * probe.block_tokens) / 0.75)) + 8


def session_for(family: str, policy: str, mode: str, bits: int) -> StreamSession:
    adapter = family_adapter(family)
    chosen = make_policy(policy)
    geometry = dataclasses.replace(adapter.geometry(), token_state=chosen.per_token_state, kv_bits=bits)
    return StreamSession(adapter, mem_cap=geometry.bytes_for(cap_tokens(family)), policy=policy, fps=2.0,
                         positions=mode, kv_bits=bits, max_new_tokens=ANSWER_TOKENS)


def feed_until(session: StreamSession, compressions: int, fed: int) -> int:
    """Feed frames one by one until the session has compressed `compressions` times; returns frames fed."""
    while session.stats()["compressions"] < compressions:
        assert fed < MAX_FRAMES, f"{MAX_FRAMES} frames did not make the session compress {compressions} times"
        session.feed(frames()[fed])
        fed += 1
    return fed


@pytest.mark.parametrize("mode", ["keep", "compact"])
@pytest.mark.parametrize("family", ORACLE_FAMILIES)
@pytest.mark.parametrize(("policy", "bits"), CASES)
def test_answers_after_eviction_equal_a_stock_forward_over_the_held_kv(policy, bits, family, mode):
    session = session_for(family, policy, mode, bits)
    ledger, oracle = PositionLedger(session), AnswerOracle(session)
    fed = feed_until(session, 1, 0)
    session.ask(FIRST_QUESTION)  # a turn in the cache, compressed with the video from then on
    feed_until(session, 2, fed)
    session.ask(SECOND_QUESTION)
    assert session.stats()["compressions"] >= 2 and len(oracle.differences) >= 2
    assert oracle.worst <= ORACLE_ATOL, oracle.differences
    ledger.check_cache()
    if mode == "compact":
        assert ledger.renumberings >= 2
    chosen = make_policy(policy)
    if chosen.head_budgets:  # the comparisons saw empty slots (count 0): the per-layer masks were used
        assert oracle.count_range[0] == 0
    elif chosen.slot_counts:  # a merging policy: they saw merged slots (count > 1)
        assert oracle.count_range[1] > 1


@pytest.mark.parametrize("mode", ["keep", "compact"])
@pytest.mark.parametrize("family", ORACLE_FAMILIES)
@pytest.mark.parametrize("bits", [16, 8, 4])
@pytest.mark.parametrize("policy", NON_EVICTING)
def test_a_policy_that_evicts_nothing_is_exact_until_the_cap_then_refuses(policy, bits, family, mode):
    session = session_for(family, policy, mode, bits)
    ledger, oracle = PositionLedger(session), AnswerOracle(session)
    session.feed(frames()[:2])
    session.ask(FIRST_QUESTION)
    assert session.stats()["compressions"] == 0
    assert oracle.worst <= ORACLE_ATOL, oracle.differences
    ledger.check_cache()
    with pytest.raises(CacheFullError):
        for frame in frames()[2:]:
            session.feed(frame)


@pytest.mark.parametrize("mode", ["keep", "compact"])
@pytest.mark.parametrize("family", ORACLE_FAMILIES)
@pytest.mark.parametrize(("policy", "bits"), REFUSED)
def test_slot_count_policies_refuse_quantised_kv(policy, bits, family, mode):
    with pytest.raises(UserError, match="needs --kv-bits 16"):
        session_for(family, policy, mode, bits)
