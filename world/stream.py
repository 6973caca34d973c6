"""A synthetic world for video QA, deterministic from a seed: scenes, objects that come and go, and
questions about them with their true answers.

Each stream has a background (the demo's kitchen among them), lighting noise, camera jitter and
small moving distractors. Its *events* are larger objects of 6 colours and 3 shapes that enter, sit on
the floor a while and leave. The `tiny` model is trained on these streams, held-out sets come from
seeds training never used (`potwatch make-qa`), and the demo video is one such stream: a red box in
the kitchen from 12.0 s to 14.5 s.

Facts are computed from the frames a session sees, sampled at `SAMPLE_FPS` (frame i at i / 2 s), so
an answer is right about what the model was shown, not about what happened between frames."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace


SAMPLE_FPS = 2.0  # the rate sessions sample frames at; facts and times follow it
TIME_TOLERANCE_S = 2.0  # the first sets' clock-time answers ("At 0:12.") were right within this many seconds

COLOURS = {
    "red": (235, 20, 20),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (30, 170, 60),
    "blue": (30, 80, 230),
    "purple": (150, 40, 190),
}
SHAPES = ("box", "disc", "triangle")
SCENES = ("kitchen", "garage", "garden", "office")
SCENE_WORDS = {"kitchen": "the kitchen", "garage": "the garage", "garden": "the garden", "office": "the office"}
SLOTS = (0.19, 0.41, 0.63, 0.85)  # centres of the floor places an object can take, as fractions of the width
NUMBER_WORDS = ("None", "One", "Two", "Three", "Four")
# Object sizes relative to a 0.22 x 0.2 box. At the tiny model's 112 x 84 pixels that box spans about
# one token, and a 1.3M model trained on the full mix never learnt to see it (measured); at 2x it learnt
# colours in 60-80 steps. So events are 1.6x to 1.9x (the demo's box 1.8x), about 2 x 2 tokens.
EVENT_SCALES = (1.6, 1.9)


@dataclass(frozen=True)
class WorldObject:
    """An event: an object that sits on the floor at `slot` from `start_s` to `end_s`."""

    colour: str
    shape: str
    start_s: float
    end_s: float
    slot: int
    scale: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def visible_at(self, time_s: float) -> bool:
        return self.start_s <= time_s < self.end_s


@dataclass(frozen=True)
class Distractor:
    """A small thing that keeps moving (a bouncing ball or a drifting square); never an event."""

    kind: str  # "ball" or "square"
    colour: tuple[int, int, int]
    period_s: float
    phase: float


@dataclass(frozen=True)
class Stream:
    """One video of the world: what a renderer draws and what questions are asked about."""

    seconds: float
    scene: str
    events: tuple[WorldObject, ...]
    distractors: tuple[Distractor, ...]
    noise: float = 0.0  # lighting noise: brightness wobble and pixel noise, 0 for a clean video
    jitter: int = 0  # camera shake in pixels at 320 px width, 0 for a still camera
    seed: int = 0

    @property
    def frame_times(self) -> list[float]:
        """The times of the frames a session samples at SAMPLE_FPS."""
        return [i / SAMPLE_FPS for i in range(int(math.floor(self.seconds * SAMPLE_FPS + 1e-9)))]

    def seen(self, event: WorldObject, until_s: float | None = None) -> list[float]:
        """Sampled times (up to `until_s`) at which `event` is in view."""
        return [t for t in self.frame_times if event.visible_at(t) and (until_s is None or t <= until_s)]

    def events_seen(self, until_s: float | None = None) -> list[WorldObject]:
        """Events in view in at least one sampled frame, in order of first sight."""
        found = [e for e in self.events if self.seen(e, until_s)]
        return sorted(found, key=lambda e: self.seen(e)[0])

    def in_view(self, time_s: float) -> list[WorldObject]:
        """Events in view at `time_s`, left to right."""
        return sorted((e for e in self.events if e.visible_at(time_s)), key=lambda e: e.slot)

    def cut(self, frames: int) -> "Stream":
        """The stream as seen after its first `frames` sampled frames: a question asked then sees these."""
        return replace(self, seconds=frames / SAMPLE_FPS)


# --- streams ------------------------------------------------------------------------------------
def demo_stream() -> Stream:
    """The shipped demo video (`assets/demo.mp4`) as a world stream: a red box from 12.0 to 14.5 s."""
    from potwatch.world.demo_scene import BOX_SCALE, DEMO_SECONDS, EVENT_END_S, EVENT_START_S

    box = WorldObject("red", "box", EVENT_START_S, EVENT_END_S, slot=1, scale=BOX_SCALE)
    distractors = (Distractor("ball", (30, 90, 220), 10.0, 0.0), Distractor("square", (240, 200, 30), 15.0, 0.0))
    return Stream(DEMO_SECONDS, "kitchen", (box,), distractors)


EVENT_COUNTS = (0.12, 0.38, 0.32, 0.18)  # how often a stream has 0, 1, 2 or 3 events (held-out sets)


def random_stream(rng: random.Random, seconds: float | None = None, min_s: float = 4.0, max_s: float = 96.0,
                  counts: tuple[float, ...] = EVENT_COUNTS) -> Stream:
    """A stream with 0-3 events at random times (`counts` weighs how many), in a random scene; lengths
    log-uniform in [min_s, max_s]."""
    if seconds is None:
        seconds = math.exp(rng.uniform(math.log(min_s), math.log(max_s)))
        seconds = max(min_s, round(seconds * SAMPLE_FPS) / SAMPLE_FPS)
    count = rng.choices((0, 1, 2, 3), weights=counts)[0]
    colours = rng.sample(list(COLOURS), count)  # one colour per event, so "the red one" is unique
    events: list[WorldObject] = []
    for colour in colours:
        for _ in range(50):
            longest = max(1.5, min(16.0, 0.6 * seconds))
            duration = math.exp(rng.uniform(math.log(1.0), math.log(longest)))
            start = rng.uniform(0.0, max(0.0, seconds - duration))
            candidate = WorldObject(colour, rng.choice(SHAPES), start, start + duration, rng.randrange(len(SLOTS)),
                                    rng.uniform(*EVENT_SCALES))
            if _fits(candidate, events, seconds):
                events.append(candidate)
                break
    distractors = tuple(
        Distractor(rng.choice(("ball", "square")), tuple(rng.randrange(40, 250) for _ in range(3)),
                   rng.uniform(6.0, 20.0), rng.random())
        for _ in range(rng.choice((0, 1, 2, 2)))
    )
    return Stream(
        seconds=seconds,
        scene=rng.choice(SCENES),
        events=tuple(events),
        distractors=distractors,
        noise=rng.choice((0.0, 0.5, 1.0)),
        jitter=rng.choice((0, 0, 1, 2)),
        seed=rng.randrange(2**31),
    )


def easy_stream(rng: random.Random, scales: tuple[float, float] = EVENT_SCALES) -> Stream:
    """A short, clean stream with one object in view most of the time: the items a model learns to see
    from before it can find a brief event in a long, noisy stream (training mixes both)."""
    seconds = rng.choice([4.0, 5.0, 6.0, 8.0, 10.0, 12.0])
    start = rng.uniform(0.0, 0.3 * seconds)
    end = rng.uniform(0.75 * seconds, seconds + 1.0)
    obj = WorldObject(rng.choice(list(COLOURS)), rng.choice(SHAPES), start, end, rng.randrange(len(SLOTS)),
                      rng.uniform(*scales))
    return Stream(seconds, rng.choice(SCENES), (obj,), (), seed=rng.randrange(2**31))


def _fits(candidate: WorldObject, events: list[WorldObject], seconds: float) -> bool:
    """Seen in at least one sampled frame; never two objects in one place or neighbouring places at
    once; first sights at least 2 s apart, so "which came first" always has an answer."""
    probe = Stream(seconds, "kitchen", (candidate,), ())
    seen = probe.seen(candidate)
    if not seen:
        return False
    for other in events:
        overlap = candidate.start_s < other.end_s and other.start_s < candidate.end_s
        if overlap and abs(candidate.slot - other.slot) < 2:  # neighbouring places touch at large scales
            return False
        if abs(seen[0] - Stream(seconds, "kitchen", (other,), ()).seen(other)[0]) < 2.0:
            return False
    return True
