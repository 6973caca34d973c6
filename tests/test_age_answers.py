"""Ages in answers: said on a grid that coarsens with age, read back, and, for a model that says the
position distance it reads (the `tiny` model), turned into the true age and clock time through the
positions the cache holds, whatever dialogue came in between and however positions were compacted."""

from __future__ import annotations

import pytest

from potwatch.streaming.age_phrases import age_tolerance, read_age, rounded_age, say_age, stream_clock
from potwatch.streaming.position_clock import frame_at_position, held_frame_positions, with_stream_time
from potwatch.streaming.session import StreamSession
from potwatch.world.demo_scene import render_frame
from tests.device import load_test_model


def test_ages_are_said_on_a_grid_that_coarsens_with_age():
    assert [say_age(s) for s in (0.2, 1.0, 6.5, 19.4)] == ["1 second ago", "1 second ago", "7 seconds ago", "19 seconds ago"]
    assert [say_age(s) for s in (22.4, 22.5, 117.0)] == ["20 seconds ago", "25 seconds ago", "115 seconds ago"]
    assert [say_age(s) for s in (150.0, 3599.0, 4 * 3600 + 1700)] == ["3 minutes ago", "1 hour ago", "4 hours ago"]
    assert [age_tolerance(s) for s in (5.0, 40.0, 600.0, 20000.0)] == [2.0, 5.0, 60.0, 3600.0]
    assert rounded_age(37.0) == 35.0 and rounded_age(37.5) == 40.0


def test_said_ages_are_read_back():
    said = read_age("Yes, a red box, about 3 minutes ago (at 0:12).")
    assert said.seconds == 180.0 and "Yes, a red box, about 3 minutes ago (at 0:12)."[said.start:said.end] == "3 minutes ago"
    assert read_age("About 1 second ago.").seconds == 1.0 and read_age("At 0:12.") is None
    assert [stream_clock(s) for s in (12.7, 75.0, 3723.0)] == ["0:12", "1:15", "1:02:03"]


@pytest.fixture(scope="module")
def demo():
    return load_test_model("demo")


def frames(start_s: float, stop_s: float) -> list:
    return [render_frame(i / 2) for i in range(int(start_s * 2), int(stop_s * 2))]


def test_a_position_distance_reads_back_to_the_true_age_across_dialogue(demo):
    """Ten seconds of video, a question and its answer (their tokens add positions), ten more seconds: an
    age said as the position distance back to the first frames is read back to 20 s before the question."""
    session = StreamSession(demo, mem_cap=None, fps=2.0)
    session.feed(frames(0, 10))
    session.ask("What is there?", max_new_tokens=6)
    session.feed(frames(10, 20))
    means, held = held_frame_positions(session.cache)
    assert held.tolist() == list(range(0, 40, 2))  # a frame per temporal group of two
    question_position = session.positions.max_position + 1
    distance = question_position - means[0]
    assert distance > 20 + 6  # the turn in between made the first frames look further back than 20 s
    text = f"About {int(distance)} seconds ago."
    assert with_stream_time(text, session.cache, question_position, 1.0, 2.0, session.frames_seen) == \
        "About 20 seconds ago (at 0:00)."
    assert frame_at_position(session.cache, means[5]) == 10.0
    assert with_stream_time("A red box.", session.cache, question_position, 1.0, 2.0, 40) == "A red box."


def test_compacted_positions_read_back_to_the_frames_held(demo):
    """Under `compact` the evicted stretches leave no gap in the ids, so a distance there is shorter than
    the time it spans: read back through the held frames, the age is the time, not the distance."""
    session = StreamSession(demo, mem_cap="400kB", fps=2.0, positions="compact", policy="uniform")
    session.feed(frames(0, 30))
    assert session.monitor.event_count >= 1
    means, held = held_frame_positions(session.cache)
    assert len(held) < 30 and list(means) == sorted(means)
    oldest_held_s = held[0] / 2
    question_position = session.positions.max_position + 1
    distance = question_position - means[0]
    assert distance < 30 - oldest_held_s  # the ids say less time passed than did
    said_as_distance = f"About {round(distance)} seconds ago."
    assert session.read_back_ages(said_as_distance, question_position) == said_as_distance  # only tiny's are read back
    demo.ages_from_positions = True
    try:
        answer = session.read_back_ages(said_as_distance, question_position)
    finally:
        demo.ages_from_positions = False
    said = read_age(answer).seconds
    assert abs(said - (30 - oldest_held_s)) <= age_tolerance(30 - oldest_held_s)
