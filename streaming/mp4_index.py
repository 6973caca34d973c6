"""Tell an incomplete MP4 from a file that is no video at all, when FFmpeg cannot open either.

An MP4 (or MOV, M4V) written by a camera or an encoder usually puts its index, the `moov` box, at the
end. A copy or a recording cut off part-way keeps the `ftyp` box at the start but loses the index, and
FFmpeg then says only "Invalid data found". Walking the top-level boxes says which case it is, so the
user hears "copy it again" rather than "this is not a video"."""

from __future__ import annotations

import struct
from pathlib import Path

_HEADER = struct.Struct(">I4s")


def is_incomplete_mp4(path: str | Path) -> bool:
    """True when `path` starts like an MP4 but has no complete `moov` box (the index of its frames)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        offset, first = 0, True
        while offset + _HEADER.size <= size:
            handle.seek(offset)
            box_size, kind = _HEADER.unpack(handle.read(_HEADER.size))
            if first and kind != b"ftyp":
                return False  # not an MP4 at all
            first = False
            if box_size == 1:  # a 64-bit size follows the type
                box_size = struct.unpack(">Q", handle.read(8))[0]
            elif box_size == 0:  # the box runs to the end of the file
                box_size = size - offset
            if box_size < _HEADER.size:
                return True  # a damaged header: the rest cannot be walked
            if kind == b"moov":
                return offset + box_size > size  # present, but cut off?
            offset += box_size
    return not first  # an MP4 whose boxes end without an index
