"""The `tiny` model's training samples are the sequences a session builds: the same positions and the
same next-token logits as `StreamSession` watching the same frames and answering the same turns, with
questions mid-stream and more video after them; and the ages they teach, said as position distances,
read back through the session's positions to the true age."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

from potwatch.bench.logits import cache_logits
from potwatch.compression.capped_cache import CappedKVCache
from potwatch.streaming.age_phrases import age_tolerance, read_age
from potwatch.streaming.position_clock import with_stream_time
from potwatch.streaming.session import StreamSession
from potwatch.world.questions import WorldQuestion, questions_for
from potwatch.world.render import render_sampled
from potwatch.world.stream import SAMPLE_FPS, Stream, WorldObject, random_stream
from tests.device import load_test_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from world_samples import IGNORE, Stop, Turn, build_sample  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return load_test_model("tiny")


def said(question: str, answer: str) -> WorldQuestion:
    return WorldQuestion("count", question, answer, ["x", "y"], "A")


def test_a_sample_is_what_the_session_holds_with_questions_mid_stream(tiny):
    stream = random_stream(random.Random(11), seconds=20.0)
    frames = render_sampled(stream)
    questions = ["What colour was the box?", "How many objects came in?", "What is in view now?"]
    session = StreamSession(tiny, mem_cap=None, fps=SAMPLE_FPS)
    session.feed(frames[:12])
    first = session.ask(questions[0], max_new_tokens=24)
    session.feed(frames[12:])
    second = session.ask(questions[1], max_new_tokens=24)
    expected = cache_logits(tiny, session.cache, session.positions, questions[2])
    stops = [Stop(12, [Turn(said(questions[0], first.text))]),
             Stop(len(frames), [Turn(said(questions[1], second.text)), Turn(said(questions[2], "Nothing."))])]
    sample = build_sample(tiny, frames, stops)
    held = session.cache.length
    assert torch.equal(session.cache.layers[0].pos[:, 0, :held].long(), sample.positions[:, :held])
    with torch.no_grad():
        hidden = tiny.model.model.language_model(inputs_embeds=sample.embeds[None], position_ids=sample.positions[:, None],
                                                 use_cache=False).last_hidden_state[0]
    answer_starts = [i for i in (sample.targets != IGNORE).nonzero().view(-1).tolist() if i >= held]
    logits = tiny.model.lm_head(hidden[answer_starts[0]])
    assert (logits - expected).abs().max() < 1e-4


def test_the_ages_a_sample_teaches_read_back_to_the_true_age(tiny):
    """A green disc first seen at 3.0 s; its age asked at 20 s (mid-stream) and at the end (40 s), the second
    after two more turns: the age taught is the position distance, longer than the time by the turns in
    between; run into a cache as a session runs them, the blocks read it back to the true age."""
    disc = WorldObject("green", "disc", 3.0, 9.0, slot=1, scale=1.7)
    stream = Stream(40.0, "garden", (disc,), ())
    frames = render_sampled(stream)
    middle = [q for q in questions_for(stream.cut(40), random.Random(0)) if q.kind in ("time", "count")]
    end = [q for q in questions_for(stream, random.Random(1)) if q.kind in ("count", "shape", "time")]
    end.sort(key=lambda q: q.kind == "time")  # the time question last, after two more turns
    sample = build_sample(tiny, frames, [Stop(40, [Turn(q) for q in middle]), Stop(len(frames), [Turn(q) for q in end])])
    cache = CappedKVCache(tiny.geometry(), None)
    with torch.no_grad():
        for block in sample.blocks:
            cache.arriving(block.meta)
            tiny.forward(block, cache, logits=False)
    taught = [(position, fed, answer) for position, fed, answer in sample.asked if "ago" in answer]
    truths = [q.truth["age"] for q in middle + end if q.kind == "time"]
    assert truths == [17.0, 37.0] and len(taught) == 2
    assert read_age(taught[1][2]).seconds > 37 + 10  # the turns in between look like time to the model
    for (position, fed, answer), truth in zip(taught, truths):
        read_back = with_stream_time(answer, cache, position, 1.0, SAMPLE_FPS, fed)
        assert abs(read_age(read_back).seconds - truth) <= age_tolerance(truth), (answer, read_back, truth)
        assert "(at 0:03)" in read_back


def test_a_gap_makes_the_ids_jump_as_evicted_stretches_do_and_ages_still_read_back(tiny):
    """Ids jump by 500 groups before frame 20, as a day's held frames do after evictions under `keep`: the
    age taught after the gap spans it, and read back through the held frames it is the true age again."""
    disc = WorldObject("red", "triangle", 2.0, 6.0, slot=2, scale=1.7)
    stream = Stream(30.0, "office", (disc,), ())
    frames = render_sampled(stream)
    time_question = next(q for q in questions_for(stream, random.Random(2)) if q.kind == "time")
    sample = build_sample(tiny, frames, [Stop(len(frames), [Turn(time_question)])], gap=(20, 500))
    cache = CappedKVCache(tiny.geometry(), None)
    with torch.no_grad():
        for block in sample.blocks:
            cache.arriving(block.meta)
            tiny.forward(block, cache, logits=False)
    vision = [block for block in sample.blocks if block.meta.frame[0] >= 0]
    assert int(vision[1].meta.pos[0, 0]) - int(vision[0].meta.pos[0, -1]) == 501  # the next group, 500 later
    position, fed, answer = sample.asked[0]
    assert read_age(answer).seconds > 500
    read_back = with_stream_time(answer, cache, position, 1.0, SAMPLE_FPS, fed)
    assert read_back == "About 30 seconds ago (at 0:02).", read_back  # first seen at 2.0 s, asked at 30 s: 28 s
