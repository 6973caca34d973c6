"""Loyalty (as EffiVLM-Bench defines it): how closely a compressed cache's answers follow the full
cache's on the same frames. For each policy and compression ratio, the cache after the frames is copied,
compressed once to that share of its visual tokens, and asked the same questions; the next-token
distribution is compared with the full cache's by KL(full || compressed) and top-1 agreement.

At ratio 1 nothing is evicted, so the logits must be exactly equal: that checks the machinery itself.
A quantised configuration (`tar_van@8bit`) keeps the same number of tokens in 8 or 4 bits, so its
ratio-1 row is the cost of quantising alone."""

from __future__ import annotations

import dataclasses
import math

import torch

from potwatch.bench.configurations import compressing_policies, configuration
from potwatch.bench.logits import cache_logits, copy_cache_into, session_logits, spare_copy
from potwatch.compression.budget import session_geometry
from potwatch.compression.monitor import CompressionMonitor
from potwatch.compression.policies.base import make_policy, policy_classes
from potwatch.compression.token_meta import TokenKind
from potwatch.compression.token_state import union
from potwatch.streaming.session import StreamSession

LOYALTY_QUESTIONS = (
    "What is on the stove?",
    "Did a delivery arrive? When?",
    "What colour is the ball?",
    "Describe what moved in the video.",
)
RATIOS = (1.0, 1 / 2, 1 / 4, 1 / 8, 1 / 16)
STREAMED_SHARE = 1 / 4  # the streamed check's cap holds this share of the visual tokens (plus prompt and a block)


def observed_cache(adapter, frames: list, fps: float, policy: str, tokens: int):
    """The same frames through a capped session with room for all of them, so nothing is evicted (its
    cache equals the full one) while a policy that needs queries sees every block's, and a policy that
    keeps slot counts has them (and the attention that reads them): returns its cache, the last
    block's query statistics and the policy as the stream left it (adakv's shares)."""
    needs = make_policy(policy)
    geometry = session_geometry(adapter.geometry(), needs, 16)
    session = StreamSession(adapter, mem_cap=geometry.bytes_for(2 * tokens + 256), policy=policy, fps=fps)
    session.feed(frames)
    assert session.monitor.event_count == 0, "the observing session compressed"
    return session.cache, session.monitor.queries, session.policy


def agreement(reference: list[torch.Tensor], logits: list[torch.Tensor]) -> dict:
    """Mean and max KL, top-1 agreement, largest logit difference and exact equality over the questions."""
    kls = [kl_divergence(r, c) for r, c in zip(reference, logits)]
    return {
        "kl_mean": sum(kls) / len(kls),
        "kl_max": max(kls),
        "top1_agreement": sum(int(r.argmax() == c.argmax()) for r, c in zip(reference, logits)) / len(logits),
        "max_abs_logit_diff": max(float((r - c).abs().max()) for r, c in zip(reference, logits)),
        "exact": all(torch.equal(r, c) for r, c in zip(reference, logits)),
    }


def streamed_loyalty(adapter, frames: list, fps: float, policy: str, cap_bytes: int, reference: list[torch.Tensor],
                     questions) -> dict:
    """The frames streamed through a session of `policy` under `cap_bytes` (the same bytes for every
    policy, so one that stores more per token, or pads rows with holes, holds fewer tokens), then the
    questions asked as a session asks them, against the full cache's answers."""
    policy, kv_bits = configuration(policy)  # `tar_van@8bit`: the same bytes hold more tokens
    session = StreamSession(adapter, mem_cap=cap_bytes, policy=policy, fps=fps, max_new_tokens=1, kv_bits=kv_bits)
    session.feed(frames)
    logits = [session_logits(session, q) for q in questions]
    kinds = session.cache.rows("kind")[:, : session.cache.length]
    result = {"compressions": session.monitor.event_count, "cache_slots": session.cache.length,
              "visual_tokens_held": int((kinds == TokenKind.VISION).sum()) / kinds.shape[0],
              **agreement(reference, logits)}
    session.close()
    return result


def kl_divergence(full: torch.Tensor, compressed: torch.Tensor) -> float:
    """KL(p_full || p_compressed) of two next-token logit vectors, in nats (float64)."""
    log_p = torch.log_softmax(full.double(), dim=-1)
    log_q = torch.log_softmax(compressed.double(), dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum())


def measure_loyalty(adapter, frames: list, fps: float = 2.0, policies=None, ratios=RATIOS,
                    questions=LOYALTY_QUESTIONS) -> dict:
    """Per policy, per ratio: mean and max KL, top-1 agreement and largest logit difference over the questions;
    and per policy the same figures for the frames streamed under one cap (`streamed`).

    Every policy keeps `ratio` x the visual tokens per row (per-head budgets: per row on average over
    each layer, rows up to all of them long, the difference padded with holes: `cache_slots` counts
    the slots the rows then take, holes included)."""
    policies = compressing_policies() if policies is None else policies
    session = StreamSession(adapter, mem_cap=None, policy="none", fps=fps, max_new_tokens=1)
    session.feed(frames)
    full = session.cache
    positions = session.positions
    reference = [cache_logits(adapter, full, positions, q) for q in questions]
    longest = max(len(adapter.question_ids(q)) for q in questions)
    visual = full.kind_counts()[TokenKind.VISION]
    protected = full.length - visual
    results: dict[str, list[dict]] = {}
    streamed: dict[str, dict] = {}
    plain = adapter.geometry()
    every_state = union(*(policy.per_token_state for policy in policy_classes().values()))
    heaviest = dataclasses.replace(plain, token_state=every_state)  # every policy must fit a block in it
    cap_bytes = max(plain.bytes_for(protected + math.ceil(STREAMED_SHARE * visual) + session.block_tokens),
                    heaviest.bytes_for(session.min_tokens()))
    cap_tokens = plain.tokens_for(cap_bytes)
    for name in policies:
        policy_name, kv_bits = configuration(name)  # `tar_van@8bit`: the same tokens, stored in 8 bits
        source, queries, policy = full, None, make_policy(policy_name)
        if policy.needs_queries or policy.slot_counts:
            source, queries, policy = observed_cache(adapter, frames, fps, policy_name, full.length + longest + 1)
        work = spare_copy(source, longest + 1, kv_bits)
        rows = []
        for share in ratios:
            copy_cache_into(work, source)
            keep = min(visual, max(1, round(share * visual)))
            if keep < visual:
                monitor = CompressionMonitor(work, policy, target_ratio=1.0)
                monitor.queries = queries
                monitor.thin_visual(keep, longest=visual)
            logits = [cache_logits(adapter, work, positions, q) for q in questions]
            rows.append({"ratio": share, "visual_tokens_kept": work.kind_counts()[TokenKind.VISION],
                         "cache_slots": work.length, "kv_bits": kv_bits, **agreement(reference, logits)})
        results[name] = rows
        streamed[name] = streamed_loyalty(adapter, frames, fps, name, cap_bytes, reference, questions)
    summary = {
        "frames": session.frames_seen,
        "visual_tokens": visual,
        "questions": list(questions),
        "ratios": list(ratios),
        "policies": results,
        # at 16 bits, ratio 1 must reproduce the full cache exactly; fewer bits measure what quantising costs
        "ratio_1_exact": all(row["exact"] for rows in results.values() for row in rows
                             if row["ratio"] == 1.0 and row["kv_bits"] == 16),
        "streamed": {"share": STREAMED_SHARE, "cap_tokens": cap_tokens,
                     "cap_bytes": cap_bytes, "policies": streamed},
    }
    session.close()
    return summary
