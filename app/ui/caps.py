"""What a tab's memory cap holds, and the least cap that can work, worked out without allocating a cache,
so a cap too small is refused before anything the tab runs is stopped, with the true minimum in the first
message, and the page's hints name caps that work for the model in use.

Pure functions of a session (or of its settings); none imports `sessions.py`, which snapshots their
results for the page's timer (a tick must never read a cache that a reset is swapping)."""

from __future__ import annotations

from types import SimpleNamespace

from potwatch.compression.budget import session_geometry
from potwatch.compression.mem_cap import format_bytes, parse_mem_cap
from potwatch.errors import MemCapError
from potwatch.streaming.session import StreamSession
from potwatch.streaming.settings import StreamSettings

from potwatch.app.ui.defaults import TYPICAL_FRAME, nice_size


class CapTooSmallError(MemCapError):
    """A cap that cannot hold the prompt, a block of frames and an answer; `least` is the smallest that can."""

    def __init__(self, message: str, least: int) -> None:
        super().__init__(message)
        self.least = least
        self.setting, self.rule = "mem_cap", "value"


def least_cap_bytes(session: StreamSession, settings: StreamSettings, frame_size: tuple[int, int]) -> int:
    """The smallest cap that holds the system prompt, one block of `frame_size` frames and a question with
    its answer under `settings`: the session's own rule (`min_tokens`), applied without allocating."""
    geometry = session_geometry(session.adapter.geometry(), settings.new_policy(), settings.kv_bits)
    block = session.adapter.tokens_per_group(*frame_size) * session.groups_per_block
    needs = SimpleNamespace(system_tokens=session.system_tokens, block_tokens=block,
                            max_new_tokens=settings.max_new_tokens, dialogue_share=session.dialogue_share)
    return geometry.bytes_for(StreamSession.min_tokens(needs))


def check_cap_fits(session: StreamSession, settings: StreamSettings, frame_size: tuple[int, int] | None,
                   typed: str) -> None:
    """A CapTooSmallError, in the page's words, when `settings`' cap cannot work for frames of `frame_size`
    (a typical webcam frame when None)."""
    if settings.cap_bytes is None:
        return
    least = least_cap_bytes(session, settings, frame_size or TYPICAL_FRAME)
    if settings.cap_bytes < least:
        raise CapTooSmallError(
            f"A memory cap of {typed} is too small for this model: the prompt, a block of frames and an answer need "
            f"at least {bytes_up(least)}; type {nice_size(least)} or more.", least)


def bytes_up(nbytes: int) -> str:
    """`nbytes` as `format_bytes` writes it (two decimals), rounded up: a minimum said this way, typed
    back, is enough (150,094 bytes is '150.10 kB', not '150.09 kB')."""
    for scale in (10**9, 10**6, 10**3):
        if nbytes >= scale:
            step = scale // 100
            return format_bytes(-(-nbytes // step) * step)
    return format_bytes(nbytes)


def cap_examples(least: int, ceiling: int | None) -> list[str]:
    """Two caps a person might type that work: the least rounded up, and about twice that (or the ceiling)."""
    first = nice_size(least)
    if ceiling is not None and parse_mem_cap(first) > ceiling:  # no round size fits under the ceiling
        first = bytes_up(least).replace(" ", "")
    second = nice_size(2 * least)
    if ceiling is not None and parse_mem_cap(second) > ceiling:
        second = format_bytes(ceiling).replace(" ", "")
    return [first] if parse_mem_cap(second) <= parse_mem_cap(first) else [first, second]


def full_detail_frames(session: StreamSession, frame_size: tuple[int, int] | None) -> int | None:
    """Frames the cap holds at full detail for the stream's frames (else `frame_size`, else a typical
    320×240 frame); None without a cap."""
    frames = session.frames_before_compression()
    if frames is not None or not session.cache.capped:
        return frames
    per_group = session.adapter.tokens_per_group(*(frame_size or TYPICAL_FRAME))
    return session.frames_before_compression(tokens_per_group=per_group)


def video_length(frames: int, fps: float) -> str:
    """Frames as time of video at `fps`: '29 s', '4.3 min', '2.5 h'."""
    seconds = frames / fps
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def cap_words(session: StreamSession, frame_size: tuple[int, int] | None = None) -> str:
    """What the cap holds: tokens, then frames at full detail (of the size they are counted for) and
    minutes of video at the session's fps."""
    geometry = session.geometry
    if not session.cache.capped:
        return f"No cap: the cache grows with the stream ({geometry.bytes_per_token:,} bytes a token) and nothing is compressed."
    per_token = f"{geometry.bytes_per_token:,} B a token"
    if geometry.quantized:
        per_token += f", keys and values in {geometry.kv_bits} bits"
    frames = full_detail_frames(session, frame_size)
    text = f"The cap {format_bytes(session.cap_bytes)} holds {session.cache.capacity:,} tokens of this model ({per_token})"
    if frames is None:
        return text + "."
    height, width = session.frame_size or frame_size or TYPICAL_FRAME
    return (
        f"{text}: **{frames:,} frames of {width}×{height} at full detail, {video_length(frames, session.fps)} of "
        f"video at {session.fps:g} fps**. Then compression starts: older frames keep fewer tokens, so more frames "
        "stay in cache."
    )
