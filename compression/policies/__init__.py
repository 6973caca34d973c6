"""Compression policies, one per file, registered by name."""

from potwatch.compression.policies import none, tar, tar_van, uniform, van, window  # noqa: F401  (registers them)
