"""Benchmark configurations by name: a policy, optionally with its K/V stored in fewer bits, written
`tar_van@8bit`, so the quantised cache sits in every table beside the policies at 16 bits; and optionally
with change-aware ingest, written `tar_van+changed` (streaming/change_filter.py), so sending only what
changed sits beside sending every visual token."""

from __future__ import annotations

CHANGED = "+changed"


def configuration(name: str) -> tuple[str, int]:
    """'tar_van@8bit' -> ('tar_van', 8); a plain policy name keeps K/V as the model computes them (16)."""
    policy, _, width = name.removesuffix(CHANGED).partition("@")
    return policy, int(width.removesuffix("bit")) if width else 16


def ingest_of(name: str) -> str:
    """'tar_van+changed' -> 'changed'; any other name sends every visual token ('all')."""
    return "changed" if name.endswith(CHANGED) else "all"


def quantised_variants(policy: str, widths) -> list[str]:
    """`policy` at each width below 16: ['tar_van@8bit', 'tar_van@4bit']; none for a policy that keeps
    per-head slots, which a quantised cache cannot hold (compression/quantized_kv.py)."""
    from potwatch.compression.policies.base import make_policy

    base, changed = policy.removesuffix(CHANGED), CHANGED if policy.endswith(CHANGED) else ""
    if make_policy(configuration(policy)[0]).slot_counts:
        return []
    return [f"{base}@{bits}bit{changed}" for bits in widths if bits != 16]


DEFAULT_POLICY = "tar_van"  # the benchmarks' reference: listed first, and the one run at fewer bits


def compressing_policies(ablations: bool = True) -> tuple[str, ...]:
    """Every registered policy that compresses, from the registry (a new policy file joins every
    benchmark without an edit here): the default first, then by name. Without `ablations`, the ablations
    of another policy (tar, van) are left out, as the cost tables leave them."""
    from potwatch.compression.policies.base import policy_classes

    classes = policy_classes()
    rest = sorted(name for name, cls in classes.items()
                  if cls.evicts and name != DEFAULT_POLICY and (ablations or not cls.ablation))
    return (DEFAULT_POLICY, *rest)
