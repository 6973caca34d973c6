"""QwenFrameProcessor against the transformers Qwen2-VL PIL image processor (no torchvision needed)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from transformers import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from potwatch.errors import SourceError
from potwatch.models.frame_preprocessing import QwenFrameProcessor


def natural_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Gradients, a checkerboard and mild noise, lightly blurred: camera-like content."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, ((xx // 40 + yy // 40) % 2) * 200], axis=-1)
    image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(image, (0, 0), 1.0)


def reference(image: np.ndarray, **kwargs) -> tuple[np.ndarray, list[int]]:
    out = Qwen2VLImageProcessorPil(**kwargs)(images=[image], return_tensors="np")
    return out["pixel_values"], out["image_grid_thw"][0].tolist()


def test_matches_reference_without_resize():
    image = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    expected, expected_grid = reference(image)
    pixels, grid = QwenFrameProcessor()([image, image])
    assert list(grid) == expected_grid == [1, 16, 16]
    assert pixels.dtype == np.float32 and pixels.shape == expected.shape == (256, 3 * 2 * 14 * 14)
    np.testing.assert_allclose(pixels, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "height, width, max_pixels, mean_tol",
    [
        (300, 451, 28 * 28 * 1280, 0.01),  # near-unit scale: bicubic; measured mean |d| 0.005
        (240, 320, 128 * 28 * 28, 0.01),  # slight upscale: measured 0.004
        (720, 1280, 128 * 28 * 28, 0.02),  # ~3x shrink: area averaging; measured 0.011
    ],
)
def test_close_to_reference_after_resize(height, width, max_pixels, mean_tol):
    image = natural_image(height, width)
    expected, expected_grid = reference(image, max_pixels=max_pixels)
    processor = QwenFrameProcessor(max_pixels=max_pixels)
    pixels, grid = processor([image, image])
    assert list(grid) == expected_grid
    assert (grid[1], grid[2]) == processor.grid_for(height, width)
    assert pixels.shape == expected.shape
    diff = np.abs(pixels - expected)
    # Resize kernels differ (OpenCV vs PIL); in 0-255 units the mean is well under 1 grey level.
    assert diff.mean() < mean_tol
    assert diff.max() < 0.3


@pytest.mark.parametrize("size", [(224, 224), (300, 451), (240, 320), (1080, 1920), (50, 60), (17, 3000)])
@pytest.mark.parametrize("max_pixels", [28 * 28 * 1280, 128 * 28 * 28])
def test_grid_follows_smart_resize(size, max_pixels):
    processor = QwenFrameProcessor(max_pixels=max_pixels)
    resized_h, resized_w = hf_smart_resize(*size, factor=28, min_pixels=56 * 56, max_pixels=max_pixels)
    assert processor.grid_for(*size) == (resized_h // 14, resized_w // 14)
    assert processor.tokens_per_group(*size) == (resized_h // 14) * (resized_w // 14) // 4


def test_tokens_per_group_224():
    assert QwenFrameProcessor().tokens_per_group(224, 224) == 64


def _normalised(frame: np.ndarray, processor: QwenFrameProcessor) -> np.ndarray:
    mean = np.asarray(processor.image_mean, dtype=np.float32)
    std = np.asarray(processor.image_std, dtype=np.float32)
    return (frame.astype(np.float32) / 255.0 - mean) / std


def test_temporal_and_spatial_order_by_hand():
    """Rows: group, 2x2 merge block (row-major), position in block; each row is (channel, time, y, x)."""
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (56, 84, 3), dtype=np.uint8) for _ in range(4)]  # 4x6 patches, no resize
    processor = QwenFrameProcessor()
    pixels, grid = processor(frames)
    assert grid == (2, 4, 6)
    p, m, T = 14, 2, 2
    grid_h, grid_w = 4, 6
    normalised = [_normalised(f, processor) for f in frames]
    for group in range(2):
        for r in range(grid_h):
            for c in range(grid_w):
                block = (r // m) * (grid_w // m) + c // m
                row = group * grid_h * grid_w + block * m * m + (r % m) * m + c % m
                patch = np.stack(
                    [normalised[group * T + t][r * p:(r + 1) * p, c * p:(c + 1) * p, :] for t in range(T)]
                )  # [T, p, p, C]
                expected = patch.transpose(3, 0, 1, 2).reshape(-1)  # (C, T, p, p)
                np.testing.assert_allclose(pixels[row], expected, atol=1e-6)


def test_each_time_slice_matches_reference_of_that_frame():
    rng = np.random.default_rng(3)
    first, second = (rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(2))
    pixels, _ = QwenFrameProcessor()([first, second])
    per_time = pixels.reshape(-1, 3, 2, 14, 14)
    for t, frame in enumerate((first, second)):
        expected = reference(frame)[0].reshape(-1, 3, 2, 14, 14)[:, :, 0]
        np.testing.assert_allclose(per_time[:, :, t], expected, atol=1e-5)


def test_grayscale_and_rgba_are_converted():
    rng = np.random.default_rng(4)
    gray = rng.integers(0, 256, (56, 56), dtype=np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full((56, 56, 1), 7, np.uint8)], axis=2)
    processor = QwenFrameProcessor()
    expected, grid = processor([rgb, rgb])
    for frame in (gray, gray[:, :, None], rgba):
        pixels, other_grid = processor([frame, frame])
        assert other_grid == grid
        np.testing.assert_array_equal(pixels, expected)


def test_frames_of_another_size_take_the_first_frames_grid():
    processor = QwenFrameProcessor()
    pixels, grid = processor([natural_image(224, 224), natural_image(200, 260)])
    assert grid == (1, 16, 16) and pixels.shape[0] == 256


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((0, 10), np.uint8),
        np.zeros((32, 32, 2), np.uint8),
        np.zeros((32, 32, 5), np.uint8),
        np.zeros((2, 32, 32, 3), np.uint8),
        np.zeros((32,), np.uint8),
        np.zeros((32, 32, 3), np.float32),
    ],
    ids=["empty", "empty-gray", "2ch", "5ch", "4d", "1d", "float"],
)
def test_bad_frames_raise_source_error(frame):
    with pytest.raises(SourceError):
        QwenFrameProcessor()([frame, frame])


def test_frame_count_must_fill_temporal_groups():
    frame = np.zeros((56, 56, 3), np.uint8)
    with pytest.raises(ValueError):
        QwenFrameProcessor()([frame])
    with pytest.raises(SourceError):
        QwenFrameProcessor()([])
