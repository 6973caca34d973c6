"""The front door's requests and replies, apart from the deployment: a body's shape checked, and a host's
or the directory's reply as HTTP (a refusal's status, Retry-After and one sentence as `{"detail": ...}`).

Apart because Serve ships the deployment class to its replicas by value; these travel by reference."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from potwatch.cluster import replies
from potwatch.compression.mem_cap import is_auto, parse_mem_cap
from potwatch.errors import MemCapError

MAX_FRAMES_PER_PUSH = 256


class BadRequest(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def answer(reply: dict, status: int = 200) -> JSONResponse:
    """A host's or the directory's reply as HTTP: its refusal's status and sentence, or the result."""
    refusal = replies.refusal_of(reply)
    if refusal is None:
        return JSONResponse(reply, status_code=status)
    headers = {"Retry-After": str(refusal["retry_after"])} if refusal.get("retry_after") else None
    body = {key: value for key, value in refusal.items() if key not in ("status", "retry_after")}
    return JSONResponse(body, status_code=refusal["status"], headers=headers)


def open_settings(body: dict) -> tuple[dict, int]:
    """(the stream's settings, its cap in bytes) from an open request; the host checks the rest, names
    included (it knows the settings a session takes)."""
    if "mem_cap" not in body:
        raise BadRequest(replies.BAD_INPUT, "Give the stream a memory cap, like {\"mem_cap\": \"64MB\"}: it is placed "
                         "on a host with room for it.")
    cap = body["mem_cap"]
    if cap is None or (isinstance(cap, str) and (is_auto(cap) or cap.strip().lower() == "none")):
        raise BadRequest(replies.BAD_INPUT, "A cluster stream needs a memory cap in bytes, such as 64MB, so it can be "
                         "placed within a host's budget; 'none' and 'auto' are not taken.")
    if not isinstance(cap, (str, int)):
        raise BadRequest(replies.BAD_INPUT, f"Memory cap {cap!r} is not a size; write it like 64MB or 1GB.")
    try:
        cap_bytes = parse_mem_cap(cap)
    except MemCapError as error:
        raise BadRequest(replies.BAD_INPUT, str(error)) from None
    return dict(body), cap_bytes


def push_frames(body: dict) -> tuple[list, list]:
    """(times, base64 images) of a push; its shape checked here, the values on the host."""
    frames = body.get("frames")
    if not isinstance(frames, list) or not frames:
        raise BadRequest(replies.BAD_INPUT, "Give the frames as a list: {\"frames\": [{\"t\": 0.5, \"image\": "
                         "\"<base64 JPEG>\"}]}.")
    if len(frames) > MAX_FRAMES_PER_PUSH:
        raise BadRequest(replies.TOO_LARGE, f"The push holds {len(frames)} frames; push at most {MAX_FRAMES_PER_PUSH} at a time.")
    if not all(isinstance(frame, dict) and "t" in frame and "image" in frame for frame in frames):
        raise BadRequest(replies.BAD_INPUT, "Each frame needs its stream time and image: {\"t\": 0.5, \"image\": "
                         "\"<base64 JPEG>\"}.")
    return [frame["t"] for frame in frames], [frame["image"] for frame in frames]
