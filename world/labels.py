"""Per-token labels of the world's frames: which event object (its colour and its shape) covers each
cell of the language model's token grid. Training gives the vision tower a dense signal with them (a
loss on every visual token, no language model needed), so it learns to see shapes as well as colours.

A cell is labelled with the object covering the most of it, in any frame of its temporal group, when
that object covers at least `MIN_COVER` of the cell; else "none". Distractors are never labelled."""

from __future__ import annotations

import numpy as np

from potwatch.world.render import draw_object
from potwatch.world.stream import COLOURS, SHAPES, Stream

COLOUR_CLASSES = ("none", *COLOURS)
SHAPE_CLASSES = ("none", *SHAPES)
MIN_COVER = 0.25
CELL_PX = 16  # drawing resolution of a cell: enough to measure coverage


def token_labels(stream: Stream, times: list[float], rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(colour class, shape class) of each cell, row-major [rows * cols], for a temporal group of frames
    at `times` whose tokens form a rows x cols grid."""
    cover = np.zeros((len(stream.events), rows, cols), dtype=np.float32)
    for index, obj in enumerate(stream.events):
        for time_s in times:
            if obj.visible_at(time_s):
                mask = np.zeros((rows * CELL_PX, cols * CELL_PX, 3), dtype=np.uint8)
                draw_object(mask, obj)
                share = (mask.max(axis=2) > 0).reshape(rows, CELL_PX, cols, CELL_PX).mean(axis=(1, 3))
                cover[index] = np.maximum(cover[index], share)
    colour = np.zeros(rows * cols, dtype=np.int64)
    shape = np.zeros(rows * cols, dtype=np.int64)
    if len(stream.events):
        best = cover.argmax(axis=0).reshape(-1)
        covered = cover.max(axis=0).reshape(-1) >= MIN_COVER
        for cell in np.flatnonzero(covered):
            obj = stream.events[best[cell]]
            colour[cell] = COLOUR_CLASSES.index(obj.colour)
            shape[cell] = SHAPE_CLASSES.index(obj.shape)
    return colour, shape


def stream_token_labels(stream: Stream, frames_per_group: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels of every temporal group of the stream's sampled frames (an odd last frame repeated, as a
    session flushes it): (colour, shape), each [groups * rows * cols] in token order."""
    times = list(stream.frame_times)
    while len(times) % frames_per_group:
        times.append(times[-1])
    labels = [token_labels(stream, times[i:i + frames_per_group], rows, cols) for i in range(0, len(times), frames_per_group)]
    return np.concatenate([c for c, _ in labels]), np.concatenate([s for _, s in labels])
