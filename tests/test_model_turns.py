"""Sessions on one model take turns with it (streaming/model_turns.py): on the real demo model, two
streams and a chatter never run the model at once, and a question goes before the blocks waiting."""

from __future__ import annotations

import threading
import time

from potwatch.streaming.model_turns import ANSWER, BLOCK, ModelTurns, model_turns
from potwatch.streaming.session import StreamSession
from tests.conftest import random_frames
from tests.test_concurrency import run_threads

SMALL_CAP = "400kB"


def watch_model_work(adapter, monkeypatch) -> dict:
    """Wrap the adapter's vision tower and language model: how many run at once at most, and in what order
    (by the cache they write into, i.e. by session, and by what ran: 'vision' or 'text')."""
    seen = {"now": 0, "most": 0, "order": []}
    lock = threading.Lock()

    def watched(name, original):
        def run(*args, **kwargs):
            with lock:
                seen["now"] += 1
                seen["most"] = max(seen["most"], seen["now"])
                seen["order"].append((name, threading.current_thread().name))
            try:
                time.sleep(0.002)  # long enough for another thread to come in, were it let in
                return original(*args, **kwargs)
            finally:
                with lock:
                    seen["now"] -= 1
        return run

    monkeypatch.setattr(adapter, "forward", watched("text", adapter.forward))
    monkeypatch.setattr(adapter, "vision_block", watched("vision", adapter.vision_block))
    return seen


def test_two_streams_and_a_chatter_never_run_the_model_at_once(demo_adapter, monkeypatch):
    sessions = [StreamSession(demo_adapter, mem_cap=SMALL_CAP, max_new_tokens=4) for _ in range(3)]
    seen = watch_model_work(demo_adapter, monkeypatch)
    frames = random_frames(8, seed=5, size=(120, 160))

    def stream(session):
        return lambda: [session.feed(frames[step % len(frames)]) for step in range(24)]

    def chat():
        sessions[2].feed(frames[:2])
        for step in range(6):
            sessions[2].ask(f"question {step}?")

    errors = run_threads(stream(sessions[0]), stream(sessions[1]), chat)
    assert not errors, errors
    assert sessions[0].frames_ingested == sessions[1].frames_ingested == 24 and sessions[2].turns == 6
    assert len(seen["order"]) > 50 and seen["most"] == 1, seen["most"]
    for session in sessions:
        session.close()


def test_with_two_lanes_two_turns_run_at_once_and_never_three(demo_adapter, monkeypatch):
    """`serve` on a machine with cores for two: two tabs' forwards run at once, a third waits its turn."""
    turns = model_turns(demo_adapter)
    turns.lanes = 2
    sessions = [StreamSession(demo_adapter, mem_cap=SMALL_CAP, max_new_tokens=4) for _ in range(3)]
    seen = watch_model_work(demo_adapter, monkeypatch)
    frames = random_frames(8, seed=6, size=(120, 160))

    def stream(session):
        return lambda: [session.feed(frames[step % len(frames)]) for step in range(24)]

    try:
        errors = run_threads(*(stream(session) for session in sessions))
    finally:
        turns.lanes = 1
    assert not errors, errors
    assert all(session.frames_ingested == 24 for session in sessions)
    assert seen["most"] == 2, seen["most"]
    for session in sessions:
        session.close()


def test_a_question_goes_before_the_blocks_waiting_then_they_run_in_the_order_they_came(demo_adapter, monkeypatch):
    streams = [StreamSession(demo_adapter, mem_cap=SMALL_CAP, max_new_tokens=3) for _ in range(2)]
    chatter = StreamSession(demo_adapter, mem_cap=SMALL_CAP, max_new_tokens=3)
    group = demo_adapter.frames_per_group
    frames = random_frames(2 * group, seed=6, size=(120, 160))
    chatter.feed(frames[:group])
    seen = watch_model_work(demo_adapter, monkeypatch)
    turns = model_turns(demo_adapter)
    threads = [threading.Thread(target=streams[0].feed, args=(frames[:group],), name="stream-0"),
               threading.Thread(target=streams[1].feed, args=(frames[group:],), name="stream-1"),
               threading.Thread(target=chatter.ask, args=("What now?",), name="chatter")]
    with turns.turn(BLOCK):  # a block of another session runs: everyone else waits for it
        for thread in threads:
            thread.start()
            deadline = time.monotonic() + 30
            while turns.waiting < threads.index(thread) + 1:  # each in the queue before the next comes
                assert time.monotonic() < deadline, "a thread never asked for its turn"
                time.sleep(0.01)
    for thread in threads:
        thread.join(60)
    runs = [name for _, name in seen["order"]]
    first_of = {name: runs.index(name) for name in ("stream-0", "stream-1", "chatter")}
    assert first_of["chatter"] < first_of["stream-0"] < first_of["stream-1"], runs
    answer_runs = [index for index, name in enumerate(runs) if name == "chatter"]
    assert answer_runs == list(range(answer_runs[0], answer_runs[0] + len(answer_runs)))  # one turn, not interleaved
    assert seen["most"] == 1 and chatter.turns == 1
    for session in (*streams, chatter):
        session.close()


def test_a_turn_is_entered_again_by_its_holder_and_given_up_when_waiting_is_interrupted():
    turns = ModelTurns()
    with turns.turn(ANSWER), turns.turn(BLOCK):  # an answer ingests the frames still pending
        assert turns.waiting == 0
    interrupted, got = [], []

    def wait_then_interrupt():
        try:
            with turns.turn(BLOCK):
                got.append("first")
        except KeyboardInterrupt:
            interrupted.append(True)

    with turns.turn(BLOCK):
        original_wait = turns._changed.wait

        def interrupting_wait(timeout=None):
            if threading.current_thread().name == "interrupted":
                raise KeyboardInterrupt
            return original_wait(timeout)

        turns._changed.wait = interrupting_wait
        waiter = threading.Thread(target=wait_then_interrupt, name="interrupted")
        waiter.start()
        waiter.join(10)
        turns._changed.wait = original_wait
    assert interrupted and not got and turns.waiting == 0
    with turns.turn(BLOCK):  # nobody is left in the queue ahead
        got.append("after")
    assert got == ["after"]
