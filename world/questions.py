"""Questions about a synthetic-world stream, with their true answers: free text for chat, and the same
question as a multiple-choice item in the format `potwatch bench --accuracy` reads.

Kinds: colour, shape, presence, order, count, now, time. A question is *early* when its answer rests
on an event that left within the first third of the stream: those are the ones a cache that keeps
only recent frames forgets.

Times are ages, counted back from the moment of the question ("About 35 seconds ago."): that is what
a model's relative positions carry, and potwatch adds the clock time when it answers (see
streaming/position_clock.py). The first held-out sets asked for clock times ("At 0:12."); the same
questions are asked again here, and `check_clock` still scores an answer's clock time against them.
"Now" questions can be asked mid-stream (`now_question`), where something is in view half the time."""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field

from potwatch.streaming.age_phrases import age_tolerance, read_age, say_age
from potwatch.world.stream import (
    COLOURS,
    NUMBER_WORDS,
    SAMPLE_FPS,
    SCENE_WORDS,
    SHAPES,
    TIME_TOLERANCE_S,
    Stream,
    WorldObject,
)

KINDS = ("colour", "shape", "presence", "order", "count", "now", "time")
EARLY_FRACTION = 1 / 3

PHRASINGS = {
    "colour_one": ("What colour was the object that came in?", "What colour was the thing that appeared?"),
    "colour": ("What colour was the {shape} that appeared?", "What colour was the {shape}?",
               "Which colour did the {shape} have?"),
    "shape": ("What shape was the {colour} object?", "What was the {colour} thing?",
              "Which shape did the {colour} object have?"),
    "presence": ("Did anything {colour} appear?", "Was there anything {colour}?", "Did you see anything {colour}?",
                 "Is anything {colour}?"),
    "presence_named": ("Did you see a {name}?", "Was there a {name}?", "Did a {name} come in?"),
    "order": ("Which came first, the {a} or the {b}?", "Which appeared earlier, the {a} or the {b}?"),
    "count": ("How many objects came in?", "How many objects appeared?", "How many things arrived?"),
    "now": ("What is in view now?", "What can you see right now?", "What is there now?"),
    "time": ("When did the {name} appear?", "At what time did the {name} come in?", "When was the {name} first seen?"),
}
# asked in place of the first ones half the time (drawn apart, so the rest of a set stays as it was)
NEW_TIME_PHRASINGS = ("How long ago did the {name} come in?", "How long ago was the {name} first seen?")


@dataclass
class WorldQuestion:
    """One question about a stream: `answer` is free text, `options`/`letter` its multiple-choice form."""

    kind: str
    question: str
    answer: str
    options: list[str]
    letter: str
    early: bool = False
    ask_at: float | None = None  # seconds into the stream; None asks at the end
    truth: dict = field(default_factory=dict)  # what `check_answer` compares a free-text answer with
    seen_frame: int | None = None  # time and "yes" answers: the sampled frame the event was first seen in

    def answer_with_age(self, age_s: float) -> str:
        """The answer said with another age in whole seconds (training says the position distance the model
        reads, which the session reads back to the true age on its grid)."""
        said = read_age(self.answer)
        if said is None:
            return self.answer
        return self.answer[:said.start] + say_age(age_s, whole_seconds=True) + self.answer[said.end:]

    def mc_entry(self, video: str, question_id: str) -> dict:
        """The item as `potwatch bench --accuracy` reads it."""
        entry = {"video": video, "question_id": question_id, "task_type": self.kind, "question": self.question,
                 "options": self.options, "answer": self.letter, "early": self.early, "free_answer": self.answer,
                 "truth": self.truth}
        if self.ask_at is not None:
            entry["ask_at"] = self.ask_at
        return entry


