"""The words the web UI shows: the status line, the numbers, and the line under each answer.

Pure functions of a tab's snapshots, so the page's timer never touches the model."""

from __future__ import annotations

import time

from potwatch.compression.mem_cap import format_bytes
from potwatch.streaming.answer import Answer

from potwatch.app.ui_sessions import TabSession

WEBCAM_QUIET_S = 3.0  # no camera frame for this long: the browser stopped streaming


def activity(tab: TabSession) -> str:
    """What the tab's source is doing, e.g. 'playing demo.mp4 at 12.5 s of 30.0 s'."""
    runner = tab.runner
    if runner is not None and runner.kind == "file":
        source = runner.source
        where = f"{source.position_s:.1f} s" + (f" of {source.duration_s:.1f} s" if source.duration_s else "")
        if runner.finished:
            return f"finished {tab.video_name}" if not runner.error else f"stopped {tab.video_name} at {where}"
        if source.paused:
            return f"paused {tab.video_name} at {where}"
        return f"playing {tab.video_name} at {where}"
    if tab.webcam_paused:
        return "webcam paused"
    if runner is not None and runner.kind == "webcam" and not runner.finished:
        if time.monotonic() - runner.source.last_offer_at > WEBCAM_QUIET_S:
            return "webcam stopped"
        return "watching the webcam"
    if tab.stats.get("frames_seen"):
        return "stopped"
    return "ready: start the webcam or play a video"


def cache_words(stats: dict) -> str:
    """'cache 312.41 kB of 400.00 kB', or 'cache 1.20 MB (no cap)'."""
    used = format_bytes(stats.get("cache_bytes", 0))
    cap = stats.get("cap_bytes")
    return f"cache {used} of {format_bytes(cap)}" if cap else f"cache {used} (no cap)"


def status_line(tab: TabSession) -> str:
    """The one line a user reads first: 'watching the webcam: 34 frames, cache 312 kB of 400 kB'."""
    stats = tab.stats
    frames = stats.get("frames_seen", 0)
    line = f"**{activity(tab)}**: {frames} frame{'' if frames == 1 else 's'}, {cache_words(stats)}"
    if stats.get("compressions"):
        line += f", {stats['compressions']} compression{'' if stats['compressions'] == 1 else 's'}"
    if stats.get("dropped_frames"):
        line += f", {stats['dropped_frames']:,} dropped (the model was behind)"
    if tab.answering:
        line += " · answering…"
    problem = (tab.runner.error if tab.runner is not None else None) or tab.notice
    if problem:
        line += f"\n\n⚠ {problem}"
    return line


def numbers_table(stats: dict) -> str:
    """The memory numbers as a one-row markdown table."""
    cap = stats.get("cap_bytes")
    peak = stats.get("peak_bytes", 0)
    capacity = stats.get("capacity_tokens")
    tokens = f"{stats.get('tokens_in_cache', 0):,}" + (f" of {capacity:,}" if capacity else "")
    if cap:
        peak_text = f"{format_bytes(peak)} ({'under' if peak <= cap else 'OVER'} the cap)"
    else:
        peak_text = format_bytes(peak)
    ms = stats.get("recent_ms_per_frame")
    compressions = stats.get("compressions", 0)
    spent_ms = stats.get("compression_ms", 0.0)
    spent = f"{spent_ms:.0f} ms" if spent_ms < 1000 else f"{spent_ms / 1000:.1f} s"
    compressions_text = f"{compressions} ({spent})" if compressions else "0"
    cells = {
        "frames seen": f"{stats.get('frames_seen', 0):,}",
        "frames in cache": f"{stats.get('frames_covered', 0):,}",
        "tokens in cache": tokens,
        "cache": cache_words(stats).removeprefix("cache "),
        "peak": peak_text,
        "compressions": compressions_text,
        "dropped frames": f"{stats.get('dropped_frames', 0):,}",
        "ms/frame": f"{ms:.0f}" if ms else "–",
    }
    return "| " + " | ".join(cells) + " |\n|" + "---|" * len(cells) + "\n| " + " | ".join(cells.values()) + " |"


def answer_message(answer: Answer) -> str:
    """The finished answer as the chat shows it: text (with the demo notice), then time and coverage."""
    return (
        f"{answer.display}\n\n"
        f"_{answer.seconds:.2f} s (first token {answer.first_token_s:.2f} s) · "
        f"{answer.frames_covered} of {answer.frames_seen} frames in cache_"
    )


def header(model_name: str, is_demo: bool, max_sessions: int, label: str | None = None) -> str:
    demo = ", a demo model with random weights: **its answers are meaningless**" if is_demo else ""
    if label and not is_demo:
        demo = f" ({label})"
    return (
        f"# potwatch\nWatching with **{model_name}**{demo}. Each browser tab has its own session and KV cache "
        f"(at most {max_sessions} at once); old visual tokens are compressed to keep the cache under its cap."
    )
