"""LLaVA-OneVision and SmolVLM per-frame preprocessing against the transformers PIL image processors
(which need no torchvision): the same resize filters on the same uint8 images, so the pixels match
bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import LlavaOnevisionImageProcessorPil, SmolVLMImageProcessorPil

from potwatch.errors import SourceError
from potwatch.models.frame_preprocessing_llava import LlavaFrameProcessor
from potwatch.models.frame_preprocessing_smolvlm import SmolVLMFrameProcessor, longest_edge_size
from tests.test_frame_preprocessing import natural_image

SIZES = [(240, 320), (384, 384), (720, 1280), (101, 203), (500, 90)]


def llava_reference(image: np.ndarray, size: int) -> np.ndarray:
    """The base patch of the anyres image output: the whole image resized to size x size, as video frames are."""
    processor = LlavaOnevisionImageProcessorPil(size={"height": size, "width": size})
    return processor(images=[image], return_tensors="np")["pixel_values"][0, 0]


def smolvlm_reference(image: np.ndarray, size: int, longest_edge: int) -> np.ndarray:
    """No tile splitting (as for video): resize to the longest edge, then to the square, Lanczos."""
    processor = SmolVLMImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": longest_edge}, max_image_size={"longest_edge": size}, resample=1,
    )
    out = processor(images=[image], return_tensors="np")
    assert out["pixel_attention_mask"].all()  # a square frame needs no padding
    return out["pixel_values"][0, 0]


@pytest.mark.parametrize("height, width", SIZES)
@pytest.mark.parametrize("size", [384, 98])  # the real tower, the tiny demo's
def test_llava_frames_match_the_pil_processor(height, width, size):
    image = natural_image(height, width, seed=height)
    pixels = LlavaFrameProcessor(size=size)([image, image])
    expected = llava_reference(image, size)
    assert pixels.shape == (2, 3, size, size) and pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels[1], expected)  # measured: max |d| = 0.0


@pytest.mark.parametrize("height, width", SIZES)
@pytest.mark.parametrize("size, longest_edge", [(512, 512), (128, 128), (512, 384)])
def test_smolvlm_frames_match_the_pil_processor(height, width, size, longest_edge):
    image = natural_image(height, width, seed=width)
    pixels = SmolVLMFrameProcessor(size=size, longest_edge=longest_edge)([image])
    assert pixels.shape == (1, 3, size, size) and pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels[0], smolvlm_reference(image, size, longest_edge))  # max |d| = 0.0


def test_smolvlm_first_resize_follows_the_processor_rule():
    from transformers.models.smolvlm.image_processing_pil_smolvlm import _resize_output_size_rescale_to_max_len

    for height, width in SIZES + [(17, 3000), (3000, 17), (1, 1)]:
        for edge in (512, 384, 5000):
            expected = _resize_output_size_rescale_to_max_len(height, width, max_len=min(edge, 4096))
            assert longest_edge_size(height, width, edge) == expected


@pytest.mark.parametrize("processor", [LlavaFrameProcessor(size=98), SmolVLMFrameProcessor(size=128, longest_edge=128)])
def test_grayscale_rgba_and_bad_frames(processor):
    rng = np.random.default_rng(4)
    gray = rng.integers(0, 256, (56, 70), dtype=np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full((56, 70, 1), 9, np.uint8)], axis=2)
    expected = processor([rgb])
    for frame in (gray, gray[:, :, None], rgba):
        np.testing.assert_array_equal(processor([frame]), expected)
    with pytest.raises(SourceError):
        processor([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(SourceError):
        processor([])


def test_qwen3_frames_match_the_qwen2_vl_pil_processor_with_qwen3_settings():
    """Qwen3-VL patchifies like Qwen2-VL with 16 px patches (32 px per merged token) and mean = std = 0.5;
    its own video processor needs torchvision, so the Qwen2-VL PIL image processor with those settings is
    the reference (no resize at 256 x 320: exact)."""
    from transformers import Qwen2VLImageProcessorPil

    from potwatch.models.family_processors import qwen_processor
    from potwatch.models.registry import QWEN3_FRAME_MAX_PIXELS, load_model

    processor = qwen_processor({}, load_model("demo-qwen3").model.config, QWEN3_FRAME_MAX_PIXELS)
    assert (processor.patch_size, processor.merge_size, processor.temporal_patch_size) == (16, 2, 2)
    assert processor.image_mean == processor.image_std == (0.5, 0.5, 0.5)
    image = np.random.default_rng(5).integers(0, 256, (256, 320, 3), dtype=np.uint8)
    reference = Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        max_pixels=processor.max_pixels,
    )(images=[image], return_tensors="np")
    pixels, grid = processor([image, image])
    assert list(grid) == reference["image_grid_thw"][0].tolist() == [1, 16, 20]
    np.testing.assert_allclose(pixels, reference["pixel_values"], atol=1e-6, rtol=0)
