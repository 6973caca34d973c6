"""The synthetic world's pixels: scene backgrounds, event objects, distractors, lighting noise and camera
shake, drawn deterministically for a stream at any time and size (OpenCV, RGB uint8)."""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from potwatch.world.demo_scene import _background as kitchen_background
from potwatch.world.stream import COLOURS, SLOTS, Distractor, Stream, WorldObject


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
