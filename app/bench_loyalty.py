"""Loyalty (as EffiVLM-Bench defines it): how closely a compressed cache's answers follow the full
cache's on the same frames. For each policy and compression ratio, the cache after the frames is copied,
compressed once to that share of its visual tokens, and asked the same questions; the next-token
distribution is compared with the full cache's by KL(full || compressed) and top-1 agreement.

At ratio 1 nothing is evicted, so the logits must be exactly equal: that checks the machinery itself."""

from __future__ import annotations

import dataclasses

import torch

from potwatch.app.bench_logits import cache_logits, copy_cache_into, spare_copy
from potwatch.compression.monitor import CompressionMonitor
from potwatch.compression.policies.base import make_policy
from potwatch.compression.token_meta import TokenKind
from potwatch.streaming.session import StreamSession

LOYALTY_QUESTIONS = (
    "What is on the stove?",
    "Did a delivery arrive? When?",
    "What colour is the ball?",
    "Describe what moved in the video.",
)
RATIOS = (1.0, 1 / 2, 1 / 4, 1 / 8, 1 / 16)
POLICIES = ("tar_van", "tar", "van", "uniform", "window", "expected_attention", "global_score", "keep_merge")


def observed_cache(adapter, frames: list, fps: float, policy: str, tokens: int):
    """The same frames through a capped session with room for all of them, so nothing is evicted (its
    cache equals the full one) while a policy that needs queries sees every block's, and a policy that
    keeps slot counts has them (and the attention that reads them): returns its cache and the last
    block's query statistics."""
    needs = make_policy(policy)
    geometry = dataclasses.replace(adapter.geometry(), token_scores=needs.token_scores, slot_counts=needs.slot_counts)
    session = StreamSession(adapter, mem_cap=geometry.bytes_for(2 * tokens + 256), policy=policy, fps=fps)
    session.feed(frames)
    assert session.monitor.event_count == 0, "the observing session compressed"
    return session.cache, session.monitor.queries


def kl_divergence(full: torch.Tensor, compressed: torch.Tensor) -> float:
    """KL(p_full || p_compressed) of two next-token logit vectors, in nats (float64)."""
    log_p = torch.log_softmax(full.double(), dim=-1)
    log_q = torch.log_softmax(compressed.double(), dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum())


def measure_loyalty(adapter, frames: list, fps: float = 2.0, policies=POLICIES, ratios=RATIOS,
                    questions=LOYALTY_QUESTIONS) -> dict:
    """Per policy, per ratio: mean and max KL, top-1 agreement and largest logit difference over the questions."""
    session = StreamSession(adapter, mem_cap=None, policy="none", fps=fps)
    session.feed(frames)
    full = session.cache
    positions = session.positions
    reference = [cache_logits(adapter, full, positions, q) for q in questions]
    longest = max(len(adapter.question_ids(q)) for q in questions)
    visual = full.kind_counts()[TokenKind.VISION]
    protected = full.length - visual
    results: dict[str, list[dict]] = {}
    for name in policies:
        source, queries = full, None
        if make_policy(name).needs_queries or make_policy(name).slot_counts:
            source, queries = observed_cache(adapter, frames, fps, name, full.length + longest + 1)
        work = spare_copy(source, longest + 1)
        rows = []
        for share in ratios:
            copy_cache_into(work, source)
            keep = min(visual, max(1, round(share * visual)))
            if keep < visual:
                monitor = CompressionMonitor(work, make_policy(name), target_ratio=1.0)
                monitor.queries = queries
                monitor.make_room(work.capacity - (protected + keep))
            logits = [cache_logits(adapter, work, positions, q) for q in questions]
            kls = [kl_divergence(r, c) for r, c in zip(reference, logits)]
            rows.append({
                "ratio": share,
                "visual_tokens_kept": work.kind_counts()[TokenKind.VISION],
                "kl_mean": sum(kls) / len(kls),
                "kl_max": max(kls),
                "top1_agreement": sum(int(r.argmax() == c.argmax()) for r, c in zip(reference, logits)) / len(logits),
                "max_abs_logit_diff": max(float((r - c).abs().max()) for r, c in zip(reference, logits)),
                "exact": all(torch.equal(r, c) for r, c in zip(reference, logits)),
            })
        results[name] = rows
    summary = {
        "frames": session.frames_seen,
        "visual_tokens": visual,
        "questions": list(questions),
        "ratios": list(ratios),
        "policies": results,
        "ratio_1_exact": all(row["exact"] for rows in results.values() for row in rows if row["ratio"] == 1.0),
    }
    session.close()
    return summary
