"""Stream times written by people: '30s', '1m30s', '90', '01:30', '00:01:30'."""

from __future__ import annotations

import re

from potwatch.errors import UserError

_UNITS = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_time(text: str) -> float:
    """Seconds in a time such as '30s', '1m30s', '90' or '01:30'."""
    value = text.strip().lower()
    try:
        if ":" in value:
            seconds = 0.0
            for part in value.split(":"):
                seconds = seconds * 60 + float(part)
            return _non_negative(seconds, text)
        return _non_negative(float(value), text)
    except ValueError:
        pass
    match = _UNITS.match(value)
    if value and match and any(match.groups()):
        hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
        return hours * 3600 + minutes * 60 + seconds
    raise UserError(f"Time '{text}' is not a stream time; write it like 30s, 1m30s, 90 or 01:30.")


def _non_negative(seconds: float, text: str) -> float:
    if seconds < 0:
        raise UserError(f"Time '{text}' is negative; give a time from the start of the video, like 30s.")
    return seconds
