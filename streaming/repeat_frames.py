"""Skipping the vision tower for a repeated group (part of `--ingest changed`).

On a fixed camera most groups of frames are the last group again, up to sensor noise and flicker; the
tower would give nearly the same tokens, which change-aware ingest would then mostly drop. So when every
tile of a new group's frames is within `threshold` (mean pixel value, 0-255) of the same tile in the last
group the tower actually ran on, its output is reused. Tiles are compared by their mean, not pixel by
pixel, so pixel noise averages out over a tile; and after scaling out the change of the whole frame's
mean brightness, so lighting flicker and auto-exposure do not count as change. An object entering even
one tile moves that tile's mean by tens of levels. Measured on the synthetic world's streams (6 x 60 s,
no distractors; `benchmarks/ingest_thresholds.py`): quiet groups differ by at most 1.3 levels at its
lighting noise 0.5 and 5.6 at noise 1.0, while every group where an event came or went differed by at
least 18.4: the default 6 sits between. Comparing with the last group *computed*, not the last reused,
keeps slow drift from adding up unseen."""

from __future__ import annotations

import numpy as np

DEFAULT_PIXEL_THRESHOLD = 6.0  # largest change of a tile's mean (0-255) that still counts as the same picture
TILE = 16  # pixels a side


def tile_means(frames: list[np.ndarray]) -> np.ndarray:
    """Mean of each TILE x TILE tile of each frame over its channels: [frames, rows, cols] float32 (OpenCV's
    area resize at a whole factor is that mean, at a twentieth of numpy's cost)."""
    import cv2

    means = []
    for frame in frames:
        height, width = frame.shape[:2]
        rows, cols = max(height // TILE, 1), max(width // TILE, 1)
        trimmed = frame[: rows * TILE, : cols * TILE] if height >= TILE and width >= TILE else frame
        small = cv2.resize(trimmed, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float32)
        means.append(small.mean(axis=2) if small.ndim == 3 else small)
    return np.stack(means)


def tile_change(means: np.ndarray, reference: np.ndarray) -> float:
    """Largest change of a tile's mean against `reference`, once each frame's overall gain is scaled out."""
    gain = means.mean(axis=(1, 2), keepdims=True) / np.maximum(reference.mean(axis=(1, 2), keepdims=True), 1e-3)
    return float(np.abs(means - reference * gain).max())


class RepeatedFrames:
    """Remembers the last group the tower ran on, and its output, to reuse on a repeat."""

    def __init__(self, threshold: float = DEFAULT_PIXEL_THRESHOLD):
        self.threshold = threshold
        self._means: np.ndarray | None = None
        self._features = None
        self._pending: tuple[np.ndarray, object] | None = None
        self._reusing = False
        self.skips = 0  # groups whose tower output was reused, once their block reached the cache

    def reusable(self, frames: list[np.ndarray]):
        """The tower output to reuse for `frames`, or None when they differ from the last group computed."""
        means = tile_means(frames)
        self._pending, self._reusing = (means, None), False
        if self._means is None or self._means.shape != means.shape:
            return None
        if tile_change(means, self._means) <= self.threshold:
            self._pending, self._reusing = None, True  # the reference stays the group the tower ran on
            return self._features
        return None

    def computed(self, features) -> None:
        """The tower ran on the group just checked: it becomes the reference once the block is in the cache."""
        if self._pending is not None:
            self._pending = (self._pending[0], features)

    def commit(self) -> None:
        self.skips += self._reusing
        self._reusing = False
        if self._pending is not None and self._pending[1] is not None:
            self._means, self._features = self._pending
        self._pending = None
