"""Per-frame preprocessing for the Qwen2-VL / Qwen2.5-VL family, in numpy + OpenCV.

Streaming needs frames turned into vision-tower input one temporal group at a time, and the
transformers video processors need torchvision, so this re-implements the Qwen2-VL image processor:
smart-resize (bicubic), rescale by 1/255, normalise with the CLIP mean/std, and patchify in the same
flattening order, with `temporal_patch_size` consecutive frames forming one temporal patch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from potwatch.errors import SourceError

# OpenAI CLIP normalisation, as the Qwen2-VL processors use by default.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Below this ratio of resized to original area, bicubic without antialiasing aliases badly while the
# reference (PIL bicubic, which widens its kernel when shrinking) does not; area averaging is then closer.
AREA_RESIZE_BELOW = 0.8


def to_rgb_uint8(frame: np.ndarray) -> np.ndarray:
    """An HxWx3 uint8 RGB view/copy of a grayscale (HxW, HxWx1), RGB or RGBA uint8 frame.

    Sources and the processor share this so every frame entering the model has one layout."""
    array = np.asarray(frame)
    if array.dtype != np.uint8:
        raise SourceError(
            f"A frame has dtype {array.dtype}, not uint8; give 8-bit frames, e.g. (frame * 255).astype(np.uint8)."
        )
    if array.size == 0:
        raise SourceError(f"A frame is empty (shape {array.shape}); give frames with at least one pixel.")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 3:
        return array
    if array.ndim == 3 and array.shape[2] == 4:
        return np.ascontiguousarray(array[:, :, :3])
    channels_first = array.ndim == 3 and array.shape[0] in (1, 3, 4)
    hint = " (a channels-first frame needs frame.transpose(1, 2, 0))" if channels_first else ""
    raise SourceError(
        f"A frame has shape {array.shape}; give HxW grayscale, HxWx3 RGB or HxWx4 RGBA uint8 frames{hint}."
    )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's target size: sides multiples of `factor`, area within [min_pixels, max_pixels], aspect kept."""
    if min(height, width) <= 0:
        raise SourceError(f"A frame of {height}x{width} pixels has no area; give frames with at least one pixel.")
    if max(height, width) / min(height, width) > 200:
        raise SourceError(
            f"A frame of {height}x{width} pixels is too elongated for Qwen-VL (aspect over 200); crop it first."
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class QwenFrameProcessor:
    """Frames → (pixel_values, grid_thw) exactly as the Qwen2-VL processors lay them out.

    Defaults are the image processor's (min 56*56, max 28*28*1280 pixels); callers streaming real
    checkpoints usually pass a smaller `max_pixels` to bound tokens per frame."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        for name in ("patch_size", "merge_size", "temporal_patch_size", "min_pixels", "max_pixels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) exceeds max_pixels ({self.max_pixels})")

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this, so patches merge evenly."""
        return self.patch_size * self.merge_size

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) in pixels that a frame of this size is resized to."""
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """(grid_h, grid_w) in patches for frames of this size; fixed for a whole stream."""
        resized_h, resized_w = self.resized_size(height, width)
        return resized_h // self.patch_size, resized_w // self.patch_size

    def tokens_per_group(self, height: int, width: int) -> int:
        """Language-model tokens per temporal group (`temporal_patch_size` frames)."""
        grid_h, grid_w = self.grid_for(height, width)
        return grid_h * grid_w // self.merge_size**2

    def _prepare(self, frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Resize to (height, width), rescale and normalise: HxWx3 float32.

        Bicubic like the reference; area averaging when shrinking much (see AREA_RESIZE_BELOW)."""
        rgb = to_rgb_uint8(frame)
        height, width = size
        if rgb.shape[:2] != (height, width):
            shrink = (height * width) / (rgb.shape[0] * rgb.shape[1])
            kernel = cv2.INTER_AREA if shrink < AREA_RESIZE_BELOW else cv2.INTER_CUBIC
            rgb = cv2.resize(rgb, (width, height), interpolation=kernel)
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        return (rgb.astype(np.float32) * np.float32(1.0 / 255.0) - mean) / std

    def __call__(self, frames: list[np.ndarray]) -> tuple[np.ndarray, tuple[int, int, int]]:
        """pixel_values [t*grid_h*grid_w, 3*T*p*p] float32 and grid (t, grid_h, grid_w).

        Every frame is resized to the size the first frame maps to, so one call has one grid."""
        frames = list(frames)
        if not frames:
            raise SourceError("No frames were given to preprocess; give at least one temporal group of frames.")
        if len(frames) % self.temporal_patch_size:
            raise ValueError(
                f"got {len(frames)} frames, not a multiple of temporal_patch_size={self.temporal_patch_size}"
            )
        first = to_rgb_uint8(frames[0])
        size = self.resized_size(*first.shape[:2])
        video = np.stack([self._prepare(frame, size) for frame in frames])  # [N, H, W, C]

        p, m, T = self.patch_size, self.merge_size, self.temporal_patch_size
        groups = len(frames) // T
        grid_h, grid_w = size[0] // p, size[1] // p
        channels = video.shape[-1]
        patches = video.reshape(groups, T, grid_h // m, m, p, grid_w // m, m, p, channels)
        # -> (group, row block, col block, row in block, col in block, channel, frame in group, py, px):
        # merged 2x2 neighbours stay adjacent rows; each row is channel-major, then time, then pixels.
        patches = patches.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
        pixel_values = np.ascontiguousarray(patches).reshape(groups * grid_h * grid_w, channels * T * p * p)
        return pixel_values, (groups, grid_h, grid_w)
