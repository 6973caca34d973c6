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
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from potwatch.streaming.synthetic_scene import _background as kitchen_background

SAMPLE_FPS = 2.0  # the rate sessions sample frames at; facts and times follow it
TIME_TOLERANCE_S = 2.0  # a time answer within this many seconds of the truth counts as right

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


# --- streams ------------------------------------------------------------------------------------
def demo_stream() -> Stream:
    """The shipped demo video (`assets/demo.mp4`) as a world stream: a red box from 12.0 to 14.5 s."""
    from potwatch.streaming.synthetic_scene import BOX_SCALE, DEMO_SECONDS, EVENT_END_S, EVENT_START_S

    box = WorldObject("red", "box", EVENT_START_S, EVENT_END_S, slot=1, scale=BOX_SCALE)
    distractors = (Distractor("ball", (30, 90, 220), 10.0, 0.0), Distractor("square", (240, 200, 30), 15.0, 0.0))
    return Stream(DEMO_SECONDS, "kitchen", (box,), distractors)


def random_stream(rng: random.Random, seconds: float | None = None, min_s: float = 4.0, max_s: float = 96.0) -> Stream:
    """A stream with 0-3 events at random times, in a random scene; lengths log-uniform in [min_s, max_s]."""
    if seconds is None:
        seconds = math.exp(rng.uniform(math.log(min_s), math.log(max_s)))
        seconds = max(min_s, round(seconds * SAMPLE_FPS) / SAMPLE_FPS)
    count = rng.choices((0, 1, 2, 3), weights=(0.12, 0.38, 0.32, 0.18))[0]
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


