"""The fidelity table, InfiniPot-V's Table 1 in miniature: the full cache, every compressing policy and
tar_van with K/V in 8 and 4 bits answer the same multiple-choice questions about the same videos, under
caps that hold 1/2, 1/4, 1/8 and 1/16 of each stream's visual tokens.

The cap of a stream of V visual tokens at ratio r is the bytes of S + ceil(r * V) + Q tokens in the
model's plain 16-bit geometry (K/V and metadata, as tar_van stores them): S the system prompt, Q the
longest question of the set plus one. Every configuration of a ratio gets those same bytes, so 8- and
4-bit K/V hold more tokens and policies that keep per-token scores or slot counts hold fewer. What a
configuration really held is measured when each question is asked (visual tokens in the cache over
visual tokens seen), because the session compresses to 3/4 of its capacity and the question's room
goes to frames until a question comes.

Questions are scored as `bench_accuracy` scores them (next-token letter probabilities, the cache rolled
back after each), so they are independent. Each video is decoded once and every configuration streams
its frames from memory; streams can be spread over worker processes of one torch thread each."""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from potwatch.bench.accuracy import TEXT_ANSWER_TOKENS, QAItem, find_video, letter_token_ids, questions_by_video, score_letters
from potwatch.bench.configurations import compressing_policies, configuration, ingest_of, quantised_variants
from potwatch.bench.logits import session_answer, session_logits
from potwatch.compression.budget import session_geometry
from potwatch.compression.policies.base import make_policy
from potwatch.errors import MemCapError, UserError

FULL = "full"  # the full cache (no cap, nothing evicted)
DEFAULT_RATIOS = "1/2,1/4,1/8,1/16"
# No turn stays in the cache (each question is rolled back), so the dialogue share only bounds the
# question; half the cap lets small caps pass the session's minimum-cap check without taking frames' room.
DIALOGUE_SHARE = 0.5
ANSWER_TOKENS = 1  # one next-token distribution is all a letter needs
WRONG_TEXT = "x"  # the mark of a free-text answer that does not check out


def parse_ratios(text: str) -> tuple[Fraction, ...]:
    """'1/2,1/4' -> (1/2, 1/4), largest first; a UserError for anything but shares in (0, 1]."""
    ratios = set()
    for part in (p.strip() for p in text.split(",")):
        try:
            value = Fraction(part)
        except (ValueError, ZeroDivisionError):
            value = None
        if value is None or not 0 < value <= 1:
            raise UserError(f"--ratios '{text}' is not a list of shares of the stream; write it like 1/2,1/4,1/8,1/16.")
        ratios.add(value)
    return tuple(sorted(ratios, reverse=True))


def ratio_label(ratio: Fraction) -> str:
    return str(ratio)  # Fraction prints 1/8, and 1 for the whole stream


def configurations(policies: tuple[str, ...] | None, widths: tuple[int, ...]) -> list[str]:
    """Every compressing policy (tar_van first), then the first policy at each quantised width."""
    if policies is None:
        policies = compressing_policies()
    return list(policies) + (quantised_variants(policies[0], widths) if policies else [])


@dataclass
class FidelityPlan:
    """What every stream runs; plain data, so a worker process gets it whole."""

    configurations: list[str]
    ratios: tuple[Fraction, ...]
    question_room: int  # Q: the longest question of the set, plus one
    system_tokens: int  # S
    fps: float = 2.0
    max_frames: int | None = None
    target_ratio: float = 0.75  # the session's own: a compression thins the cache to this share of it
    answers: str = "letter"  # "letter": the option letter ranked first; "text": the free-text answer, checked

    def cap_tokens(self, visual_tokens: int, ratio: Fraction) -> int:
        return self.system_tokens + math.ceil(ratio * visual_tokens) + self.question_room


def make_plan(adapter, items: list[QAItem], configurations: list[str], ratios, fps: float = 2.0,
              max_frames: int | None = None, answers: str = "letter") -> FidelityPlan:
    from potwatch.streaming.session import StreamSession

    if answers == "text" and any(item.truth is None for item in items):
        raise UserError("--answers text needs each question's free-text truth, as make-qa writes it; use --answers letter.")
    asked = [item.prompt() if answers == "letter" else item.question for item in items]
    room = max(len(adapter.question_ids(text)) for text in asked) + 1 + (TEXT_ANSWER_TOKENS if answers == "text" else 0)
    probe = StreamSession(adapter, mem_cap=None, policy="none", fps=fps)
    system, target = probe.system_tokens, probe.target_ratio
    probe.close()
    return FidelityPlan(configurations, tuple(ratios), room, system, fps, max_frames, target, answers)


def score_stream(adapter, path: Path, items: list[QAItem], plan: FidelityPlan) -> dict:
    """Decode `path` once, then run the full cache and every configuration at every ratio on its frames."""
    from potwatch.streaming.sources import FileSource

    started = time.perf_counter()
    decoded = list(FileSource(path, fps=plan.fps, max_frames=plan.max_frames))
    if not decoded:
        raise UserError(f"'{path}' gave no frame at {plan.fps:g} fps; check the video.")
    frames, times = [frame.rgb for frame in decoded], [frame.time_s for frame in decoded]
    decode_s = time.perf_counter() - started
    items = sorted(items, key=lambda q: (q.ask_at is None, q.ask_at or 0.0))
    letters = [letter_token_ids(adapter.tokenizer, item.letters) for item in items]
    height, width = frames[0].shape[:2]
    groups = math.ceil(len(frames) / adapter.frames_per_group)
    visual = groups * adapter.tokens_per_group(height, width)
    geometry = session_geometry(adapter.geometry(), make_policy("tar_van"), 16)
    caps = {ratio: geometry.bytes_for(plan.cap_tokens(visual, ratio)) for ratio in plan.ratios}
    runs = [_run(adapter, frames, times, items, letters, FULL, None, None, plan)]
    for ratio in plan.ratios:
        for name in plan.configurations:
            runs.append(_run(adapter, frames, times, items, letters, name, ratio, caps[ratio], plan))
    return {
        "video": path.name,
        "frames": len(frames),
        "visual_tokens": visual,
        "decode_s": decode_s,
        "caps": {ratio_label(r): {"tokens": plan.cap_tokens(visual, r), "bytes": caps[r]} for r in plan.ratios},
        "items": [item.id for item in items],
        "runs": runs,
    }


