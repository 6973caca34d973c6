"""Resize and normalise one RGB frame the way the transformers PIL image processors do.

LLaVA-OneVision and SmolVLM processors resize with PIL (bicubic, Lanczos) on uint8 images, rescale in
float64 and normalise in float32. Doing the same steps here gives the same pixels, bit for bit."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_rgb(rgb: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    """HxWx3 uint8 resized to (height, width) with a PIL filter (PIL returns a copy when the size is unchanged)."""
    return np.asarray(Image.fromarray(rgb).resize((width, height), resample=resample))


def normalise_chw(rgb: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
                  scale: float = 1 / 255) -> np.ndarray:
    """HxWx3 uint8 → 3xHxW float32: x * scale (in float64, as the reference does), then (x - mean) / std."""
    image = (rgb.astype(np.float64) * scale).astype(np.float32)
    image = (image - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(image.transpose(2, 0, 1))
