"""Benchmark configurations by name: a policy, optionally with its K/V stored in fewer bits, written
`tar_van@8bit`, so the quantised cache sits in every table beside the policies at 16 bits."""

from __future__ import annotations


def configuration(name: str) -> tuple[str, int]:
    """'tar_van@8bit' -> ('tar_van', 8); a plain policy name keeps K/V as the model computes them (16)."""
    policy, _, width = name.partition("@")
    return policy, int(width.removesuffix("bit")) if width else 16


def quantised_variants(policy: str, widths) -> list[str]:
    """`policy` at each width below 16: ['tar_van@8bit', 'tar_van@4bit']; none for a policy that keeps
    per-head slots, which a quantised cache cannot hold (compression/quantized_kv.py)."""
    from potwatch.compression.policies.base import make_policy

    if make_policy(policy).slot_counts:
        return []
    return [f"{policy}@{bits}bit" for bits in widths if bits != 16]
