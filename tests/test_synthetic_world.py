"""The synthetic world: deterministic from a seed, the demo video is one of its streams, facts follow
the sampled frames, every question kind has a true answer that the checker accepts and wrong ones it
refuses, "now" questions show something half the time, and per-token labels name what covers a cell."""

from __future__ import annotations

import random

import numpy as np
import pytest

from potwatch.world.demo_scene import render_frame
from potwatch.world.stream import COLOURS, SHAPES, Stream, WorldObject, demo_stream, random_stream
from potwatch.world.render import render, render_sampled
from potwatch.world.labels import COLOUR_CLASSES, SHAPE_CLASSES, stream_token_labels, token_labels
from potwatch.world.questions import KINDS, check_answer, check_clock, clock, now_question, questions_for


def test_the_demo_video_is_a_world_stream():
    stream = demo_stream()
    for time_s in (0.0, 5.5, 12.0, 13.5, 14.5, 29.5):
        assert np.array_equal(render(stream, time_s), render_frame(time_s))
    answers = {q.question: q.answer for q in questions_for(stream, random.Random(0)) if q.kind == "presence"}
    assert "Yes, a red box, about 18 seconds ago." in answers.values()  # first seen at 12.0 s, asked at 30.0 s


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
    assert time_question.answer == "About 7 seconds ago." and time_question.seen_frame == 7  # 3.5 s, asked at 10 s
    assert time_question.truth["seconds"] == 3.5 and clock(75.9) == "1:15"
    assert time_question.answer_with_age(31.0) == "About 31 seconds ago."
    mid_stream = next(q for q in questions_for(stream.cut(12), random.Random(0)) if q.kind == "time")
    assert mid_stream.answer == "About 3 seconds ago." and mid_stream.truth["age"] == 2.5  # halves round up
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
    assert check_answer(truth, "Yes, a red box, about 18 seconds ago.")
    assert not check_answer(truth, "Yes, a red disc, about 18 seconds ago.")
    assert not check_answer(truth, "No, nothing red appeared.")
    young, old = {"kind": "time", "seconds": 12.0, "age": 8.0}, {"kind": "time", "seconds": 12.0, "age": 48.0}
    assert check_answer(young, "About 10 seconds ago (at 0:10).") and not check_answer(young, "About 11 seconds ago.")
    assert check_answer(old, "About 45 seconds ago.") and check_answer(old, "About 53 seconds ago.")
    assert not check_answer(old, "About 55 seconds ago.") and not check_answer(old, "At 0:12.")
    assert check_clock(young, "About 10 seconds ago (at 0:14).") and not check_clock(young, "About 8 seconds ago (at 0:15).")
    assert check_answer({"kind": "count", "count": 2}, "Two.") and not check_answer({"kind": "count", "count": 2}, "Three.")
    now = {"kind": "now", "colours": ["blue", "red"], "shapes": ["box", "disc"]}
    assert check_answer(now, "A red box and a blue disc.") and not check_answer(now, "A red box.")


def test_the_first_sets_questions_are_asked_again_in_the_same_order():
    """`new_phrasings=False` keeps every question of the first held-out sets; only answers are new (and the
    new sets add one question at the end)."""
    def asked(new):
        rng = random.Random("potwatch-eval:0:3")
        stream = random_stream(rng, min_s=8.0, max_s=96.0)
        return [(q.kind, q.question, q.options if q.kind != "time" else None) for q in questions_for(stream, rng, new)]

    first, new = asked(False), asked(True)
    assert new[-1][0] == "presence" and new[-1][1].startswith(("Did you see a ", "Was there a ", "Did a "))
    new = new[:-1]  # the new sets add a question that names one object
    assert [kind for kind, _, _ in first] == [kind for kind, _, _ in new]
    assert [q for q in first if q[0] != "time"] == [q for q in new if q[0] != "time"]
    assert all(q[1].startswith(("When", "At what time")) for q in first if q[0] == "time")


def test_now_questions_show_something_about_half_the_time():
    rng = random.Random(5)
    something = nothing = 0
    for _ in range(200):
        stream = random_stream(rng, min_s=8.0)
        asked = now_question(stream, rng)
        if asked is None:
            continue
        frames, question = asked
        assert question.kind == "now" and check_answer(question.truth, question.answer)
        assert question.ask_at == frames / 2 and frames <= len(stream.frame_times)
        shown = stream.in_view(stream.frame_times[frames - 1])
        assert sorted(o.colour for o in shown) == question.truth["colours"]
        something += bool(shown)
        nothing += not shown
    assert 0.35 < something / (something + nothing) < 0.65


def test_token_labels_name_the_object_under_each_cell():
    stream = demo_stream()  # the red box stands at 0.41 of the width, on the floor, from 12.0 to 14.5 s
    colour, shape = token_labels(stream, [13.0, 13.5], rows=3, cols=4)
    red, box = COLOUR_CLASSES.index("red"), SHAPE_CLASSES.index("box")
    assert set(colour.tolist()) == {0, red} and set(shape.tolist()) == {0, box}
    grid = colour.reshape(3, 4)
    assert grid[2, 1] == red and grid[0].tolist() == [0, 0, 0, 0] and grid[:, 3].tolist() == [0, 0, 0]
    assert token_labels(stream, [5.0, 5.5], rows=3, cols=4)[0].tolist() == [0] * 12  # distractors only
    for name in SHAPES:
        disc = Stream(4.0, "garden", (WorldObject("green", name, 0.0, 4.0, slot=2, scale=1.6),), ())
        labels = token_labels(disc, [1.0], rows=3, cols=4)[1]
        assert set(labels.tolist()) == {0, SHAPE_CLASSES.index(name)}
    colours, shapes = stream_token_labels(Stream(2.5, "garden", (), ()), 2, rows=3, cols=4)
    assert colours.shape == shapes.shape == (3 * 12,)  # five frames: three groups, the last one repeated
