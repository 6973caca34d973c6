"""Errors a user can cause. Each carries one sentence that says what is wrong and what to do.

The CLI prints the message and exits with code 2, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: bad input, a cap too small, an unknown name."""


class MemCapError(UserError):
    """A memory cap that is malformed, not positive, or too small for the model."""


class CacheFullError(UserError):
    """The cache reached its cap and the policy evicts nothing (`--policy none`)."""


class SourceError(UserError):
    """A video file, webcam or frame array that cannot be read."""


class ModelLoadError(UserError):
    """A model name or folder that cannot be loaded."""


class UnknownPolicyError(UserError):
    """A compression policy name that is not registered."""


class QuestionError(UserError):
    """A question that is empty or longer than the dialogue share of the cap."""


class PolicyOptionError(UserError, ValueError):
    """A policy option out of its range (alpha, recent_ratio, pool_kernel)."""


class DeviceMemoryError(UserError):
    """The device ran out of memory on a block even in smaller pieces; the session keeps what it had."""
