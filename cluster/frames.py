"""Frames as they travel over HTTP: encoded images (JPEG or PNG, base64 in JSON) with their stream time,
checked and decoded on the stream's host, and sampled at the stream's fps as `watch` samples a file.

Every check runs before any frame of a push reaches the session, so a bad push changes nothing."""

from __future__ import annotations

import base64
import binascii
import math

import numpy as np

from potwatch.compression.mem_cap import format_bytes
from potwatch.errors import SourceError

MAX_IMAGE_BYTES = 8 * 10**6  # one encoded frame; a camera frame is tens to hundreds of kB
MAX_PIXELS = 3840 * 2160  # a 4K frame; a larger one is refused (413)
_TIME_EPS = 1e-6


class TooLargeError(SourceError):
    """A frame bigger than the cluster takes (HTTP 413)."""


def checked_times(times: list, last: float | None) -> list[float]:
    """The frames' stream times as floats: finite, not negative, each after the one before (and after
    `last`, the stream's last frame); else a SourceError naming the first that is not."""
    result = []
    for index, value in enumerate(times):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise SourceError(f"Frame {index}'s time {value!r} is not a stream time; give seconds from the stream's "
                              "start as a number, like 12.5.")
        if last is not None and value <= last:
            raise SourceError(f"Frame {index}'s time {value:g} s is not after the stream's last frame at {last:g} s; "
                              "push frames in the order of their stream time.")
        last = float(value)
        result.append(last)
    return result


def image_bytes(text, index: int) -> bytes:
    """The encoded image of frame `index` from its base64 text."""
    if not isinstance(text, str):
        raise SourceError(f"Frame {index}'s image is not base64 text; send a JPEG or PNG encoded with base64.")
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise TooLargeError(f"Frame {index} is more than {format_bytes(MAX_IMAGE_BYTES)} encoded; send a smaller "
                            "or more compressed image.")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SourceError(f"Frame {index}'s image is not valid base64; send a JPEG or PNG encoded with base64.") from None


def decode_image(data: bytes, index: int) -> np.ndarray:
    """An HxWx3 RGB uint8 frame from JPEG or PNG bytes."""
    import cv2

    raw = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
    if bgr is None:
        raise SourceError(f"Frame {index} is not a JPEG or PNG image that can be read; send one of those.")
    if bgr.shape[0] * bgr.shape[1] > MAX_PIXELS:
        raise TooLargeError(f"Frame {index} is {bgr.shape[1]}x{bgr.shape[0]} pixels, more than {MAX_PIXELS:,} "
                            "(3840x2160); send smaller frames, a model sees them resized anyway.")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_image(rgb: np.ndarray, kind: str = "jpeg", quality: int = 90) -> str:
    """An RGB frame as base64 JPEG or PNG text (what `decode_image` reads back)."""
    import cv2

    bgr = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGR)
    if kind == "png":
        ok, data = cv2.imencode(".png", bgr)
    else:
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise SourceError(f"A {rgb.shape[1]}x{rgb.shape[0]} frame could not be encoded as {kind}.")
    return base64.b64encode(data.tobytes()).decode("ascii")


class Sampler:
    """Takes a frame at each sampling instant k/fps: the first frame at or after it, as a file is sampled
    (streaming/sources.py), so a camera sending faster than the stream's fps keeps its time right."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.next_instant = 0.0

    def takes(self, time_s: float) -> bool:
        if time_s + _TIME_EPS < self.next_instant:
            return False
        self.next_instant = (math.floor(time_s * self.fps + _TIME_EPS) + 1) / self.fps
        return True
