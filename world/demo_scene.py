"""The demo scene, rendered deterministically in memory: a static kitchen corner with a pot on a stove,
a ball and a small square moving across it, and one distinct event — a bright red "delivery" box that
sits on the floor for a few seconds at about 40% of the video.

`assets/make_demo_video.py` encodes it to `assets/demo.mp4`; tests and benchmarks render the same
frames here without decoding, and know exactly when the event happens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache

import cv2
import numpy as np

DEMO_SECONDS = 30.0
DEMO_SIZE = (320, 240)  # (width, height)
DEMO_FPS = 10.0
EVENT_FRACTION = 0.4  # the event starts this far into the video
EVENT_LENGTH_S = 2.5


def event_window(seconds: float) -> tuple[float, float]:
    """(start, end) in seconds of the red-box event in a video of this length."""
    start = EVENT_FRACTION * seconds
    return start, min(start + EVENT_LENGTH_S, seconds)


EVENT_START_S, EVENT_END_S = event_window(DEMO_SECONDS)  # 12.0, 14.5 in the 30 s demo

RED = (235, 20, 20)
BOX_SCALE = 1.8  # the box is 0.4 x 0.36 of the frame: about 2 x 2 tokens at the tiny model's 112 x 84 pixels


@lru_cache(maxsize=4)
def _background(width: int, height: int) -> np.ndarray:
    """The static scene: wall, window, floor, counter, stove and pot. Smooth, so it encodes small."""
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    wall = np.array([222, 205, 170], np.float32) * (1.0 - 0.25 * rows)
    image = np.broadcast_to(wall, (height, width, 3)).copy()
    floor_top = int(0.7 * height)
    floor_shade = np.linspace(1.0, 0.75, height - floor_top, dtype=np.float32)[:, None, None]
    image[floor_top:] = np.array([150, 105, 70], np.float32) * floor_shade
    image = image.astype(np.uint8)
    for x in range(0, width, max(width // 8, 1)):  # floor boards
        cv2.line(image, (x, floor_top), (x - width // 10, height), (120, 84, 56), 1, cv2.LINE_AA)
    # window with a sky gradient and a cross frame
    x0, y0, x1, y1 = int(0.06 * width), int(0.08 * height), int(0.34 * width), int(0.42 * height)
    sky = np.linspace(1.0, 0.8, y1 - y0, dtype=np.float32)[:, None, None] * np.array([150, 200, 245], np.float32)
    image[y0:y1, x0:x1] = sky.astype(np.uint8)
    cv2.rectangle(image, (x0, y0), (x1, y1), (245, 245, 240), max(width // 100, 2))
    cv2.line(image, ((x0 + x1) // 2, y0), ((x0 + x1) // 2, y1), (245, 245, 240), max(width // 160, 1))
    cv2.line(image, (x0, (y0 + y1) // 2), (x1, (y0 + y1) // 2), (245, 245, 240), max(width // 160, 1))
    # counter with a stove and a pot on it
    cx0, cy0 = int(0.58 * width), int(0.5 * height)
    cv2.rectangle(image, (cx0, cy0), (width - 1, floor_top + int(0.1 * height)), (110, 110, 118), -1)
    cv2.rectangle(image, (cx0, cy0 - int(0.03 * height)), (width - 1, cy0), (70, 70, 76), -1)
    pot_cx, pot_w, pot_h = int(0.78 * width), int(0.16 * width), int(0.14 * height)
    pot_top = cy0 - int(0.03 * height) - pot_h
    cv2.rectangle(image, (pot_cx - pot_w // 2, pot_top), (pot_cx + pot_w // 2, pot_top + pot_h), (60, 64, 72), -1)
    cv2.ellipse(image, (pot_cx, pot_top), (pot_w // 2, max(pot_h // 5, 2)), 0, 0, 360, (90, 94, 104), -1, cv2.LINE_AA)
    cv2.line(image, (pot_cx - pot_w // 2 - width // 30, pot_top + pot_h // 3),
             (pot_cx - pot_w // 2, pot_top + pot_h // 3), (40, 40, 44), max(width // 120, 2), cv2.LINE_AA)
    image.setflags(write=False)
    return image


def render_frame(time_s: float, size: tuple[int, int] = DEMO_SIZE, seconds: float = DEMO_SECONDS) -> np.ndarray:
    """The RGB frame (HxWx3 uint8) at time_s of a video `seconds` long."""
    width, height = size
    image = _background(width, height).copy()
    radius = max(int(0.045 * width), 3)
    # a ball crossing left to right every 10 s, bouncing on the floor line
    travel = (time_s / 10.0) % 1.0
    ball_x = int(-radius + travel * (width + 2 * radius))
    ball_y = int(0.7 * height) - radius - int(abs(math.sin(math.pi * time_s / 1.25)) * 0.25 * height)
    cv2.circle(image, (ball_x, ball_y), radius, (30, 90, 220), -1, cv2.LINE_AA)
    # a small yellow square drifting right to left along the wall, slower
    side = max(int(0.05 * width), 3)
    drift = (time_s / 15.0) % 1.0
    square_x = int(width + side - drift * (width + 2 * side))
    square_y = int(0.5 * height + 0.06 * height * math.sin(2 * math.pi * time_s / 5.0))
    cv2.rectangle(image, (square_x - side // 2, square_y - side // 2), (square_x + side // 2, square_y + side // 2),
                  (240, 200, 30), -1)
    start, end = event_window(seconds)
    if start <= time_s < end:
        half_w, box_h = int(0.11 * BOX_SCALE * width), int(0.2 * BOX_SCALE * height)
        box_w = 2 * half_w
        bx, by = int(0.41 * width) - half_w, int(0.92 * height) - box_h
        cv2.rectangle(image, (bx, by), (bx + box_w, by + box_h), RED, -1)
        cv2.line(image, (bx, by + box_h // 2), (bx + box_w, by + box_h // 2), (250, 230, 200), max(height // 60, 2))
    return image


def render_frames(seconds: float = DEMO_SECONDS, size: tuple[int, int] = DEMO_SIZE,
                  fps: float = DEMO_FPS) -> Iterator[np.ndarray]:
    """Frames at i/fps for i = 0 .. seconds*fps - 1, the same ones the demo video encodes."""
    for i in range(int(round(seconds * fps))):
        yield render_frame(i / fps, size, seconds)
