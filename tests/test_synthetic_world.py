"""The synthetic world: deterministic from a seed, the demo video is one of its streams, facts follow
the sampled frames, and every question kind has a true answer that the checker accepts and wrong ones
it refuses."""

from __future__ import annotations

import random

import numpy as np
import pytest

from potwatch.world.demo_scene import render_frame
from potwatch.world.stream import COLOURS, SHAPES, Stream, WorldObject, demo_stream, random_stream
from potwatch.world.render import render, render_sampled
from potwatch.world.questions import KINDS, check_answer, clock, questions_for


def test_the_demo_video_is_a_world_stream():
    stream = demo_stream()
    for time_s in (0.0, 5.5, 12.0, 13.5, 14.5, 29.5):
        assert np.array_equal(render(stream, time_s), render_frame(time_s))
    answers = {q.question: q.answer for q in questions_for(stream, random.Random(0)) if q.kind == "presence"}
    assert "Yes, a red box, from about 0:12 to 0:14." in answers.values()


def test_streams_and_questions_are_deterministic_from_the_seed():
    def make(seed):
        rng = random.Random(seed)
        stream = random_stream(rng)
        return stream, [(q.question, q.answer, q.options, q.letter) for q in questions_for(stream, rng)]

    assert make(7) == make(7)
    assert make(7) != make(8)
    stream = make(7)[0]
    assert all(np.array_equal(a, b) for a, b in zip(render_sampled(stream), render_sampled(stream)))


def test_events_have_distinct_colours_and_first_sights_two_seconds_apart():
    rng = random.Random(1)
    colours, shapes, counts = set(), set(), set()
    for _ in range(300):
        stream = random_stream(rng)
        seen = stream.events_seen()
        assert len({e.colour for e in seen}) == len(seen)
        firsts = sorted(stream.seen(e)[0] for e in seen)
        assert all(b - a >= 2.0 for a, b in zip(firsts, firsts[1:]))
        colours |= {e.colour for e in seen}
        shapes |= {e.shape for e in seen}
        counts.add(len(seen))
    assert colours == set(COLOURS) and shapes == set(SHAPES) and counts == {0, 1, 2, 3}


def test_facts_follow_the_sampled_frames():
    """An object from 3.2 s to 4.1 s is seen in the frames at 3.5 and 4.0 s: first seen at 0:03."""
    box = WorldObject("green", "disc", 3.2, 4.1, slot=0)
    stream = Stream(10.0, "garage", (box,), ())
    assert stream.seen(box) == [3.5, 4.0]
    time_question = next(q for q in questions_for(stream, random.Random(0)) if q.kind == "time")
    assert time_question.answer == "At 0:03." and clock(75.9) == "1:15"
    hidden = WorldObject("red", "box", 3.1, 3.4, slot=1)  # between two sampled frames: never seen
    assert Stream(10.0, "garage", (hidden,), ()).events_seen() == []


@pytest.mark.parametrize("seed", range(40))
def test_the_checker_accepts_the_true_answer_and_refuses_others(seed):
    rng = random.Random(seed)
    stream = random_stream(rng)
    for question in questions_for(stream, rng):
        assert question.kind in KINDS
        assert check_answer(question.truth, question.answer), question
        assert not check_answer(question.truth, "I do not know."), question
        assert question.options[ord(question.letter) - ord("A")] is not None
        assert len(set(question.options)) == len(question.options) >= 2


def test_every_kind_is_asked_and_early_questions_exist():
    rng = random.Random(3)
    kinds, early = set(), 0
    for _ in range(60):
        stream = random_stream(rng, seconds=60.0)
        for question in questions_for(stream, rng):
            kinds.add(question.kind)
            early += question.early
    assert kinds == set(KINDS) and early > 20


def test_wrong_details_are_refused():
    truth = {"kind": "presence", "yes": True, "colours": ["red"], "shapes": ["box"]}
    assert check_answer(truth, "Yes, a red box, from about 0:12 to 0:14.")
    assert not check_answer(truth, "Yes, a red disc, from about 0:12 to 0:14.")
    assert not check_answer(truth, "No, nothing red appeared.")
    assert check_answer({"kind": "time", "seconds": 12.0}, "At 0:14.")
    assert not check_answer({"kind": "time", "seconds": 12.0}, "At 0:15.")
    assert check_answer({"kind": "count", "count": 2}, "Two.") and not check_answer({"kind": "count", "count": 2}, "Three.")
    now = {"kind": "now", "colours": ["blue", "red"], "shapes": ["box", "disc"]}
    assert check_answer(now, "A red box and a blue disc.") and not check_answer(now, "A red box.")
