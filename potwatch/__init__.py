"""potwatch: watch a video stream with a vision-language model under a hard KV-cache memory cap."""

from __future__ import annotations

__version__ = "0.1.0"
