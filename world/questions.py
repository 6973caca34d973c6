"""Questions about a synthetic-world stream, with their true answers: free text for chat, and the same
question as a multiple-choice item in the format `potwatch bench --accuracy` reads.

Kinds: colour, shape, presence, order, count, now, time. A question is *early* when its answer rests
on an event that left within the first third of the stream: those are the ones a cache that keeps
only recent frames forgets."""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field

from potwatch.world.stream import COLOURS, NUMBER_WORDS, SCENE_WORDS, SHAPES, TIME_TOLERANCE_S, Stream, WorldObject

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
    "order": ("Which came first, the {a} or the {b}?", "Which appeared earlier, the {a} or the {b}?"),
    "count": ("How many objects came in?", "How many objects appeared?", "How many things arrived?"),
    "now": ("What is in view now?", "What can you see right now?", "What is there now?"),
    "time": ("When did the {name} appear?", "At what time did the {name} come in?", "When was the {name} first seen?"),
}


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


def questions_for(stream: Stream, rng: random.Random) -> list[WorldQuestion]:
    """Every kind of question the stream can answer at its end, each in a random phrasing."""
    seen = stream.events_seen()
    end = stream.frame_times[-1]
    first = {o: stream.seen(o)[0] for o in seen}
    last = {o: stream.seen(o)[-1] for o in seen}
    early = {o: last[o] < EARLY_FRACTION * stream.seconds for o in seen}
    out: list[WorldQuestion] = []

    def add(kind, question, answer, options, right, is_early=False, **truth):
        shuffled = options[:]
        rng.shuffle(shuffled)
        letter = string.ascii_uppercase[shuffled.index(right)]
        out.append(WorldQuestion(kind, question, answer, shuffled, letter, is_early, truth=dict(kind=kind, **truth)))

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
        add("time", rng.choice(PHRASINGS["time"]).format(name=obj.name), f"At {clock(first[obj])}.",
            _time_options(first[obj], stream.seconds, rng), clock(first[obj]), early[obj], seconds=first[obj])
    # presence: one colour that came, one that did not (when there is one of each)
    present = [o for o in seen]
    absent = [c for c in COLOURS if c not in {o.colour for o in seen}]
    if present:
        obj = rng.choice(present)
        answer = f"Yes, {with_article(obj.name)}, from about {clock(first[obj])} to {clock(last[obj])}."
        add("presence", rng.choice(PHRASINGS["presence"]).format(colour=obj.colour), answer, ["yes", "no"], "yes",
            early[obj], yes=True, colours=[obj.colour], shapes=[obj.shape])
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
    now = stream.in_view(end)
    before = stream.in_view(stream.frame_times[-2]) if len(stream.frame_times) > 1 else now
    if now == before:  # not while something is arriving or leaving
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
    return out


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
        match = _TIME.search(answer)
        return bool(match) and abs(int(match.group(1)) * 60 + int(match.group(2)) - truth["seconds"]) <= TIME_TOLERANCE_S
    raise ValueError(f"unknown question kind {kind!r}")
