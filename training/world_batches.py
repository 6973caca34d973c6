"""What each training step of the `tiny` model sees, drawn from the synthetic world in a worker process:
streams, the stops where questions are asked, the rendered frames and the per-token labels.

- Vision steps (`vision_batch`): single temporal groups of frames, mostly with an object in view, and
  their per-token colour and shape labels; the language model is not run.
- Question steps (`question_batch`): streams of one length, log-uniform up to a maximum that grows over
  the run (a length curriculum), with every question that applies asked at the end (up to
  `END_QUESTIONS`) and, in some streams, a few asked mid-stream with more video after them; a "now"
  question at every mid-stream stop, where something is in view half the time. A share of the batches
  are short, clean one-object streams (`easy_stream`)."""

from __future__ import annotations

import math
import random

import torch

from potwatch.world.labels import stream_token_labels, token_labels
from potwatch.world.questions import now_moments, questions_for
from potwatch.world.render import render, render_sampled
from potwatch.world.stream import easy_stream, random_stream
from world_samples import Stop, Thinning, Turn, pick_turns

SIZES = ((224, 168), (320, 240), (256, 144))  # render sizes (4:3 twice as often as 16:9)
EASY_SHARE = 0.15  # of question batches: short, clean streams with one object in view most of the time
END_QUESTIONS = 10
MID_STOPS = ((0, 1, 2), (0.45, 0.4, 0.15))  # how many mid-stream stops a stream gets, and how often
MID_QUESTIONS = 3  # at most, besides the "now" question
# Streams whose temporal ids jump inside the video, as a capped cache's held frames do under `keep` after
# evictions, and as a day-long stream's do: the model then meets distances far beyond a 96 s stream.
GAP_SHARE = 0.2
# More streams with two or three objects than the held-out sets have: telling which object a question
# means ("What colour was the box?") and which came first was the weakest skill (54% and 45% after 40 min).
TRAINING_COUNTS = (0.08, 0.27, 0.35, 0.30)
# Streams whose older visual tokens are thinned as a capped cache thins them (object tokens mostly kept,
# background mostly dropped), so the model answers from what compression leaves.
THIN_SHARE = 0.3
GAP_GROUPS = (8, 3000)  # log-uniform


def choose_size(rng: random.Random) -> tuple[int, int]:
    return rng.choice(SIZES[:2] * 2 + SIZES[2:])


