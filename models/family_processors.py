"""Per-family frame processors, built from a checkpoint's `preprocessor_config.json` (or defaults for
demo models), and the settings `save_demo` writes back so a saved demo loads the same processor."""

from __future__ import annotations

from potwatch.models.frame_preprocessing import QwenFrameProcessor
from potwatch.models.frame_preprocessing_llava import LlavaFrameProcessor
from potwatch.models.frame_preprocessing_smolvlm import SmolVLMFrameProcessor


QWEN3_MEAN_STD = (0.5, 0.5, 0.5)  # Qwen3-VL normalises with mean = std = 0.5 (not CLIP's)


def qwen_processor(settings: dict, config, max_pixels: int) -> QwenFrameProcessor:
    """Qwen2-VL, Qwen2.5-VL and Qwen3-VL patchify frames the same way (Qwen3-VL: 16 px patches)."""
    vision = config.vision_config
    kwargs = dict(
        patch_size=vision.patch_size,
        merge_size=vision.spatial_merge_size,
        temporal_patch_size=vision.temporal_patch_size,
        max_pixels=max_pixels,
    )
    if config.model_type == "qwen3_vl":
        kwargs.update(image_mean=QWEN3_MEAN_STD, image_std=QWEN3_MEAN_STD)
    for key in ("image_mean", "image_std"):
        if key in settings:
            kwargs[key] = tuple(settings[key])
    if "min_pixels" in settings:
        kwargs["min_pixels"] = min(int(settings["min_pixels"]), max_pixels)
    return QwenFrameProcessor(**kwargs)


def _common(settings: dict) -> dict:
    kwargs = {key: tuple(settings[key]) for key in ("image_mean", "image_std") if key in settings}
    if "resample" in settings:
        kwargs["resample"] = int(settings["resample"])
    return kwargs


def llava_processor(settings: dict, config) -> LlavaFrameProcessor:
    """Frames go to the tower's own square size: the pooling grid is derived from `image_size`."""
    return LlavaFrameProcessor(size=config.vision_config.image_size, **_common(settings))


def smolvlm_processor(settings: dict, config) -> SmolVLMFrameProcessor:
    """The square is the tower's `image_size` (= `max_image_size` on real checkpoints); the first,
    aspect-keeping resize uses `video_sampling.video_size.longest_edge` when the checkpoint gives one."""
    size = config.vision_config.image_size
    video_size = (settings.get("video_sampling") or {}).get("video_size") or {}
    longest_edge = int(video_size.get("longest_edge", size))
    return SmolVLMFrameProcessor(size=size, longest_edge=longest_edge, **_common(settings))


def preprocessor_settings(processor) -> dict:
    """What `save_demo` writes to preprocessor_config.json for this processor."""
    settings = {"image_mean": list(processor.image_mean), "image_std": list(processor.image_std)}
    if isinstance(processor, QwenFrameProcessor):
        settings.update(
            min_pixels=processor.min_pixels, max_pixels=processor.max_pixels, patch_size=processor.patch_size,
            merge_size=processor.merge_size, temporal_patch_size=processor.temporal_patch_size,
        )
    elif isinstance(processor, LlavaFrameProcessor):
        settings.update(size={"height": processor.size, "width": processor.size}, resample=processor.resample)
    else:
        settings.update(
            max_image_size={"longest_edge": processor.size}, resample=processor.resample,
            video_sampling={"video_size": {"longest_edge": processor.longest_edge}},
        )
    return settings
