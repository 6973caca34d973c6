"""The shipped demo video and the in-memory scene it is rendered from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from potwatch.streaming.sources import FileSource
from potwatch.world.demo_scene import (
    EVENT_END_S,
    EVENT_START_S,
    RED,
    event_window,
    render_frame,
    render_frames,
)

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo.mp4"


def red_pixels(rgb: np.ndarray) -> int:
    r, g, b = (rgb[:, :, c].astype(int) for c in range(3))
    return int(((r > 180) & (g < 80) & (b < 80)).sum())


def test_event_constants():
    assert (EVENT_START_S, EVENT_END_S) == (12.0, 14.5)
    assert event_window(10.0) == (4.0, 6.5)


def test_demo_video_decodes_at_two_fps():
    assert DEMO.is_file() and DEMO.stat().st_size < 500 * 1024
    source = FileSource(DEMO, fps=2.0)
    frames = list(source)
    assert 58 <= len(frames) <= 62 and source.expected_frames == len(frames)
    assert all(f.rgb.shape == (240, 320, 3) for f in frames)
    before = [f for f in frames if EVENT_START_S - 2.0 <= f.time_s < EVENT_START_S]
    during = [f for f in frames if EVENT_START_S <= f.time_s < EVENT_END_S]
    after = [f for f in frames if f.time_s >= EVENT_END_S]
    assert len(before) == 4 and len(during) == 5
    box_area = 0.22 * 320 * 0.2 * 240
    assert all(red_pixels(f.rgb) > 0.8 * box_area for f in during)
    assert all(red_pixels(f.rgb) < 0.01 * box_area for f in before + after)
    # the event changes the picture far more than the moving shapes do between ordinary frames
    ordinary = np.abs(before[-1].rgb.astype(int) - before[-2].rgb.astype(int)).mean()
    event = np.abs(during[0].rgb.astype(int) - before[-1].rgb.astype(int)).mean()
    assert event > 3 * ordinary


def test_rendered_scene_matches_the_video():
    frames = {f.index: f for f in FileSource(DEMO, fps=2.0, max_frames=30)}
    for index in (0, 25):  # 0 s and 12.5 s (inside the event)
        rendered = render_frame(index / 2.0)
        decoded = frames[index].rgb.astype(int)
        assert np.abs(decoded - rendered).mean() < 4.0  # H.264 + yuv420p loss only


def test_render_frames_is_deterministic():
    first = list(render_frames(seconds=2.0, size=(64, 48), fps=5.0))
    second = list(render_frames(seconds=2.0, size=(64, 48), fps=5.0))
    assert len(first) == 10 and first[0].shape == (48, 64, 3) and first[0].dtype == np.uint8
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(first[0], first[5])  # things move
    assert tuple(render_frame(EVENT_START_S + 0.5)[200, 110]) == RED