def token_grid(processor, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of the language model's tokens for frames of this size."""
    grid_h, grid_w = processor.grid_for(height, width)
    return grid_h // processor.merge_size, grid_w // processor.merge_size


def vision_batch(rng: random.Random, processor, groups: int) -> list[tuple]:
    """`groups` (frames, colour labels, shape labels) of one temporal group (two frames) each, from random
    streams at random moments, four in five of them with an object in view."""
    items = []
    size = choose_size(rng)
    rows, cols = token_grid(processor, size[1], size[0])
    while len(items) < groups:
        stream = random_stream(rng, max_s=40.0)
        times = stream.frame_times
        if len(times) < 2:
            continue
        showing = [i for i in range(0, len(times) - 1, 2) if stream.in_view(times[i]) or stream.in_view(times[i + 1])]
        pool = showing if showing and rng.random() < 0.8 else list(range(0, len(times) - 1, 2))
        first = rng.choice(pool)
        moments = times[first:first + 2]
        colour, shape = token_labels(stream, moments, rows, cols)
        items.append(([render(stream, t, size) for t in moments], colour, shape))
    return items


def plan_stops(stream, rng: random.Random) -> list[Stop]:
    """Where questions are asked in `stream`, and which: mid-stream stops (whole groups, at least 4 frames
    before the end), then every question at the end."""
    frames = len(stream.frame_times)
    stops = []
    count = rng.choices(*MID_STOPS)[0] if frames >= 12 else 0
    for _ in range(count):
        something = now_moments(stream, True)
        candidates = [n for n in something if n <= frames - 4] if rng.random() < 0.5 else []
        cut = rng.choice(candidates) if candidates else 2 * rng.randrange(2, (frames - 4) // 2 + 1)
        if any(stop.frames == cut for stop in stops):
            continue
        questions = questions_for(stream.cut(cut), rng)
        now = [q for q in questions if q.kind == "now"]
        others = [q for q in questions if q.kind != "now"]
        turns = pick_turns(others, rng, rng.randint(1, MID_QUESTIONS)) + [Turn(q) for q in now]
        rng.shuffle(turns)
        stops.append(Stop(cut, turns))
    stops.sort(key=lambda stop: stop.frames)
    stops.append(Stop(frames, pick_turns(questions_for(stream, rng), rng, END_QUESTIONS)))
    return stops


def question_batch(rng: random.Random, processor, tokens_per_step: int, max_s: float,
                   easy_share: float = EASY_SHARE) -> list[tuple]:
    """(frames, stops, labels, gap, thinning) of streams of one length, as many as fit `tokens_per_step`."""
    easy = rng.random() < easy_share
    size = choose_size(rng)
    rows, cols = token_grid(processor, size[1], size[0])
    seconds = None
    if not easy:
        seconds = math.exp(rng.uniform(math.log(4.0), math.log(max(max_s, 4.0))))
        seconds = max(4.0, round(seconds * 2) / 2)
    per_stream = int(seconds or 12) * rows * cols + 40 * (END_QUESTIONS + 4)
    count = max(2, min(32, tokens_per_step // per_stream))
    plans = []
    for _ in range(count):
        stream = easy_stream(rng) if easy else random_stream(rng, seconds=seconds, counts=TRAINING_COUNTS)
        labels = stream_token_labels(stream, processor.temporal_patch_size, rows, cols)
        plans.append((render_sampled(stream, size), plan_stops(stream, rng), labels, plan_gap(stream, rng),
                      plan_thinning(rng)))
    return plans


def plan_thinning(rng: random.Random) -> Thinning | None:
    if rng.random() >= THIN_SHARE:
        return None
    return Thinning(recent=rng.randint(2, 8), objects=rng.uniform(0.5, 1.0),
                    background=math.exp(rng.uniform(math.log(0.03), math.log(0.5))), seed=rng.randrange(2**31))


def plan_gap(stream, rng: random.Random) -> tuple[int, int] | None:
    """(frame, groups): where the temporal ids jump and by how much, for a share of the streams."""
    groups = len(stream.frame_times) // 2
    if groups < 4 or rng.random() >= GAP_SHARE:
        return None
    jump = math.exp(rng.uniform(math.log(GAP_GROUPS[0]), math.log(GAP_GROUPS[1])))
    return 2 * rng.randrange(1, groups), int(jump)


class WorldBatches(torch.utils.data.IterableDataset):
    """Endless batches for the steps of a run: `vision_steps` vision batches, then question batches with
    the length curriculum (maximum length from `start_s` to 96 s over `curriculum_steps`)."""

    def __init__(self, processor, seed: int, tokens_per_step: int, vision_steps: int, vision_groups: int,
                 curriculum_steps: int, start_s: float, first_step: int = 0):
        self.processor, self.seed, self.tokens_per_step = processor, seed, tokens_per_step
        self.vision_steps, self.vision_groups = vision_steps, vision_groups
        self.curriculum_steps, self.start_s, self.first_step = curriculum_steps, start_s, first_step

    def max_seconds(self, step: int) -> float:
        done = (step - self.vision_steps) / max(1, self.curriculum_steps)
        return self.start_s + (96.0 - self.start_s) * min(1.0, max(0.0, done))

    def __iter__(self):
        torch.set_num_threads(1)
        rng = random.Random(self.seed)
        step = self.first_step
        while True:
            if step < self.vision_steps:
                yield "vision", vision_batch(rng, self.processor, self.vision_groups)
            else:
                yield "questions", question_batch(rng, self.processor, self.tokens_per_step, self.max_seconds(step))
            step += 1
