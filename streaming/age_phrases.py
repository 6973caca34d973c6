"""How long ago something happened, in the words answers use: "About 35 seconds ago.", "About 4 hours ago.".

An age is said on a grid that coarsens as it grows, as a person would say it: whole seconds under 20 s,
5 s steps to 2 minutes, whole minutes to an hour, whole hours after that. An answer is right when it is
within one step of that grid of the truth, and never stricter than 2 s (`age_tolerance`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# (ages below this many seconds, are said in steps of, unit, seconds per unit)
GRID = ((20.0, 1.0, "second", 1.0), (120.0, 5.0, "second", 1.0), (3600.0, 60.0, "minute", 60.0),
        (float("inf"), 3600.0, "hour", 3600.0))
MIN_TOLERANCE_S = 2.0
_AGO = re.compile(r"(\d+)\s+(second|minute|hour)s?\s+ago", re.IGNORECASE)
_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


def _step(seconds: float) -> tuple[float, str, float]:
    for below, step, unit, per_unit in GRID:
        if seconds < below:
            return step, unit, per_unit
    raise AssertionError("the grid's last row covers every age")


WHOLE_SECONDS_BELOW = 600.0  # `whole_seconds` ages are said in seconds up to this


def rounded_age(seconds: float, whole_seconds: bool = False) -> float:
    """The age on its grid, in seconds (at least one second); `whole_seconds` keeps whole seconds up to
    `WHOLE_SECONDS_BELOW`."""
    seconds = max(seconds, 0.0)
    step, _, _ = _step(seconds)
    if whole_seconds and seconds < WHOLE_SECONDS_BELOW:
        step = 1.0
    return max(step * math.floor(seconds / step + 0.5), 1.0)  # halves round up


def say_age(seconds: float, whole_seconds: bool = False) -> str:
    """'35 seconds ago', '1 minute ago', '4 hours ago' (`whole_seconds`: '37 seconds ago' too). A model that
    reads ages off its positions is taught whole seconds, so the age read back keeps its precision."""
    value = rounded_age(seconds, whole_seconds)
    _, unit, per_unit = _step(value)
    if whole_seconds and value < WHOLE_SECONDS_BELOW:
        unit, per_unit = "second", 1.0
    count = int(round(value / per_unit))
    return f"{count} {unit}{'' if count == 1 else 's'} ago"


def age_tolerance(seconds: float) -> float:
    """How far from the true age an answer may be and still be right: one step of the grid, at least 2 s."""
    return max(MIN_TOLERANCE_S, _step(max(seconds, 0.0))[0])


@dataclass(frozen=True)
class SaidAge:
    seconds: float  # the age the text says
    start: int  # where "N units ago" sits in the text
    end: int


def read_age(text: str) -> SaidAge | None:
    """The first "N seconds/minutes/hours ago" in `text`, or None."""
    match = _AGO.search(text)
    if match is None:
        return None
    return SaidAge(int(match.group(1)) * _UNITS[match.group(2).lower()], match.start(), match.end())


def stream_clock(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on: a time in the stream as potwatch shows it."""
    whole = int(max(seconds, 0.0))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