def _run(adapter, frames, times, items, letters, name, ratio, cap_bytes, plan) -> dict:
    """One configuration on one stream: every question asked at its moment, on a fresh session."""
    from potwatch.streaming.session import StreamSession

    started = time.perf_counter()
    record = {"configuration": name, "ratio": None if ratio is None else ratio_label(ratio)}
    policy, kv_bits = ("none", 16) if name == FULL else configuration(name)
    try:
        session = StreamSession(adapter, mem_cap=cap_bytes, policy=policy, fps=plan.fps, max_new_tokens=ANSWER_TOKENS,
                                dialogue_share=DIALOGUE_SHARE, target_ratio=plan.target_ratio,
                                frame_size=frames[0].shape[:2], kv_bits=kv_bits, ingest=ingest_of(name))
    except MemCapError as error:
        return record | {"error": str(error)}
    predicted, held, seen, fed = [], [], [], 0
    for item, ids in zip(items, letters):
        end = len(frames) if item.ask_at is None else bisect.bisect_left(times, item.ask_at)
        if end > fed:
            session.feed(frames[fed:end])
            fed = end
        letter, held_tokens, seen_tokens = _ask(session, item, ids, plan.answers)
        predicted.append(letter)
        held.append(held_tokens)
        seen.append(seen_tokens)
    record.update(
        predicted="".join(predicted),
        held=held,
        seen=seen,
        cap_tokens=session.cache.capacity if session.cache.capped else None,
        cap_bytes=cap_bytes,
        peak_bytes=session.peak_bytes,
        compressions=session.monitor.event_count,
        sent_tokens=session.ingest_stats()["sent_tokens"],
        seconds=time.perf_counter() - started,
    )
    session.close()
    return record


def _ask(session, item: QAItem, ids: dict[str, list[int]], answers: str = "letter") -> tuple[str, int, int]:
    """(predicted letter, visual tokens held, visual tokens seen) when `item` is asked now. With free-text
    answers the "letter" is the right one when the answer checks out, else WRONG_TEXT, so the figures are
    computed the same way for both."""
    from potwatch.compression.token_meta import TokenKind
    from potwatch.world.questions import check_answer

    session.flush()  # as `ask` does: the question sees every frame fed
    if answers == "text":
        text = session_answer(session, item.question, TEXT_ANSWER_TOKENS)
        letter = item.answer if check_answer(item.truth, text) else WRONG_TEXT
    else:
        probabilities = score_letters(session_logits(session, item.prompt()), ids)
        letter = max(probabilities, key=probabilities.get)
    held = session.cache.kind_counts()[TokenKind.VISION]  # after the question's own make-room
    return letter, held, session.blocks * session.block_tokens


def stream_jobs(items: list[QAItem], videos: str | Path, streams: int | None = None) -> list[tuple[Path, list[QAItem]]]:
    """(video path, its questions) in the order the questions name them; the first `streams` videos."""
    folder = Path(videos)
    repeated = sorted(name for name, count in Counter(item.id for item in items).items() if count > 1)
    if repeated:  # every row of the table is matched to its question by id
        raise UserError(f"Question ids repeat ({', '.join(repeated[:5])}); give every question its own question_id.")
    by_video = questions_by_video(items, folder)
    names = list(by_video)[:streams] if streams else list(by_video)
    return [(find_video(folder, name), by_video[name]) for name in names]


# --- worker processes ---------------------------------------------------------------------------
_WORKER: dict = {}


def _worker_start(model: str, device: str | None, trust_remote_code: bool, threads: int) -> None:
    import torch

    from potwatch.models.registry import load_model

    torch.set_num_threads(threads)
    _WORKER["adapter"] = load_model(model, device=device, trust_remote_code=trust_remote_code)


def _worker_stream(job) -> dict:
    path, items, plan = job
    return score_stream(_WORKER["adapter"], path, items, plan)


def score_streams(adapter, jobs, plan: FidelityPlan, workers: int = 1, model: str | None = None,
                  device: str | None = None, trust_remote_code: bool = False, threads: int = 1,
                  progress: bool = False) -> list[dict]:
    """Every stream's runs, in job order: in this process, or spread over `workers` processes (each
    loads `model` itself and runs one stream at a time)."""
    bar = _bar(len(jobs), progress)
    results = []
    if workers <= 1 or len(jobs) <= 1:
        for path, items in jobs:
            results.append(score_stream(adapter, path, items, plan))
            bar.update()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # no torch state forked into the workers
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_worker_start,
                                 initargs=(model, device, trust_remote_code, threads)) as pool:
            for result in pool.map(_worker_stream, [(path, items, plan) for path, items in jobs]):
                results.append(result)
                bar.update()
    bar.close()
    return results


def _bar(total: int, show: bool):
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc="fidelity", unit="video", file=sys.stderr, disable=None if show else True, leave=False)
