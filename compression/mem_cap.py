"""Parse and print memory caps given in bytes: `2GB`, `1.5GiB`, `512MB`, `64MiB`, `300kB`, `123456`.

Decimal units are powers of 10 (GB = 10^9), binary units powers of 2 (GiB = 2^30), as users expect
from disk and RAM sizes."""

from __future__ import annotations

import re

from potwatch.errors import MemCapError

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_EXAMPLES = "write it like 2GB, 1.5GiB, 512MB, 64MiB, 300kB or a number of bytes"


def parse_mem_cap(text: str | int | float) -> int:
    """Bytes in a cap such as '2GB' or '64MiB'. Raises MemCapError with a fix for anything else."""
    if isinstance(text, bool):
        raise MemCapError(f"Memory cap {text!r} is not a size; {_EXAMPLES}.")
    whole = None  # the number when it is a whole one, kept exact: a float rounds sizes past 2**53 bytes
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
        whole = text if isinstance(text, int) else None
    else:
        if text.strip().startswith("-"):
            raise MemCapError(f"Memory cap '{text}' is negative; give a positive size ({_EXAMPLES}).")
        match = _PATTERN.match(str(text))
        if not match:
            raise MemCapError(f"Memory cap '{text}' is not a size; {_EXAMPLES}.")
        value, unit = float(match.group(1)), match.group(2).lower()
        whole = match.group(1) if match.group(1).isdigit() else None
        if unit not in _UNITS:
            raise MemCapError(f"Memory cap '{text}' has an unknown unit '{match.group(2)}'; {_EXAMPLES}.")
    if value != value or value in (float("inf"),):
        raise MemCapError(f"Memory cap {text!r} is not a finite size; {_EXAMPLES}.")
    if value < 0:
        raise MemCapError(f"Memory cap {text!r} is negative; give a positive size ({_EXAMPLES}).")
    nbytes = int(whole) * _UNITS[unit] if whole is not None else int(value * _UNITS[unit])
    if nbytes <= 0:
        raise MemCapError(f"Memory cap {text!r} is zero; give a positive size ({_EXAMPLES}).")
    return nbytes


NO_CAP_WORDS = ("none", "off", "unlimited")
AUTO_WORD = "auto"  # the largest cap that fits on the device: compression/auto_cap.py


def is_auto(text) -> bool:
    """True for 'auto' (any case, any spaces around it)."""
    return isinstance(text, str) and text.strip().lower() == AUTO_WORD


def parse_optional_mem_cap(text: str | int | float | None) -> int | None:
    """Bytes in a cap, or None for 'none', 'off' or 'unlimited': no cap, the cache grows (for comparisons).
    'auto' is chosen by the session, which knows the model and the device: a MemCapError here."""
    if is_auto(text):
        raise MemCapError("A cap of 'auto' is not taken here; give a size such as 1GB ('auto' works for "
                          "potwatch watch --mem-cap auto and StreamSession(mem_cap='auto')).")
    if text is None or (isinstance(text, str) and text.strip().lower() in NO_CAP_WORDS):
        return None
    return parse_mem_cap(text)


def format_bytes(nbytes: float) -> str:
    """Human-readable decimal size, e.g. '2.00 GB', '512.0 kB'."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{int(nbytes)} B"
