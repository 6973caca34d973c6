"""A day of the synthetic world and the day benchmark, on a short day: the schedule's promises (each pair
at most once, some never, questions a minute after each event), and the benchmark's bookkeeping (every
question's age and truth, the cap after every block, the memory curve's points)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from potwatch.world.day import TARGET_AGES_S, day_questions, first_seen, make_day, question_stops
from potwatch.world.stream import SAMPLE_FPS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.day import AGE_BINS, DayRun, markdown, memory_curve, run_day, summarise  # noqa: E402

SHORT_HOURS = 0.05  # three minutes of stream


def test_a_day_names_each_pair_at_most_once_and_keeps_some_back():
    day = make_day(3, 24.0)
    pairs = [(e.colour, e.shape) for e in day.stream.events]
    assert len(pairs) == len(set(pairs)) == 12 and len(day.never) == 6 and not set(pairs) & set(day.never)
    assert make_day(3, 24.0) == day and make_day(4, 24.0) != day
    firsts = sorted(first_seen(e) for e in day.stream.events)
    assert all(b - a >= 2.0 for a, b in zip(firsts, firsts[1:]))
    stays = [e.end_s - e.start_s for e in day.stream.events]
    assert min(stays) < 30 and max(stays) > 120  # some brief, some long
    for a in day.stream.events:
        for b in day.stream.events:
            if a is not b and a.start_s < b.end_s and b.start_s < a.end_s:
                assert abs(a.slot - b.slot) >= 2


def test_questions_come_every_so_often_and_soon_after_each_event():
    day = make_day(3, 24.0)
    stops = question_stops(day, 1200.0)
    assert all(frames % 2 == 0 for frames in stops)
    for event in day.stream.events:
        minute_after = round((first_seen(event) + 60) * SAMPLE_FPS)
        assert minute_after + minute_after % 2 in stops or minute_after > day.frames
    questions = day_questions(day, 1200.0)
    ages = [q.age_s for q in questions if q.age_s is not None]
    for target in TARGET_AGES_S:  # every age the issue names is asked about
        assert any(0.5 * target <= age <= 2 * target for age in ages), target
    for item in questions:
        if item.question.kind == "presence" and item.age_s is not None:
            named = [e for e in day.stream.events if f"{e.colour} {e.shape}" in item.question.question]
            assert len(named) == 1 and math.isclose(item.asked_at_s - first_seen(named[0]), item.age_s)
        elif item.question.kind == "presence":
            assert tuple(item.question.truth["colours"] + item.question.truth["shapes"]) in day.never


@pytest.fixture(scope="module")
def short_day():
    import torch

    threads = torch.get_num_threads()
    try:
        return [run_day(DayRun(policy, "1MB", SHORT_HOURS, 30.0, 0, None)) for policy in ("tar_van", "window")]
    finally:
        torch.set_num_threads(threads)


def test_the_short_day_holds_the_cap_and_keeps_its_books(short_day):
    day = make_day(0, SHORT_HOURS)
    expected = day_questions(day, 30.0, 0)
    for result in short_day:
        assert result["frames"] == day.frames and result["blocks_over_cap"] == 0
        assert result["peak_bytes"] <= result["cap_bytes"] == 1_000_000 and result["compressions"] > 0
        assert len(result["answers"]) == len(expected)
        for asked, item in zip(result["answers"], expected):
            assert asked["question"] == item.question.question and asked["age_s"] == item.age_s
            assert asked["asked_at_s"] == item.asked_at_s and asked["expected"] == item.question.answer
        curve = memory_curve(result["answers"])
        aged = [a for a in result["answers"] if a["age_s"] is not None]
        assert sum(point["questions"] for point in curve) == len(aged) > 0
        for point in curve:
            marks = [a["right"] for a in aged if point["from_s"] <= a["age_s"] < point["to_s"]]
            assert point["accuracy"] == sum(marks) / len(marks)
        summary = summarise(result)
        assert summary["cap_held"] and summary["now_questions"]["questions"] == len(question_stops(day, 30.0))
        assert sum(result["frames_held_per_hour"].values()) <= day.frames // 2
    table = markdown([r | {"summary": summarise(r)} for r in short_day], "benchmarks/day.py --hours 0.05")
    assert "tar_van @ 1MB" in table and "window @ 1MB" in table and AGE_BINS[0][2] in table
