"""Per-family frame processors, built from a checkpoint's processor files (or defaults for demo models),
and the settings `save_demo` writes back so a saved demo loads the same processor. A family's
description (models/family.py) names its pair: `frame_processor` and `saved_settings`.

A stream is video, so the video processor's settings (video_preprocessor_config.json) come before the
image processor's (preprocessor_config.json). Sizes the vision tower's weights fix (patch and merge
sizes, the square a SigLIP tower sees, image tokens a frame) are checked against the model's config."""

from __future__ import annotations

import json

from potwatch.errors import ModelLoadError
from potwatch.models.family import family_for
from potwatch.models.frame_preprocessing import QwenFrameProcessor
from potwatch.models.frame_preprocessing_llava import LlavaFrameProcessor
from potwatch.models.frame_preprocessing_smolvlm import SmolVLMFrameProcessor

# Per-frame pixel budget for real checkpoints: about 128 tokens per temporal group, as the InfiniPot-V
# experiments use (128*28*28), instead of the processors' image default of over 12 megapixels.
# Qwen3-VL merges 32 x 32 px per token, so the same ~128 tokens take 128*32*32 pixels.
DEFAULT_FRAME_MAX_PIXELS = 128 * 28 * 28
QWEN3_FRAME_MAX_PIXELS = 128 * 32 * 32
DEMO_MAX_PIXELS = 224 * 224  # keeps demo frames at ~50 tokens per temporal group


def read_processor_settings(source: str) -> dict:
    """What a checkpoint's processor files say: the image processor's keys (preprocessor_config.json, or
    processor_config.json's "image_processor"), the video processor's under "video"
    (video_preprocessor_config.json, or processor_config.json's "video_processor"), the processor's own
    keys (image_seq_len, ...), and the processor's chat template as "chat_template" (chat_template.json;
    a chat_template.jinja reaches the tokenizer as well). Missing files mean defaults."""
    processor = _read_json(source, "processor_config.json")
    image, video = processor.pop("image_processor", None) or {}, processor.pop("video_processor", None) or {}
    settings = {**processor, **image, **_read_json(source, "preprocessor_config.json")}
    settings["video"] = {**video, **_read_json(source, "video_preprocessor_config.json")}
    template = _read_json(source, "chat_template.json").get("chat_template") or processor.get("chat_template")
    if template:
        settings["chat_template"] = template
    return settings


def _read_json(source: str, filename: str) -> dict:
    try:
        from transformers.utils import cached_file

        path = cached_file(source, filename, _raise_exceptions_for_missing_entries=False)
    except Exception:  # noqa: BLE001 - a file that cannot be fetched just means defaults
        path = None
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict):
        raise ModelLoadError(f"The {filename} of '{source}' is not a JSON object; copy the model folder again.")
    return data


def _setting(settings: dict, key: str):
    """The video processor's value of `key`, else the image processor's (None when neither gives one)."""
    video = settings.get("video") or {}
    return video[key] if key in video else settings.get(key)


def _check_tower(key: str, given, built: int) -> None:
    if given is not None and int(given) != int(built):
        raise ModelLoadError(
            f"The checkpoint's processor config gives {key} {given}, but its vision tower was built for {built}; "
            "the folder mixes two checkpoints: copy the model folder again."
        )


def qwen_pixel_limits(settings: dict) -> tuple[int | None, int | None]:
    """(min_pixels, max_pixels) a frame is resized within: `min_pixels`/`max_pixels`, or the `size`
    shortest/longest edge that transformers 5 writes for them; the video processor's first."""
    limits = [None, None]
    for config in (settings.get("video") or {}, settings):
        size = config.get("size") or {}
        for index, (key, edge) in enumerate((("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge"))):
            value = config.get(key) or size.get(edge)
            if limits[index] is None and value is not None:
                limits[index] = int(value)
    return limits[0], limits[1]


def qwen_frames(settings: dict, config, frame_max_pixels: int | None, is_demo: bool,
                real_max_pixels: int = DEFAULT_FRAME_MAX_PIXELS) -> QwenFrameProcessor:
    """A Qwen family's frame processor: at most `frame_max_pixels` a frame when asked; else the demo size,
    or for a real checkpoint `real_max_pixels` (about 128 tokens a group), or the checkpoint's own limit
    when it asks for smaller frames (the trained `tiny`)."""
    own_limit = qwen_pixel_limits(settings)[1] or real_max_pixels
    max_pixels = frame_max_pixels or (DEMO_MAX_PIXELS if is_demo else min(real_max_pixels, own_limit))
    return qwen_processor(settings, config, max_pixels)


