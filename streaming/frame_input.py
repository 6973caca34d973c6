"""What `StreamSession.feed` accepts, turned into RGB frames one by one, or a clear SourceError.

`feed` takes one frame (HxW, HxWx1, HxWx3 or HxWx4 uint8; a `Frame`; anything numpy can turn into
such an array, like a PIL image), a batch NxHxWxC, or a list of frames. Anything else is refused
before the session changes, with a sentence saying what to pass instead."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from potwatch.errors import SourceError
from potwatch.models.frame_preprocessing import to_rgb_uint8

# Smaller frames show nothing a model can use, and the first frame fixes the size of the whole stream,
# so a stray 1x1 frame would shrink every later one to a dot.
MIN_FRAME_SIDE = 16

_WHAT_TO_GIVE = "give an HxWx3 uint8 array, a list of them, or Frame objects"


def check_frame_size(height: int, width: int) -> None:
    """Refuse frames too small to show anything (sizes are written width x height, as for videos)."""
    if min(height, width) < MIN_FRAME_SIDE:
        raise SourceError(
            f"A frame of {width}x{height} pixels is too small to show anything; "
            f"give frames at least {MIN_FRAME_SIDE} pixels on each side."
        )


def frames_in(frames) -> Iterator[np.ndarray]:
    """HxWx3 uint8 frames from what `feed` was given; each is checked before it is yielded."""
    if frames is None:
        raise SourceError(f"feed() got None instead of a frame; {_WHAT_TO_GIVE}.")
    if isinstance(frames, (str, bytes, os.PathLike)):
        raise SourceError(
            f"feed() got the text {os.fsdecode(frames)!r} instead of a frame; to watch a video file, "
            "feed the frames of FileSource(path)."
        )
    if hasattr(frames, "rgb"):  # a Frame
        yield _checked(frames.rgb)
        return
    if isinstance(frames, np.ndarray) or hasattr(frames, "__array_interface__") or hasattr(frames, "__array__"):
        array = np.asarray(frames)
        if array.ndim == 4:  # a batch N x H x W x C: one dtype and shape, so the first frame checks them all
            for frame in array:
                yield _checked(frame)
            return
        yield _checked(array)
        return
    try:
        items = iter(frames)
    except TypeError:
        raise SourceError(f"feed() got a {type(frames).__name__} instead of a frame; {_WHAT_TO_GIVE}.") from None
    for item in items:
        if item is None or isinstance(item, (str, bytes, os.PathLike, list, tuple)):
            raise SourceError(f"A list given to feed() holds a {type(item).__name__}, not a frame; {_WHAT_TO_GIVE}.")
        yield _checked(getattr(item, "rgb", item))


def _checked(frame) -> np.ndarray:
    rgb = to_rgb_uint8(np.asarray(frame))
    check_frame_size(*rgb.shape[:2])
    return rgb
