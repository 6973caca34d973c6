"""potwatch: watch a video stream with a vision-language model under a hard KV-cache memory cap.

The public face: `StreamSession` (feed frames, ask questions), `load_model` (a demo name, a hub id or
a local folder) and `parse_mem_cap` ('2GB' -> bytes)."""

from __future__ import annotations

__version__ = "0.1.0"

from potwatch.compression.mem_cap import parse_mem_cap
from potwatch.models.registry import load_model
from potwatch.streaming.session import StreamSession

__all__ = ["StreamSession", "load_model", "parse_mem_cap", "__version__"]