def qwen_processor(settings: dict, config, max_pixels: int) -> QwenFrameProcessor:
    """Qwen2-VL, Qwen2.5-VL and Qwen3-VL patchify frames the same way (Qwen3-VL: 16 px patches, its own
    normalisation, which its family description gives as `frame_norm`)."""
    vision = config.vision_config
    kwargs = dict(
        patch_size=vision.patch_size,
        merge_size=vision.spatial_merge_size,
        temporal_patch_size=vision.temporal_patch_size,
        max_pixels=max_pixels,
    )
    for key in ("patch_size", "merge_size", "temporal_patch_size"):
        _check_tower(key, _setting(settings, key), kwargs[key])
    family = family_for(config.model_type)
    if family is not None and family.frame_norm is not None:
        kwargs.update(image_mean=family.frame_norm[0], image_std=family.frame_norm[1])
    kwargs.update(_normalisation(settings))
    min_pixels = qwen_pixel_limits(settings)[0]
    if min_pixels is not None:
        kwargs["min_pixels"] = min(min_pixels, max_pixels)
    return QwenFrameProcessor(**kwargs)


def _normalisation(settings: dict) -> dict:
    kwargs = {key: tuple(_setting(settings, key)) for key in ("image_mean", "image_std") if _setting(settings, key)}
    if _setting(settings, "resample") is not None:
        kwargs["resample"] = int(_setting(settings, "resample"))
    return kwargs


def llava_processor(settings: dict, config, frame_max_pixels: int | None = None,
                    is_demo: bool = False) -> LlavaFrameProcessor:
    """Frames go to the tower's own square size: the pooling grid is derived from `image_size` (so
    `frame_max_pixels` does not apply)."""
    size = config.vision_config.image_size
    square = _setting(settings, "size") or {}
    for side in ("height", "width"):
        _check_tower(f"size {side}", square.get(side), size)
    return LlavaFrameProcessor(size=size, **_normalisation(settings))


def smolvlm_processor(settings: dict, config, frame_max_pixels: int | None = None,
                      is_demo: bool = False) -> SmolVLMFrameProcessor:
    """The square is the tower's `image_size` (= `max_image_size` on real checkpoints); the first,
    aspect-keeping resize uses `video_sampling.video_size` (or the video processor's `size`) when the
    checkpoint gives one. Each frame is `image_seq_len` image tokens."""
    vision = config.vision_config
    size = vision.image_size
    _check_tower("max_image_size", (_setting(settings, "max_image_size") or {}).get("longest_edge"), size)
    _check_tower("image_seq_len", settings.get("image_seq_len"), (size // vision.patch_size // config.scale_factor) ** 2)
    sampling = _setting(settings, "video_sampling") or {}
    video_size = sampling.get("video_size") or (settings.get("video") or {}).get("size") or {}
    longest_edge = int(video_size.get("longest_edge", size))
    return SmolVLMFrameProcessor(size=size, longest_edge=longest_edge, **_normalisation(settings))


def _norm_settings(processor) -> dict:
    return {"image_mean": list(processor.image_mean), "image_std": list(processor.image_std)}


def qwen_saved_settings(processor: QwenFrameProcessor) -> dict:
    """What `save_demo` writes to preprocessor_config.json for a Qwen frame processor."""
    return {**_norm_settings(processor), "min_pixels": processor.min_pixels, "max_pixels": processor.max_pixels,
            "patch_size": processor.patch_size, "merge_size": processor.merge_size,
            "temporal_patch_size": processor.temporal_patch_size}


def llava_saved_settings(processor: LlavaFrameProcessor) -> dict:
    return {**_norm_settings(processor), "size": {"height": processor.size, "width": processor.size},
            "resample": processor.resample}


def smolvlm_saved_settings(processor: SmolVLMFrameProcessor) -> dict:
    return {**_norm_settings(processor), "max_image_size": {"longest_edge": processor.size},
            "resample": processor.resample, "video_sampling": {"video_size": {"longest_edge": processor.longest_edge}}}
