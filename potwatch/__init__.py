"""potwatch: watch a video stream with a vision-language model under a hard KV-cache memory cap.

The public face: `StreamSession` (feed frames, ask questions), `load_model` (a demo name, a hub id or
a local folder), `parse_mem_cap` ('2GB' -> bytes) and `use_threads` (torch's CPU threads, see
potwatch/threads.py).

The names load on first use, so `import potwatch` (and the `potwatch` command) does not import torch
before the command has set what OpenMP reads once, when torch loads it (OMP_WAIT_POLICY)."""

from __future__ import annotations

__version__ = "0.1.0"

_PUBLIC = {
    "StreamSession": "potwatch.streaming.session",
    "load_model": "potwatch.models.registry",
    "parse_mem_cap": "potwatch.compression.mem_cap",
    "use_threads": "potwatch.threads",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'potwatch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