def clock(seconds: float) -> str:
    """m:ss, as answers write times."""
    whole = int(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def with_article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def list_objects(objects: list[WorldObject]) -> str:
    names = [with_article(o.name) for o in objects]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def questions_for(stream: Stream, rng: random.Random, new_phrasings: bool = True) -> list[WorldQuestion]:
    """Every kind of question the stream can answer at its end, each in a random phrasing (cut a stream
    with `Stream.cut` to ask mid-stream). `new_phrasings=False` keeps the first sets' time questions."""
    seen = stream.events_seen()
    end = stream.frame_times[-1]
    now_s = len(stream.frame_times) / SAMPLE_FPS  # the moment of the question: just after the last frame
    first = {o: stream.seen(o)[0] for o in seen}
    last = {o: stream.seen(o)[-1] for o in seen}
    early = {o: last[o] < EARLY_FRACTION * stream.seconds for o in seen}
    forms = random.Random(f"potwatch-forms:{stream.seed}:{len(stream.frame_times)}")
    out: list[WorldQuestion] = []

    def add(kind, question, answer, options, right, is_early=False, seen_at=None, shuffle=rng, **truth):
        shuffled = options[:]
        shuffle.shuffle(shuffled)
        letter = string.ascii_uppercase[shuffled.index(right)]
        frame = None if seen_at is None else round(seen_at * SAMPLE_FPS)
        out.append(WorldQuestion(kind, question, answer, shuffled, letter, is_early, truth=dict(kind=kind, **truth),
                                 seen_frame=frame))

    def age(obj) -> float:
        return now_s - first[obj]

    shapes_seen = [o.shape for o in seen]
    for obj in seen:
        if len(seen) == 1:
            phrase = rng.choice(PHRASINGS["colour_one"])
        elif shapes_seen.count(obj.shape) == 1:
            phrase = rng.choice(PHRASINGS["colour"]).format(shape=obj.shape)
        else:
            phrase = None
        if phrase:
            others = rng.sample([c for c in COLOURS if c != obj.colour], 3)
            add("colour", phrase, f"{obj.colour.capitalize()}.", [obj.colour] + others, obj.colour, early[obj],
                colours=[obj.colour])
        add("shape", rng.choice(PHRASINGS["shape"]).format(colour=obj.colour), f"A {obj.shape}.", list(SHAPES),
            obj.shape, early[obj], shapes=[obj.shape])
        phrase = rng.choice(PHRASINGS["time"])
        if new_phrasings and forms.random() < 0.5:
            phrase = forms.choice(NEW_TIME_PHRASINGS)
        options = _age_options(age(obj), now_s, _time_options(first[obj], stream.seconds, rng))
        add("time", phrase.format(name=obj.name), f"About {say_age(age(obj))}.", options, options[0], early[obj],
            seen_at=first[obj], seconds=first[obj], age=age(obj))
    # presence: one colour that came, one that did not (when there is one of each)
    present = [o for o in seen]
    absent = [c for c in COLOURS if c not in {o.colour for o in seen}]
    if present:
        obj = rng.choice(present)
        answer = f"Yes, {with_article(obj.name)}, about {say_age(age(obj))}."
        add("presence", rng.choice(PHRASINGS["presence"]).format(colour=obj.colour), answer, ["yes", "no"], "yes",
            early[obj], seen_at=first[obj], yes=True, colours=[obj.colour], shapes=[obj.shape])
    if absent:
        colour = rng.choice(absent)
        add("presence", rng.choice(PHRASINGS["presence"]).format(colour=colour), f"No, nothing {colour} appeared.",
            ["yes", "no"], "no", yes=False)
    if len(seen) >= 2:
        a, b = rng.sample(seen, 2)
        winner = a if first[a] < first[b] else b
        add("order", rng.choice(PHRASINGS["order"]).format(a=a.name, b=b.name), f"The {winner.name}.",
            [f"the {a.name}", f"the {b.name}"], f"the {winner.name}", early[winner], colours=[winner.colour])
    count = len(seen)
    add("count", rng.choice(PHRASINGS["count"]), f"{NUMBER_WORDS[count]}.", [w.lower() for w in NUMBER_WORDS[:4]],
        NUMBER_WORDS[count].lower(), any(early.values()), count=count)
    if steady_view(stream, len(stream.frame_times)):  # not while something is arriving or leaving
        now = stream.in_view(end)
        nothing = f"Nothing, just {SCENE_WORDS[stream.scene]}."
        answer = f"{list_objects(now).capitalize()}." if now else nothing
        right = list_objects(now) if now else "nothing"
        wrong = [list_objects([o]) for o in seen if o not in now] + [with_article(f"{c} {rng.choice(SHAPES)}") for c in absent]
        wrong = list(dict.fromkeys(w for w in wrong if w != right))[:2]
        if right != "nothing":
            wrong = ["nothing"] + wrong
        options = [right] + wrong[:3]
        add("now", rng.choice(PHRASINGS["now"]), answer, options, right,
            colours=sorted(o.colour for o in now), shapes=sorted(o.shape for o in now))
    if new_phrasings:  # presence of one named object: a question that names one event of a long day
        pairs_seen = {(o.colour, o.shape): o for o in seen}
        if seen and forms.random() < 0.5:
            obj = forms.choice(seen)
            colour, shape = obj.colour, obj.shape
            answer = f"Yes, {with_article(obj.name)}, about {say_age(age(obj))}."
        else:
            near = [(o.colour, s) for o in seen for s in SHAPES] + [(c, o.shape) for o in seen for c in COLOURS]
            pool = near if near and forms.random() < 0.5 else [(c, s) for c in COLOURS for s in SHAPES]
            colour, shape = forms.choice([pair for pair in pool if pair not in pairs_seen])
            obj, answer = None, f"No, I saw no {colour} {shape}."
        phrase = forms.choice(PHRASINGS["presence_named"]).format(name=f"{colour} {shape}")
        add("presence", phrase, answer, ["yes", "no"], "yes" if obj else "no", bool(obj) and early[obj],
            seen_at=first[obj] if obj else None, shuffle=forms, yes=obj is not None, colours=[colour], shapes=[shape])
    return out


def steady_view(stream: Stream, frames: int) -> bool:
    """Whether the last two of the first `frames` sampled frames show the same objects (a "now" question
    has one answer there)."""
    times = stream.frame_times[:frames]
    return len(times) < 2 or stream.in_view(times[-1]) == stream.in_view(times[-2])


def now_moments(stream: Stream, something: bool) -> list[int]:
    """Frame counts (whole temporal groups of two frames, at least 4 frames, and the end) after which the
    view is steady and shows something (or nothing): where a "now" question can be asked."""
    times = stream.frame_times
    counts = sorted(set(range(4, len(times) + 1, 2)) | {len(times)})
    return [n for n in counts if steady_view(stream, n) and bool(stream.in_view(times[n - 1])) == something]


def now_question(stream: Stream, rng: random.Random) -> tuple[int, WorldQuestion] | None:
    """A "now" question and the frame count to ask it after: something in view half the time, when the
    stream ever shows something steadily; else nothing, at the end when the end is steady."""
    something = now_moments(stream, True)
    nothing = now_moments(stream, False)
    if something and (not nothing or rng.random() < 0.5):
        frames = rng.choice(something)
    elif nothing:
        frames = len(stream.frame_times) if nothing[-1] == len(stream.frame_times) else rng.choice(nothing)
    else:
        return None
    question = next(q for q in questions_for(stream.cut(frames), rng) if q.kind == "now")
    question.ask_at = frames / SAMPLE_FPS
    return frames, question


def _age_options(truth_s: float, now_s: float, clocks: list[str]) -> list[str]:
    """The true age, then the ages of the other multiple-choice clock times, each said differently: a time
    after the question, or one said as another already is, gives way to an older age."""
    said = [say_age(truth_s)]
    for text in clocks[1:]:
        minutes, seconds = text.split(":")
        age = now_s - (int(minutes) * 60 + int(seconds))
        while age < 1 or say_age(age) in said:
            age = max(age, 1) + 5
        said.append(say_age(age))
    return said


def _time_options(truth: float, seconds: float, rng: random.Random) -> list[str]:
    """The true time and three others at least 5 s from it and from each other, inside the stream."""
    chosen = [float(int(truth))]
    candidates = [float(s) for s in range(0, int(seconds))]
    rng.shuffle(candidates)
    for candidate in candidates:
        if all(abs(candidate - c) >= 5 for c in chosen):
            chosen.append(candidate)
        if len(chosen) == 4:
            break
    while len(chosen) < 4:  # a short stream: times after it
        chosen.append(max(chosen) + 5)
    return [clock(c) for c in chosen]


# --- checking free-text answers -----------------------------------------------------------------
_TIME = re.compile(r"(\d+):(\d\d)")
_NUMBERS = {w.lower(): i for i, w in enumerate(NUMBER_WORDS)} | {"no": 0, "zero": 0}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def check_answer(truth: dict, answer: str) -> bool:
    """Whether a free-text answer says what `truth` (a question's `truth`) holds."""
    words = _words(answer)
    colours = [w for w in words if w in COLOURS]
    shapes = [w for w in words if w in SHAPES]
    kind = truth["kind"]
    if kind == "colour":
        return colours[:1] == truth["colours"] and len(set(colours)) == 1
    if kind == "shape":
        return shapes[:1] == truth["shapes"]
    if kind == "presence":
        said_yes = bool(words) and words[0] == "yes"
        if not truth["yes"]:
            return bool(words) and words[0] == "no"
        return said_yes and colours[:1] == truth["colours"] and shapes[:1] == truth["shapes"]
    if kind == "order":
        return colours[:1] == truth["colours"]
    if kind == "count":
        numbers = [_NUMBERS[w] for w in words if w in _NUMBERS]
        return numbers[:1] == [truth["count"]]
    if kind == "now":
        if not truth["colours"]:
            return words[:1] == ["nothing"]
        return sorted(colours) == truth["colours"] and sorted(shapes) == truth["shapes"]
    if kind == "time":
        said = read_age(answer)
        return said is not None and abs(said.seconds - truth["age"]) <= age_tolerance(truth["age"])
    raise ValueError(f"unknown question kind {kind!r}")


def check_clock(truth: dict, answer: str) -> bool:
    """The first sets' time check: the answer's clock time ("at 0:12") within 2 s of the first sight."""
    match = _TIME.search(answer)
    return bool(match) and abs(int(match.group(1)) * 60 + int(match.group(2)) - truth["seconds"]) <= TIME_TOLERANCE_S
