"""The web UI's starting cap, per model: a small model gets one it fills within the first minute, so
the page shows the cache filling and compressing at once; a large one gets the cap a device would give it.

A small model is one whose `LARGE_MODEL_CAP` would hold more than `SMALL_MODEL_MINUTES` of video at
full detail (`tiny` and the random-weight `demo`: hours); a 2B or 7B model holds a few minutes in it."""

from __future__ import annotations

import math

from potwatch.compression.mem_cap import parse_mem_cap
from potwatch.streaming.session import NOMINAL_QUESTION_TOKENS, StreamSession

LARGE_MODEL_CAP = "1GB"
SMALL_MODEL_MINUTES = 10
FILL_SECONDS = 20  # a small model's cache is full at full detail after about this much video
TYPICAL_FRAME = (240, 320)  # (height, width): the demo video's and a small webcam's frames
NICE_STEPS = (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)


def nice_size(nbytes: int) -> str:
    """The smallest round size at or above `nbytes`, as a cap is typed: 865_480 -> '900kB'."""
    for unit, scale in (("kB", 10**3), ("MB", 10**6), ("GB", 10**9)):
        for decade in (1, 10, 100):
            for step in NICE_STEPS:
                if step * decade * scale >= nbytes:
                    return f"{step * decade:g}{unit}"
    return f"{math.ceil(nbytes / 10**9)}GB"


def default_mem_cap(adapter, fps: float = 2.0, max_new_tokens: int = 48, policy: str = "tar_van") -> str:
    """The cap a new tab starts with on this model (see the module's docstring)."""
    probe = StreamSession(adapter, mem_cap=None, policy=policy, fps=fps, max_new_tokens=max_new_tokens,
                          frame_size=TYPICAL_FRAME)
    try:
        geometry = probe.geometry
        per_group, frames_per_group = probe.tokens_per_group, adapter.frames_per_group
        large_groups = geometry.tokens_for(parse_mem_cap(LARGE_MODEL_CAP)) // per_group
        if large_groups * frames_per_group > SMALL_MODEL_MINUTES * 60 * fps:
            groups = math.ceil(FILL_SECONDS * fps / frames_per_group)
            tokens = probe.system_tokens + NOMINAL_QUESTION_TOKENS + max_new_tokens + groups * per_group
            tokens = max(tokens, probe.min_tokens())
            return nice_size(geometry.bytes_for(tokens))
        return LARGE_MODEL_CAP
    finally:
        probe.close()
