"""The hard cap over long streams, protected text, dialogue turns, and clear errors that lose nothing."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from potwatch.compression.token_meta import TokenKind
from potwatch.errors import CacheFullError, MemCapError, QuestionError, UserError
from potwatch.streaming.session import StreamSession
from tests.cache_invariants import assert_cache_invariants
from tests.conftest import random_frames
from tests.device import load_test_model

SMALL_CAP = "400kB"  # ~650 tokens of the tiny demo model: a dozen temporal groups


def storage_pointers(session):
    return [(layer.key_buffer.data_ptr(), layer.value_buffer.data_ptr()) for layer in session.cache.layers]


@pytest.mark.parametrize("policy", ["tar_van", "tar", "van", "uniform", "window", "expected_attention", "global_score",
                                    "keep_merge", "adakv"])
def test_cap_holds_after_every_block_and_answer(demo_adapter, policy):
    session = StreamSession(demo_adapter, mem_cap=SMALL_CAP, policy=policy, max_new_tokens=8)
    cap = session.cap_bytes
    pointers = storage_pointers(session)
    system_before = session.cache.kind_counts()[TokenKind.SYSTEM]
    frames = random_frames(80, seed=5)
    for index, frame in enumerate(frames):
        session.feed(frame)
        assert_cache_invariants(session)
        if index in (20, 50, 79):
            session.ask("what is happening?")
            assert_cache_invariants(session)
    stats = session.stats()
    assert stats["compressions"] >= 5, stats["compressions"]
    assert stats["peak_bytes"] <= cap
    assert storage_pointers(session) == pointers, "the cache reallocated its storage"
    assert session.cache.kind_counts()[TokenKind.SYSTEM] == system_before, "system prompt tokens were evicted"
    # every layer and head holds the same count, and the newest frame is whole in every head
    for layer in session.cache.layers:
        assert layer.length == session.cache.length
        kinds = layer.meta["kind"][:, : layer.length]
        frames_held = layer.meta["frame"][:, : layer.length]
        newest = int(frames_held[kinds == TokenKind.VISION].max())
        per_head = ((frames_held == newest) & (kinds == TokenKind.VISION)).sum(1)
        assert (per_head == session.tokens_per_group).all()


def test_later_questions_see_earlier_turns_and_old_turns_drop_whole(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap=SMALL_CAP, max_new_tokens=8)
    session.feed(random_frames(8, seed=6))
    session.ask("first question?")
    dialogue = session.cache.kind_counts()[TokenKind.DIALOGUE]
    assert dialogue > 0  # the first turn stays as protected text for the second question
    turns = set()
    for index in range(12):
        events = session.monitor.event_count
        free = session.cache.capacity - session.cache.length
        session.ask(f"question number {index}?")
        if session.monitor.event_count == events:  # no compaction: the turn used free room
            assert session.cache.capacity - session.cache.length < free
        else:  # the pass that made room brought the dialogue, new turn included, within its share
            assert session.cache.kind_counts()[TokenKind.DIALOGUE] <= session.monitor.dialogue_capacity
        layer = session.cache.layers[0]
        kinds = layer.meta["kind"][:, : layer.length]
        held = layer.meta["turn"][:, : layer.length][kinds == TokenKind.DIALOGUE]
        turns = set(held.tolist())
        # whole turns only: every held turn has the same token count in every head
        per_head = [(layer.meta["turn"][h, : layer.length] == min(turns)).sum() for h in range(kinds.shape[0])]
        assert len(set(int(c) for c in per_head)) == 1
    assert 0 not in turns and 12 in turns, turns  # the oldest went, the newest stayed
    assert any(event["reason"] == "dialogue" for event in session.stats()["recent_events"])


def test_a_cap_too_small_names_the_minimum(demo_adapter):
    with pytest.raises(MemCapError, match=r"raise --mem-cap to at least [0-9.]+ kB"):
        StreamSession(demo_adapter, mem_cap="100kB", frame_size=(240, 320))
    with pytest.raises(MemCapError, match="holds no token"):
        StreamSession(demo_adapter, mem_cap=100)


def test_policy_none_fails_clearly_and_keeps_what_it_has(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap=SMALL_CAP, policy="none", max_new_tokens=4)
    fed = 0
    with pytest.raises(CacheFullError, match="raise --mem-cap or pick a compressing policy"):
        for frame in random_frames(60, seed=7):
            session.feed(frame)
            fed += 1
    length = session.cache.length
    assert session.frames_ingested == fed - 1 - (fed - 1) % 2  # whole groups only
    assert session.cache.used_bytes <= session.cap_bytes
    visual = session.cache.kind_counts()[TokenKind.VISION]
    try:  # a question may still fit beside the full video part; if not, it fails without harm
        session.ask("still there?")
    except CacheFullError:
        assert session.cache.length == length
    assert session.cache.kind_counts()[TokenKind.VISION] == visual  # no frame was evicted either way


def test_questions_that_cannot_be_asked(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap=SMALL_CAP)
    with pytest.raises(QuestionError, match="empty"):
        session.ask("   ")
    with pytest.raises(QuestionError, match="shorten it or raise --mem-cap"):
        session.ask("why " * 500)
    assert session.ask("ok?").tokens >= 0


def test_ask_from_another_thread_while_feeding(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap=SMALL_CAP, max_new_tokens=4)
    frames = random_frames(40, seed=8)
    answers, errors = [], []

    def ask_many():
        try:
            for _ in range(6):
                answers.append(session.ask("what now?"))
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    asker = threading.Thread(target=ask_many)
    asker.start()
    for frame in frames:
        session.feed(frame)
    asker.join()
    assert not errors and len(answers) == 6
    assert session.frames_seen == 40 and session.cache.used_bytes <= session.cap_bytes


def test_streaming_tokens_match_the_answer(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap=SMALL_CAP, max_new_tokens=10)
    session.feed(random_frames(4))
    pieces = list(session.ask_stream("what?"))
    answer = pieces[-1]
    assert "".join(pieces[:-1]).strip() == answer.text
    assert answer.first_token_s <= answer.seconds


def test_grayscale_rgba_and_odd_sizes_are_accepted(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap=SMALL_CAP)
    rng = np.random.default_rng(0)
    session.feed(rng.integers(0, 256, (101, 203), dtype=np.uint8))
    session.feed(rng.integers(0, 256, (101, 203, 4), dtype=np.uint8))
    session.feed(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))  # resized to the stream's size
    assert session.frames_seen == 3 and session.frames_ingested == 2


def test_reset_and_close(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap=SMALL_CAP)
    session.feed(random_frames(4))
    session.reset(mem_cap="600kB", policy="window")
    assert session.frames_seen == 0 and session.cache.kind_counts()[TokenKind.VISION] == 0
    assert session.policy_name == "window" and session.cap_bytes == 600_000
    session.close()
    with pytest.raises(UserError, match="closed"):
        session.feed(random_frames(2))


def test_the_cap_in_tokens_and_frames_for_the_2b_geometry():
    session = StreamSession(load_test_model("demo-2b", dtype="bfloat16"), mem_cap="2GB")
    text = session.describe_cap(tokens_per_frame=130)
    # metadata: 1,400 B of kinds, frames, turns, patch coordinates and positions, and tar_van's value norms
    # (4 B for each of 28 layers x 2 KV heads)
    assert "2.00 GB holds about 66,015 tokens (28,672 B/token K+V + 1,624 B metadata)" in text
    # frames as every display counts them: the cap less the system prompt and a turn's room, in whole
    # groups of 2 frames (Qwen folds two frames into one group of 130 tokens)
    frames = session.frames_before_compression(130)
    assert text.endswith(f"≈ {frames:,} frames at full detail (130 tokens per group of 2 frames)")
    assert 2 * 500 <= frames <= 2 * (66_015 // 130) and frames % 2 == 0
    assert session.cache.nbytes <= 2 * 10**9
    session.close()


def test_a_reset_that_cannot_work_leaves_the_session_as_it_was(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap=SMALL_CAP)
    session.feed(random_frames(4))
    before = session.stats()
    with pytest.raises(MemCapError, match="raise --mem-cap"):
        session.reset(mem_cap="50kB")
    with pytest.raises(UserError, match="Unknown policy"):
        session.reset(policy="nope")
    after = session.stats()
    assert after["frames_seen"] == before["frames_seen"] == 4
    assert after["cap_bytes"] == before["cap_bytes"] and after["tokens_in_cache"] == before["tokens_in_cache"]
    assert session.ask("still fine?").frames_seen == 4


@pytest.mark.parametrize("fed", [1, 3])
def test_a_question_sees_the_odd_last_frame_of_a_two_frame_group(demo_adapter, fed):
    session = StreamSession(demo_adapter, mem_cap="4MB", max_new_tokens=4)
    assert demo_adapter.frames_per_group == 2
    session.feed(random_frames(fed, seed=9))
    assert session.stats()["frames_pending"] == 1
    answer = session.ask("What is there?")
    assert session.stats()["frames_pending"] == 0 and session.frames_ingested == fed
    assert answer.frames_seen == fed
    assert int(session.cache.frames_held().max()) == fed - 1  # its group, completed by repeating it
    # The frame that would have completed that group is skipped; the next groups keep their place in time.
    session.feed(random_frames(3, seed=10))
    assert session.frames_ingested == fed + 2 and session.stats()["frames_skipped"] == 1
    assert int(session.cache.frames_held().max()) == fed + 1
    assert session.ask("And now?").frames_seen == fed + 3