# --- rendering ----------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def background(scene: str, width: int, height: int) -> np.ndarray:
    """The static picture of a scene (read-only)."""
    if scene == "kitchen":
        return kitchen_background(width, height)
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    floor_top = int(0.7 * height)
    if scene == "garden":
        sky = np.array([120, 180, 240], np.float32) * (1.0 - 0.2 * rows) + 30 * rows
        image = np.broadcast_to(sky, (height, width, 3)).copy()
        image[floor_top:] = np.array([70, 140, 60], np.float32)
        image = image.astype(np.uint8)
        cv2.rectangle(image, (0, int(0.45 * height)), (width - 1, floor_top), (120, 90, 60), -1)  # fence
        for x in range(0, width, max(width // 12, 1)):
            cv2.line(image, (x, int(0.45 * height)), (x, floor_top), (90, 66, 44), max(width // 160, 1))
        cv2.circle(image, (int(0.85 * width), int(0.15 * height)), max(width // 20, 3), (250, 240, 180), -1, cv2.LINE_AA)
    elif scene == "garage":
        wall = np.array([150, 150, 155], np.float32) * (1.0 - 0.2 * rows)
        image = np.broadcast_to(wall, (height, width, 3)).copy()
        image[floor_top:] = np.array([95, 95, 100], np.float32)
        image = image.astype(np.uint8)
        cv2.rectangle(image, (int(0.1 * width), int(0.1 * height)), (int(0.6 * width), floor_top), (175, 175, 180), -1)
        for y in range(int(0.1 * height), floor_top, max(height // 14, 1)):  # the roller door's slats
            cv2.line(image, (int(0.1 * width), y), (int(0.6 * width), y), (135, 135, 140), 1)
        cv2.rectangle(image, (int(0.7 * width), int(0.3 * height)), (int(0.95 * width), int(0.45 * height)), (60, 60, 64), -1)
    else:  # office
        wall = np.array([200, 210, 220], np.float32) * (1.0 - 0.15 * rows)
        image = np.broadcast_to(wall, (height, width, 3)).copy()
        image[floor_top:] = np.array([80, 90, 110], np.float32)
        image = image.astype(np.uint8)
        cv2.rectangle(image, (int(0.55 * width), int(0.12 * height)), (int(0.9 * width), int(0.4 * height)), (40, 44, 52), -1)
        cv2.rectangle(image, (int(0.05 * width), int(0.5 * height)), (int(0.45 * width), int(0.56 * height)), (150, 110, 80), -1)
    image.setflags(write=False)
    return image


def draw_object(image: np.ndarray, obj: WorldObject) -> None:
    """An event object standing on the floor at its slot (the box as the demo's delivery box)."""
    height, width = image.shape[:2]
    colour = COLOURS[obj.colour]
    centre = int(SLOTS[obj.slot] * width)
    bottom = int(0.92 * height)
    half_w = int(0.11 * width * obj.scale)
    tall = int(0.2 * height * obj.scale)
    if obj.shape == "box":
        x0, y0 = centre - half_w, bottom - tall
        cv2.rectangle(image, (x0, y0), (centre + half_w, bottom), colour, -1)
        cv2.line(image, (x0, y0 + tall // 2), (centre + half_w, y0 + tall // 2), (250, 230, 200), max(height // 60, 2))
    elif obj.shape == "disc":
        radius = int(0.1 * height * obj.scale * 1.1)
        cv2.circle(image, (centre, bottom - radius), radius, colour, -1, cv2.LINE_AA)
    else:
        points = np.array([[centre - half_w, bottom], [centre + half_w, bottom], [centre, bottom - int(tall * 1.2)]], np.int32)
        cv2.fillConvexPoly(image, points, colour, cv2.LINE_AA)


def draw_distractor(image: np.ndarray, thing: Distractor, time_s: float) -> None:
    height, width = image.shape[:2]
    travel = (time_s / thing.period_s + thing.phase) % 1.0
    if thing.kind == "ball":  # crosses left to right, bouncing on the floor line
        radius = max(int(0.045 * width), 3)
        x = int(-radius + travel * (width + 2 * radius))
        y = int(0.7 * height) - radius - int(abs(math.sin(math.pi * time_s / 1.25)) * 0.25 * height)
        cv2.circle(image, (x, y), radius, thing.colour, -1, cv2.LINE_AA)
    else:  # drifts right to left along the wall
        side = max(int(0.05 * width), 3)
        x = int(width + side - travel * (width + 2 * side))
        y = int(0.5 * height + 0.06 * height * math.sin(2 * math.pi * time_s / 5.0))
        cv2.rectangle(image, (x - side // 2, y - side // 2), (x + side // 2, y + side // 2), thing.colour, -1)


def render(stream: Stream, time_s: float, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """The RGB frame (HxWx3 uint8) of `stream` at `time_s`, `size` = (width, height)."""
    width, height = size
    image = background(stream.scene, width, height).copy()
    for thing in stream.distractors:
        draw_distractor(image, thing, time_s)
    for obj in stream.events:
        if obj.visible_at(time_s):
            draw_object(image, obj)
    frame_rng = np.random.default_rng((stream.seed, int(round(time_s * 1000))))
    if stream.jitter:
        shift = stream.jitter * width / 320.0
        dx, dy = frame_rng.uniform(-shift, shift, size=2)
        matrix = np.float32([[1, 0, dx], [0, 1, dy]])
        image = cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
    if stream.noise:
        gain = 1.0 + stream.noise * (0.06 * math.sin(2 * math.pi * time_s / 7.0 + stream.seed % 7) + frame_rng.normal(0, 0.015))
        image = cv2.convertScaleAbs(image, alpha=gain)
        up, down = _noise_bank(height, width, stream.noise)[int(frame_rng.integers(NOISE_BANK))]
        image = cv2.subtract(cv2.add(image, up), down)
    return image


NOISE_BANK = 8


@lru_cache(maxsize=8)
def _noise_bank(height: int, width: int, level: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """A few frames of pixel noise (sigma 4 x level), split into the parts to add and to subtract:
    drawing fresh Gaussian noise for every frame costs more than the rest of the rendering."""
    rng = np.random.default_rng(int(level * 1000) + height * 7 + width)
    bank = []
    for _ in range(NOISE_BANK):
        noise = np.rint(rng.normal(0, 4.0 * level, (height, width, 3))).clip(-255, 255)
        bank.append((noise.clip(0, None).astype(np.uint8), (-noise).clip(0, None).astype(np.uint8)))
    return bank


def render_sampled(stream: Stream, size: tuple[int, int] = (320, 240)) -> list[np.ndarray]:
    """Every frame a session samples from `stream`, at SAMPLE_FPS."""
    return [render(stream, t, size) for t in stream.frame_times]
