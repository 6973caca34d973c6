"""Questions from one thread while another feeds, hundreds of times, on the real demo model: no deadlock
(every join has a timeout) and no corrupted cache (the invariants are checked after every step)."""

from __future__ import annotations

import threading

from potwatch.streaming.answer import Answer
from potwatch.streaming.ingester import Ingester
from potwatch.streaming.session import StreamSession
from potwatch.streaming.sources import ArraySource
from tests.cache_invariants import cache_problems
from tests.conftest import random_frames

SMALL_CAP = "400kB"
JOIN_S = 120  # far above the few seconds the work takes; reaching it means a deadlock


def run_threads(*targets) -> list[BaseException]:
    """Start every target at once, wait with a timeout, and return what they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(targets))

    def wrap(target):
        def run():
            try:
                start.wait(10)
                target()
            except BaseException as error:  # noqa: BLE001 - reported by the test
                errors.append(error)
        return run

    threads = [threading.Thread(target=wrap(target), daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_S)
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert not stuck, f"deadlock: {stuck} still running after {JOIN_S} s"
    return errors


def test_asking_while_feeding_hundreds_of_times_keeps_the_cache_whole(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap=SMALL_CAP, max_new_tokens=3)
    frames = random_frames(16, seed=3, size=(120, 160))
    feeds, asks, stats_reads = 300, 150, 0
    problems: list[str] = []
    answers = []
    finished: list[str] = []

    def feeder():
        try:
            for step in range(feeds):
                session.feed(frames[step % len(frames)])
                problems.extend(f"after feed {step}: {p}" for p in cache_problems(session))
        finally:
            finished.append("feeder")

    def asker():
        try:
            for step in range(asks):
                answers.append(session.ask(f"question {step}?"))
                problems.extend(f"after ask {step}: {p}" for p in cache_problems(session))
        finally:
            finished.append("asker")

    def watcher():  # what the UI's timer does meanwhile
        nonlocal stats_reads
        while len(finished) < 2:
            stats = session.stats()
            assert stats["peak_bytes"] <= session.cap_bytes
            stats_reads += 1

    errors = run_threads(feeder, asker, watcher)
    assert not errors, errors
    assert not problems, problems[:5]
    stats = session.stats()
    assert stats["frames_seen"] == feeds and stats["turns"] == asks == len(answers)
    assert stats["compressions"] > 10, "the cap never made the threads compress under each other"
    # the whole history, not the last 20 events: a feeder that outlasts the asker fills those with visual passes
    assert any(event.reason == "dialogue" for event in session.monitor.events), "old turns never dropped"
    assert [answer.question for answer in answers] == [f"question {step}?" for step in range(asks)]
    assert stats_reads > 0


def test_asking_while_a_live_source_feeds_through_the_ingester(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap=SMALL_CAP, max_new_tokens=3)
    source = ArraySource(random_frames(200, seed=4, size=(120, 160)))
    ingester = Ingester(source, session, queue_frames=4)
    problems: list[str] = []
    done = threading.Event()

    def feeder():
        try:
            for frame in ingester.frames():
                session.feed(frame)
                problems.extend(cache_problems(session))
        finally:
            done.set()

    def asker():
        asked = 0
        while not done.is_set() or asked < 20:
            session.ask("and now?")
            problems.extend(cache_problems(session))
            asked += 1

    errors = run_threads(feeder, asker)
    assert not errors, errors
    assert not problems, problems[:5]
    stats = session.stats()
    assert stats["frames_seen"] + stats["dropped_frames"] == 200  # every frame fed or counted
    assert stats["frames_seen"] == session.frames_ingested + stats["frames_pending"] + stats["frames_skipped"]


def test_an_abandoned_streamed_answer_releases_the_model(demo_adapter):
    """A reader that stops reading an answer half-way (a closed browser tab) must not block the feeder."""
    session = StreamSession(demo_adapter, mem_cap=SMALL_CAP, max_new_tokens=8)
    session.feed(random_frames(4, size=(120, 160)))
    finished_answers = 0
    for _ in range(20):
        stream = session.ask_stream("tell me everything?")
        finished_answers += isinstance(next(stream), Answer)  # an answer may end at its first token
        stream.close()  # the generator's cleanup rolls the half turn back and releases the lock
        fed = threading.Thread(target=session.feed, args=(random_frames(1, size=(120, 160))[0],), daemon=True)
        fed.start()
        fed.join(JOIN_S)
        assert not fed.is_alive(), "feeding waited forever behind an abandoned answer"
    assert not cache_problems(session)
    assert session.turns == finished_answers  # no half turn was kept
