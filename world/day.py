"""A day of the synthetic world: one camera on one scene for hours, objects that come and go (some for
seconds, some for an hour), and the questions a user asks every so often while the stream goes on.

Each colour-and-shape pair comes at most once a day, so a question names one event without a time
("Did you see a red box?"); some pairs never come, for "no" answers. Facts are computed from the event
times directly (a day has 172,800 sampled frames: too many to walk per question). Deterministic from
the seed; `hours` scales the day down for short runs (the event count and the longest stays shrink with
it, brief events stay brief)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from potwatch.world.questions import PHRASINGS, WorldQuestion, list_objects, with_article
from potwatch.world.stream import COLOURS, SAMPLE_FPS, SCENE_WORDS, SCENES, SHAPES, SLOTS, Stream, WorldObject
from potwatch.streaming.age_phrases import say_age

MOST_EVENTS = 12  # of the 18 colour-and-shape pairs; the others never come
BRIEF_S = (4.0, 30.0)  # a brief stay, log-uniform
LONG_S = (120.0, 3600.0)  # a long stay (capped at a tenth of the day)
TARGET_AGES_S = (60.0, 600.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 20 * 3600.0)  # what the user asks about


@dataclass(frozen=True)
class Day:
    stream: Stream  # its events are the day's objects; render it with world.render
    never: tuple[tuple[str, str], ...]  # pairs that never come

    @property
    def seconds(self) -> float:
        return self.stream.seconds

    @property
    def frames(self) -> int:
        return int(math.floor(self.seconds * SAMPLE_FPS + 1e-9))


def first_seen(obj: WorldObject) -> float:
    """The first sampled instant at which `obj` is in view (its start, on the sampling grid)."""
    return math.ceil(obj.start_s * SAMPLE_FPS - 1e-9) / SAMPLE_FPS


def make_day(seed: int | str, hours: float = 24.0) -> Day:
    """Events spread over the day in free floor places, every pair at most once, first sights 2 s apart."""
    rng = random.Random(f"potwatch-day:{seed}")
    seconds = hours * 3600.0
    count = max(4, min(MOST_EVENTS, int(seconds // 300)))
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    rng.shuffle(pairs)
    coming, never = pairs[:count], tuple(sorted(pairs[count:]))
    events: list[WorldObject] = []
    for colour, shape in coming:
        for _ in range(200):
            if rng.random() < 0.5:
                stay = math.exp(rng.uniform(*map(math.log, BRIEF_S)))
            else:
                stay = math.exp(rng.uniform(math.log(LONG_S[0]), math.log(max(LONG_S[0] + 1, min(LONG_S[1], seconds / 10)))))
            stay = min(stay, seconds / 4)
            start = rng.uniform(0.0, seconds - stay)
            candidate = WorldObject(colour, shape, start, start + stay, rng.randrange(len(SLOTS)), rng.uniform(1.6, 1.9))
            if _fits(candidate, events):
                events.append(candidate)
                break
    events.sort(key=lambda e: e.start_s)
    stream = Stream(seconds, rng.choice(SCENES), tuple(events), (), noise=rng.choice((0.0, 0.5)), jitter=0,
                    seed=rng.randrange(2**31))
    return Day(stream, never)


def _fits(candidate: WorldObject, events: list[WorldObject]) -> bool:
    """In view in one sampled frame at least; never beside another object at once; first sights 2 s apart."""
    if first_seen(candidate) >= candidate.end_s:
        return False
    for other in events:
        together = candidate.start_s < other.end_s and other.start_s < candidate.end_s
        if together and abs(candidate.slot - other.slot) < 2:
            return False
        if abs(first_seen(candidate) - first_seen(other)) < 2.0:
            return False
    return True


@dataclass
class DayQuestion:
    """A question asked after `frames` sampled frames, with the age of the event it names (None for "no"
    questions and "now")."""

    frames: int
    question: WorldQuestion
    age_s: float | None

    @property
    def asked_at_s(self) -> float:
        return self.frames / SAMPLE_FPS


def question_stops(day: Day, every_s: float) -> list[int]:
    """Frame counts (whole temporal groups) after which the user asks: every `every_s`, and a minute and
    ten minutes after each event first came (as people ask soon after something happened)."""
    def frames_at(seconds: float) -> int:
        frames = int(round(seconds * SAMPLE_FPS))
        return frames + frames % 2

    stops = set(range(frames_at(every_s), day.frames + 1, frames_at(every_s)))
    for event in day.stream.events:
        stops |= {frames_at(first_seen(event) + after) for after in (60.0, 600.0)}
    return sorted(frames for frames in stops if 0 < frames <= day.frames)


def day_questions(day: Day, every_s: float, seed: int | str = 0) -> list[DayQuestion]:
    """At every stop (`question_stops`): "Did you see a ...?" about the past events nearest each target
    age (each at most once a stop), about one pair that never comes, and "What is in view now?"."""
    rng = random.Random(f"potwatch-day-questions:{seed}")
    out: list[DayQuestion] = []
    for frames in question_stops(day, every_s):
        now_s = frames / SAMPLE_FPS
        past = [e for e in day.stream.events if first_seen(e) < now_s]
        chosen: list[WorldObject] = []
        for target in TARGET_AGES_S:
            candidates = [e for e in past if e not in chosen and 0.5 * target <= now_s - first_seen(e) <= 2.0 * target]
            if candidates:
                chosen.append(min(candidates, key=lambda e: abs(math.log((now_s - first_seen(e)) / target))))
        if not chosen and past:  # a short day: ask about the latest event anyway
            chosen.append(max(past, key=first_seen))
        for obj in chosen:
            age = now_s - first_seen(obj)
            out.append(DayQuestion(frames, _named(rng, obj.colour, obj.shape, age, first_seen(obj)), age))
        if day.never:
            colour, shape = rng.choice(day.never)
            out.append(DayQuestion(frames, _named(rng, colour, shape, None, None), None))
        out.append(DayQuestion(frames, _now(day, frames, rng), None))
    return out


def _named(rng: random.Random, colour: str, shape: str, age: float | None, seen_s: float | None) -> WorldQuestion:
    name = f"{colour} {shape}"
    question = rng.choice(PHRASINGS["presence_named"]).format(name=name)
    if age is None:
        answer, letter = f"No, I saw no {name}.", "B"
    else:
        answer, letter = f"Yes, {with_article(name)}, about {say_age(age)}.", "A"
    frame = None if seen_s is None else round(seen_s * SAMPLE_FPS)
    return WorldQuestion("presence", question, answer, ["yes", "no"], letter, truth={
        "kind": "presence", "yes": age is not None, "colours": [colour], "shapes": [shape]}, seen_frame=frame)


def _now(day: Day, frames: int, rng: random.Random) -> WorldQuestion:
    """What is in view at the last frame fed (objects arriving or leaving then count as in view)."""
    shown = day.stream.in_view((frames - 1) / SAMPLE_FPS)
    answer = f"{list_objects(shown).capitalize()}." if shown else f"Nothing, just {SCENE_WORDS[day.stream.scene]}."
    return WorldQuestion("now", rng.choice(PHRASINGS["now"]), answer, ["something", "nothing"], "A", truth={
        "kind": "now", "colours": sorted(o.colour for o in shown), "shapes": sorted(o.shape for o in shown)})
