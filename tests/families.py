"""Shared pieces of the per-family tests: the demo adapters (built once, on the test device), and the
exactness oracle, which lays frames and dialogue out the way each family's processor would and runs
ONE forward pass of the stock transformers model with the model computing its own positions."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.models.smolvlm.processing_smolvlm import (
    DEFAULT_MEDIA_OUTTRO,
    FRAME_TIMESTAMP_MESSAGE,
    _prompt_single_image,
)

from tests.device import load_test_model

FAMILY_DEMOS = ["demo-llava", "demo-smolvlm", "demo-qwen3"]
REAL_GEOMETRY_DEMOS = ["demo-llava-0.5b", "demo-smolvlm-256m", "demo-qwen3-2b"]
SMOLVLM_STREAM_INTRO = "You are provided the following series of frames from a live video.\n"


@functools.lru_cache(maxsize=None)
def family_adapter(name: str):
    """The demo model `name` in float32 on the test device (tests/device.py), built once per run."""
    return load_test_model(name)


def patch_grid(adapter, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of a frame's visual-token grid: what TaR's (row, col) metadata ranges over."""
    if adapter.family == "qwen3_vl":
        grid_h, grid_w = adapter.processor.grid_for(height, width)
        return grid_h // adapter.processor.merge_size, grid_w // adapter.processor.merge_size
    return adapter.grid_side, adapter.grid_side


def block_length(adapter, first_frame: int, fps: float = 2.0, size: tuple[int, int] = (120, 160)) -> int:
    """Tokens of the vision block of the group starting at `first_frame` (timestamps may vary its length)."""
    frames = [np.zeros((*size, 3), np.uint8)] * adapter.frames_per_group
    return len(adapter.vision_block(frames, first_frame, adapter.new_positions(fps)))


@dataclass
class Turn:
    """One user turn of the oracle: the frames fed since the last turn, a question, the answer so far."""

    frames: list[np.ndarray]
    question: str
    answer: list[int] = field(default_factory=list)
    closing: list[int] | None = None  # ids that ended the answer (the stop token), None while open


def oracle_logits(adapter, turns: list[Turn], fps: float = 2.0) -> torch.Tensor:
    """Next-token logits of the stock model over the whole dialogue, in one forward pass."""
    if adapter.family == "llava_onevision":
        ids, kwargs = _llava_inputs(adapter, turns)
    elif adapter.family == "qwen3_vl":
        ids, kwargs = _qwen3_inputs(adapter, turns, fps)
    else:
        ids, kwargs = _smolvlm_inputs(adapter, turns, fps)
    inputs = {key: value.to(adapter.device) for key, value in kwargs.items()}
    with torch.no_grad():
        return adapter.model(input_ids=torch.tensor([ids], device=adapter.device), **inputs).logits[0, -1].float()


def _encode(adapter, text: str) -> list[int]:
    return adapter.tokenizer.encode(text, add_special_tokens=False)


def _llava_inputs(adapter, turns):
    """LLaVA-OneVision's ChatML (qwen_1_5 template): each user turn holds `<video>\\n{question}`, the
    processor expanding `<video>` to frames x ceil(side/2)^2 video tokens + 1 for the image_newline."""
    config = adapter.model.config
    side = math.ceil(config.vision_config.image_size // config.vision_config.patch_size / 2)
    ids = _encode(adapter, f"<|im_start|>system\n{adapter.system_prompt}<|im_end|>\n<|im_start|>user\n")
    videos = []
    for index, turn in enumerate(turns):
        if index:
            ids += _encode(adapter, ("" if turns[index - 1].closing else "<|im_end|>") + "\n<|im_start|>user\n")
        ids += [config.video_token_id] * (len(turn.frames) * side * side + 1)
        ids += _encode(adapter, f"\n{turn.question}<|im_end|>\n<|im_start|>assistant\n") + turn.answer
        ids += turn.closing or []
        videos.append(adapter.processor(turn.frames))
    return ids, {"pixel_values_videos": torch.from_numpy(np.stack(videos))}  # one video per turn, equal lengths


def _smolvlm_inputs(adapter, turns, fps):
    """SmolVLM's chat template with the processor's per-frame prompt (`FRAME_TIMESTAMP_MESSAGE` + the
    single-image token string) and media outro; the intro is the stream's (no frame count or duration)."""
    seq = adapter.grid_side**2
    image = _prompt_single_image(seq, fake_token_around_image="<fake_token_around_image>", image_token="<image>",
                                 global_image_token="<global-img>")
    ids, frames, first = _encode(adapter, "<|im_start|>"), [], 0
    for index, turn in enumerate(turns):
        if index:
            ids += _encode(adapter, "" if turns[index - 1].closing else "<end_of_utterance>") + _encode(adapter, "\n")
        text = f"User: {SMOLVLM_STREAM_INTRO}"
        for offset in range(len(turn.frames)):
            seconds = (first + offset) / fps
            stamp = f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"
            text += FRAME_TIMESTAMP_MESSAGE.format(timestamp=stamp) + image
        text += f"{DEFAULT_MEDIA_OUTTRO}{turn.question}<end_of_utterance>\nAssistant:"
        ids += _encode(adapter, text) + turn.answer + (turn.closing or [])
        frames += turn.frames
        first += len(turn.frames)
    return ids, {"pixel_values": torch.from_numpy(adapter.processor(frames)).unsqueeze(0)}


def _qwen3_inputs(adapter, turns, fps):
    """Qwen3-VL's ChatML with its processor's per-group video string: `<{t:.1f} seconds>` (the mean time of
    the group's two frames) + <|vision_start|> + N video pads + <|vision_end|>, then the question."""
    config, processor = adapter.model.config, adapter.processor
    pad, step = config.video_token_id, processor.temporal_patch_size
    ids = _encode(adapter, f"<|im_start|>system\n{adapter.system_prompt}<|im_end|>\n<|im_start|>user\n")
    pixels, grids, first = [], [], 0
    for index, turn in enumerate(turns):
        if index:
            ids += _encode(adapter, ("" if turns[index - 1].closing else "<|im_end|>") + "\n<|im_start|>user\n")
        values, (groups, grid_h, grid_w) = processor(turn.frames)
        per_group = grid_h * grid_w // processor.merge_size**2
        for group in range(groups):
            seconds = (first + group * step + (step - 1) / 2) / fps
            ids += _encode(adapter, f"<{seconds:.1f} seconds><|vision_start|>") + [pad] * per_group
            ids += _encode(adapter, "<|vision_end|>")
        ids += _encode(adapter, f"{turn.question}<|im_end|>\n<|im_start|>assistant\n")
        ids += turn.answer + (turn.closing or [])
        pixels.append(values)
        grids.append([groups, grid_h, grid_w])
        first += len(turn.frames)
    tensor = torch.tensor([ids])
    return ids, {
        "pixel_values_videos": torch.from_numpy(np.concatenate(pixels)),
        "video_grid_thw": torch.tensor(grids),
        "mm_token_type_ids": (tensor == pad).long() * 2,
    }


def oracle_greedy(adapter, turns: list[Turn], limit: int, fps: float = 2.0) -> tuple[list[int], bool]:
    """Greedy answer to the last turn, token by token, each from one full forward: (ids, stopped itself)."""
    last = turns[-1]
    last.answer = []
    stops = adapter.stop_ids()
    while len(last.answer) < limit:
        token = int(torch.argmax(oracle_logits(adapter, turns, fps)))
        if token in stops:
            last.closing = [token]
            return last.answer, True
        last.answer.append(token)
    return last.answer, False
