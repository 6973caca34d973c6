"""One pass over one video: frames fed to a capped session in order, each question answered when its
moment comes (`ask_at`, else at the end), exactly as `potwatch bench --accuracy` asks its questions: the
session flushed first, the answer generated greedily and rolled back (bench/logits.py `session_answer`),
so no question sees another's turn and the order of asking changes only what a cap compresses."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from potwatch.bench.logits import session_answer
from potwatch.lmms.requests import VideoQuestion, cut_at_stops
from potwatch.lmms.settings import PluginSettings


def answer_video(adapter, settings: PluginSettings, video: str, questions: list[VideoQuestion]) -> tuple[dict[int, str], dict]:
    """({request index: answer}, the pass's record: frames, peak cache against the cap, compressions)."""
    from potwatch.streaming.session import StreamSession
    from potwatch.streaming.sources import FileSource

    started = time.perf_counter()
    source = FileSource(video, fps=settings.stream.fps, max_frames=settings.max_frames)
    session = StreamSession(adapter, settings=replace(settings.stream, threads=None),  # threads: set once, by the model
                            frame_size=(source.height, source.width))
    answers: dict[int, str] = {}
    asked_after: list[int] = []  # frames seen when each question was asked, in asking order

    def ask(question: VideoQuestion) -> None:
        session.flush()  # as `ask` does: the question sees every frame fed
        text = session_answer(session, question.prompt, question.max_new_tokens)
        answers[question.index] = cut_at_stops(text, question.until)
        asked_after.append(session.frames_seen)

    try:
        waiting = list(questions)  # already in asking order (requests.video_questions)
        for frame in source:
            while waiting and waiting[0].ask_at is not None and waiting[0].ask_at <= frame.time_s:
                ask(waiting.pop(0))
            session.feed(frame)
        for question in waiting:
            ask(question)
        record = pass_record(session, video, len(questions), time.perf_counter() - started)
        record["asked_after_frames"] = asked_after
    finally:
        session.close()
    return answers, record


def pass_record(session, video: str, questions: int, seconds: float) -> dict:
    capped = session.cache.capped
    return {
        "video": video,
        "questions": questions,
        "frames": session.frames_seen,
        "cap_bytes": session.cap_bytes,
        "cache_capacity_bytes": session.geometry.bytes_for(session.cache.capacity) if capped else None,
        "peak_cache_bytes": session.peak_bytes,
        "compressions": session.monitor.event_count,
        "policy": session.policy_name,
        "kv_bits": session.kv_bits,
        "seconds": round(seconds, 3),
    }


def describe_pass(record: dict) -> str:
    """One log line: the peak against the cap and the compressions of one video's pass."""
    from potwatch.compression.mem_cap import format_bytes

    cap = "no cap" if record["cap_bytes"] is None else f"cap {format_bytes(record['cap_bytes'])}"
    return (f"potwatch: {Path(record['video']).name}: one pass, {record['frames']} frames, {record['questions']} "
            f"question(s); peak cache {format_bytes(record['peak_cache_bytes'])} ({cap}), "
            f"{record['compressions']} compression(s), {record['seconds']:.1f} s")


def append_record(path: str, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
