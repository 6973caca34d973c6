"""The ingester at live pace: a model that falls behind gets the newest frame and an evenly thinned
backlog, every drop is counted in the session's stats, and the queue never grows past its bound."""

from __future__ import annotations

import re

import threading
import time

import pytest

from potwatch.streaming.ingester import Ingester
from potwatch.streaming.session import StreamSession
from potwatch.streaming.sources import Frame
from tests.conftest import random_frames
from tests.test_thinning_queue import gaps_ratio

SMALL_CAP = "400kB"


def frames_of(count: int, seed: int = 0) -> list[Frame]:
    return [Frame(index, index / 2.0, rgb) for index, rgb in enumerate(random_frames(count, seed, size=(120, 160)))]


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_stalled_model_gets_the_newest_frame_and_an_evenly_thinned_backlog(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap=SMALL_CAP, max_new_tokens=4)
    frames = frames_of(60)
    first_taken = threading.Event()

    def source():  # frame 0, then (once the model has it) 59 frames at once: the model is stalled meanwhile
        yield frames[0]
        first_taken.wait(10)
        yield from frames[1:]

    ingester = Ingester(source(), session, queue_frames=8)
    fed = []
    for frame in ingester.frames():
        if not fed:
            first_taken.set()
            wait_for(lambda: ingester.queue.arrived == 60)  # the stall: every frame arrives before the next feed
        fed.append(frame.index)
        session.feed(frame)
    assert fed[0] == 0 and fed[-1] == 59, fed  # the newest is kept
    backlog = fed[1:]
    assert len(backlog) == 8 and gaps_ratio(backlog) <= 2.0, backlog  # thinned evenly over the stall
    assert backlog[-1] - backlog[0] >= 50, backlog  # ...not one contiguous stretch at the end
    assert ingester.dropped == 60 - 9
    stats = session.stats()
    assert stats["dropped_frames"] == 51 and stats["frames_seen"] == 9


def test_at_live_pace_every_frame_is_fed_or_counted_and_memory_is_bounded(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap=SMALL_CAP, max_new_tokens=4)
    frames = frames_of(300, seed=1)

    def camera():  # 400 frames a second: faster than the model on any machine
        for frame in frames:
            time.sleep(0.0025)
            yield frame

    ingester = Ingester(camera(), session, queue_frames=6)
    fed, longest = [], 0
    for frame in ingester.frames():
        longest = max(longest, len(ingester.queue))
        if len(fed) == 10:
            session.ask("what is going on?")  # an answer stalls feeding for a while
        session.feed(frame)
        fed.append(frame.index)
    assert longest <= 6
    assert fed == sorted(fed) and len(set(fed)) == len(fed) and fed[-1] == 299
    assert session.stats()["dropped_frames"] == ingester.dropped == 300 - len(fed) > 0
    assert session.cache.nbytes <= session.cap_bytes


def test_drops_are_counted_while_an_answer_holds_the_model(demo_adapter):
    """Counting a drop never waits for the model: a reader thread keeps draining the source meanwhile."""
    session = StreamSession(demo_adapter, mem_cap=SMALL_CAP, max_new_tokens=4)
    session.feed(random_frames(2))
    counted = threading.Event()
    with session._lock:  # as during a long answer
        worker = threading.Thread(target=lambda: (session.note_dropped(3), counted.set()))
        worker.start()
        assert counted.wait(5), "note_dropped waited for the model's lock"
    worker.join(5)
    assert session.stats()["dropped_frames"] == 3


def test_queue_frames_must_hold_a_frame():
    with pytest.raises(ValueError, match="at least one frame"):
        Ingester(iter([]), None, queue_frames=0)


def test_the_web_ui_shows_the_drop_count(demo_adapter):
    from potwatch.app.ui.sessions import TabSession, TabSettings
    from potwatch.app.ui.status import numbers_table, status_line

    tab = TabSession("tab", StreamSession(demo_adapter, mem_cap=SMALL_CAP), TabSettings(mem_cap=SMALL_CAP))
    assert "dropped (" not in status_line(tab)
    tab.session.note_dropped(1234)
    tab.record()
    assert "1,234 dropped (the model was behind)" in status_line(tab)
    table = numbers_table(tab.stats)
    cells = dict(zip(re.findall(r"<th>([^<]*)</th>", table), re.findall(r"<td>([^<]*)</td>", table)))
    assert cells["dropped frames"] == "1,234"
    tab.close()
