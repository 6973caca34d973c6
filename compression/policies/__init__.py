"""Compression policies, one per file, registered by name."""

from potwatch.compression.policies import (  # noqa: F401  (registers them)
    adakv,
    expected_attention,
    global_score,
    keep_merge,
    none,
    tar,
    tar_van,
    uniform,
    van,
    window,
)
