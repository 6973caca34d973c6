"""Stream times for ages a model reads off its positions.

A model under rotary positions sees how far back a frame is only as a distance in position ids, and
that distance is not always time: dialogue turns in between add their tokens, and `--positions compact`
closes the gaps of evicted frames. A model trained to say that distance as an age ("About 35 seconds
ago.", the `tiny` model: `ModelAdapter.ages_from_positions`) is therefore read back through the
positions the cache holds now: the id the age points at is matched to the frames whose tokens sit there,
and the frame's own time gives the true age and the clock time that potwatch shows."""

from __future__ import annotations

import numpy as np
import torch

from potwatch.compression.token_meta import TokenKind
from potwatch.streaming.age_phrases import read_age, say_age, stream_clock


def positions_per_second(positions, frames_per_group: int, fps: float) -> float:
    """Temporal position ids a second of video takes (one per temporal group for Qwen2-VL)."""
    return getattr(positions, "time_step", 1.0) * fps / frames_per_group


def held_frame_positions(cache) -> tuple[np.ndarray, np.ndarray]:
    """(temporal position, frame index) of every frame with a token held, by position: each frame at the
    mean of its tokens' temporal ids over layers and heads (one id under `keep`; per head under `compact`)."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for layer in cache.layers:
        n = layer.length
        vision = layer.meta["kind"][:, :n] == TokenKind.VISION
        frames = layer.meta["frame"][:, :n][vision].long()
        temporal = layer.pos[0][:, :n][vision].double()
        if frames.numel() == 0:
            continue
        unique, inverse = torch.unique(frames, return_inverse=True)
        total = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse.cpu(), temporal.cpu())
        number = torch.bincount(inverse.cpu(), minlength=len(unique))
        for frame, value, count in zip(unique.tolist(), total.tolist(), number.tolist()):
            sums[frame] = sums.get(frame, 0.0) + value
            counts[frame] = counts.get(frame, 0) + count
    frames = np.array(sorted(sums), dtype=np.float64)
    means = np.array([sums[int(f)] / counts[int(f)] for f in frames], dtype=np.float64)
    order = np.argsort(means, kind="stable")
    return means[order], frames[order]


def frame_at_position(cache, position: float) -> float | None:
    """The (fractional) frame index at temporal id `position`, between the held frames around it; the
    nearest held frame beyond them; None when no frame is held."""
    means, frames = held_frame_positions(cache)
    if len(frames) == 0:
        return None
    return float(np.interp(position, means, frames))


def with_stream_time(text: str, cache, question_position: int, per_second: float, fps: float,
                     frames_seen: int) -> str:
    """`text` with its "N units ago" read back through the positions: the true age, and the stream time
    after it ("About 33 seconds ago (at 0:12)."). Unchanged when it says no age or no frame is held."""
    said = read_age(text)
    if said is None:
        return text
    frame = frame_at_position(cache, question_position - said.seconds * per_second)
    if frame is None:
        return text
    seen_at = frame / fps
    now = frames_seen / fps
    return f"{text[:said.start]}{say_age(now - seen_at)} (at {stream_clock(seen_at)}){text[said.end:]}"
