"""Per-frame preprocessing for SmolVLM2 (Idefics3 family) video, in numpy + PIL.

The SmolVLM video processor never splits frames into tiles: it resizes each frame so its longest edge
is `video_size.longest_edge` (aspect kept, the other side rounded up to even), then resizes that to the
vision tower's square `max_image_size`, both with Lanczos, then rescales by 1/255 and normalises with
mean = std = 0.5. Its transformers implementation needs torchvision; `SmolVLMImageProcessorPil` with
`do_image_splitting=False` runs the same two resizes with PIL and is the reference this is tested against."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from potwatch.errors import SourceError
from potwatch.models.frame_preprocessing import to_rgb_uint8
from potwatch.models.pil_frames import normalise_chw, resize_rgb

HALF = (0.5, 0.5, 0.5)
MAX_IMAGE_SIDE = 4096  # the processors' absolute size limit


def longest_edge_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """(height, width) with the longest edge at `longest_edge` (at most 4096), aspect kept, the short side
    rounded up to even: the video processor's first resize."""
    longest_edge = min(longest_edge, MAX_IMAGE_SIDE)
    aspect = width / height
    if width >= height:
        width = longest_edge
        height = int(width / aspect)
        height += height % 2
    else:
        height = longest_edge
        width = int(height * aspect)
        width += width % 2
    return max(height, 1), max(width, 1)


@dataclass(frozen=True)
class SmolVLMFrameProcessor:
    """Frames → pixel_values [n, 3, size, size] float32, one frame at a time."""

    size: int = 512  # max_image_size.longest_edge: the square the vision tower sees
    longest_edge: int = 512  # video_sampling.video_size.longest_edge: the first, aspect-keeping resize
    image_mean: tuple[float, float, float] = HALF
    image_std: tuple[float, float, float] = HALF
    resample: int = int(Image.Resampling.LANCZOS)

    def __post_init__(self) -> None:
        for name in ("size", "longest_edge"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def frame(self, frame: np.ndarray) -> np.ndarray:
        """One frame → [3, size, size]."""
        rgb = to_rgb_uint8(frame)
        height, width = longest_edge_size(rgb.shape[0], rgb.shape[1], self.longest_edge)
        rgb = resize_rgb(rgb, height, width, self.resample)
        rgb = resize_rgb(rgb, self.size, self.size, self.resample)
        return normalise_chw(rgb, self.image_mean, self.image_std)

    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        frames = list(frames)
        if not frames:
            raise SourceError("No frames were given to preprocess; give at least one frame.")
        return np.stack([self.frame(frame) for frame in frames])
