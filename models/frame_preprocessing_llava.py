"""Per-frame preprocessing for LLaVA-OneVision video, in numpy + PIL.

The LLaVA-OneVision video processor resizes every frame straight to the vision tower's square input
(384 x 384 on the real checkpoints, aspect not kept), bicubic, then rescales by 1/255 and normalises
with the CLIP mean/std. Its transformers implementation needs torchvision, so this does the same steps
with the PIL functions the PIL image processor uses; the base (first) patch of
`LlavaOnevisionImageProcessorPil` is the reference it is tested against."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from potwatch.errors import SourceError
from potwatch.models.frame_preprocessing import CLIP_MEAN, CLIP_STD, to_rgb_uint8
from potwatch.models.pil_frames import normalise_chw, resize_rgb


@dataclass(frozen=True)
class LlavaFrameProcessor:
    """Frames → pixel_values [n, 3, size, size] float32, one frame at a time."""

    size: int = 384  # the vision tower's image_size
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    resample: int = int(Image.Resampling.BICUBIC)

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"size must be positive, got {self.size}")

    def frame(self, frame: np.ndarray) -> np.ndarray:
        """One frame → [3, size, size]."""
        rgb = resize_rgb(to_rgb_uint8(frame), self.size, self.size, self.resample)
        return normalise_chw(rgb, self.image_mean, self.image_std)

    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        frames = list(frames)
        if not frames:
            raise SourceError("No frames were given to preprocess; give at least one frame.")
        return np.stack([self.frame(frame) for frame in frames])
