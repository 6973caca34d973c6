"""What hosts and the directory send back through Ray: plain dicts, never exceptions, so the front door
turns a refusal into its HTTP status and potwatch's one sentence without unpickling error classes.

A refusal is `{"refused": {"status": 410, "detail": "...", "retry_after": None}}`; anything else is a
result. The statuses: 400 bad input, 404 unknown stream, 410 stream lost (its host stopped, or it was
closed for being idle), 413 too large, 503 no room or busy (with Retry-After)."""

from __future__ import annotations

BAD_INPUT, UNKNOWN, LOST, TOO_LARGE, NO_ROOM = 400, 404, 410, 413, 503


def refused(status: int, detail: str, retry_after: int | None = None, **extra) -> dict:
    """A refusal with its HTTP status and one sentence (`retry_after`: seconds, for 503)."""
    return {"refused": {"status": status, "detail": detail, "retry_after": retry_after, **extra}}


def refusal_of(reply: dict) -> dict | None:
    """The refusal inside `reply`, or None for a result."""
    return reply.get("refused") if isinstance(reply, dict) else None


def unknown_stream(stream_id: str) -> dict:
    return refused(UNKNOWN, f"There is no stream '{stream_id}' on this cluster; open one with POST /streams.")


def lost_stream(stream_id: str, why: str) -> dict:
    return refused(LOST, f"Stream '{stream_id}' is lost: {why}; open a new stream with POST /streams.")
