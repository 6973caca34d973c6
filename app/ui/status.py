"""The words the web UI shows: the status line, the numbers, and the line under each answer.

Pure functions of a tab's snapshots, so the page's timer never touches the model."""

from __future__ import annotations

import html
import time

from potwatch.compression.mem_cap import format_bytes
from potwatch.streaming.answer import DEMO_NOTICE, Answer

from potwatch.app.ui.caps import cap_words  # noqa: F401 (the cap line is one of the page's words; made in caps.py)
from potwatch.app.ui.sessions import TabSession
from potwatch.app.ui.words import readable_answer, ui_words

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
        at = f" at {clock(runner.source.position_s)}"
        if time.monotonic() - runner.source.last_offer_at > WEBCAM_QUIET_S:
            return f"webcam stopped{at}"
        return f"watching the webcam{at}"
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
    line += ingest_words(stats.get("ingest") or {})
    dropped = stats.get("dropped_frames", 0)  # a snapshot: the camera's newest misses may not be in it yet
    line += dropped_words(dropped, min(tab.missed_frames(), dropped), stats.get("fps", 2.0))
    if tab.answering:
        line += " · answering…"
    problem = (tab.runner.error if tab.runner is not None else None) or tab.notice
    if problem:
        line += f"\n\n⚠ {ui_words(problem, tab.video_path, tab.video_name)}"
    return line


def ingest_words(ingest: dict) -> str:
    """', sent 1,234 of 9,000 visual tokens (only what changed)' once a tab ingesting only what changed has
    run its vision tower; nothing when it ingests every token (all are sent: nothing to say)."""
    if ingest.get("mode") != "changed" or not ingest.get("visual_tokens"):
        return ""
    return f", sent {ingest['sent_tokens']:,} of {ingest['visual_tokens']:,} visual tokens (only what changed)"


def clock(seconds: float) -> str:
    """Stream time as a clock, 'm:ss' ('0:29', '12:05'): how the status and the answers say when."""
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}:{rest:02d}"


def dropped_words(dropped: int, missed: int, fps: float) -> str:
    """', 18 dropped (the camera sent fewer than 2 frames a second)': frames the stream lost, and why: of
    `dropped`, `missed` are instants the camera sent no frame for, the rest frames the model had no time for."""
    if not dropped:
        return ""
    camera = f"the camera sent fewer than {fps:g} frames a second"
    if not missed:
        return f", {dropped:,} dropped (the model was behind)"
    if missed >= dropped:
        return f", {dropped:,} dropped ({camera})"
    return f", {dropped:,} dropped ({missed:,} as {camera}, {dropped - missed:,} as the model was behind)"


def _numbers(stats: dict) -> dict[str, str]:
    """The memory numbers, labelled, as the table and the phone's lines show them."""
    cap = stats.get("cap_bytes")
    peak = stats.get("peak_bytes", 0)
    capacity = stats.get("capacity_tokens")
    if cap:
        peak_text = f"{format_bytes(peak)} ({'under' if peak <= cap else 'OVER'} the cap)"
    else:
        peak_text = format_bytes(peak)
    ms = stats.get("recent_ms_per_frame")
    compressions = stats.get("compressions", 0)
    spent_ms = stats.get("compression_ms", 0.0)
    spent = f"{spent_ms:.0f} ms" if spent_ms < 1000 else f"{spent_ms / 1000:.1f} s"
    return {
        "frames seen": f"{stats.get('frames_seen', 0):,}",
        "frames in cache": f"{stats.get('frames_covered', 0):,}",
        "tokens in cache": f"{stats.get('tokens_in_cache', 0):,}" + (f" of {capacity:,}" if capacity else ""),
        "cache": cache_words(stats).removeprefix("cache "),
        "peak": peak_text,
        "compressions": f"{compressions} ({spent})" if compressions else "0",
        "dropped frames": f"{stats.get('dropped_frames', 0):,}",
        "ms/frame": f"{ms:.0f}" if ms else "–",
    }


def numbers_table(stats: dict) -> str:
    """The memory numbers as HTML: a one-row table on a wide screen, a few labelled lines on a phone
    (the page's style sheet shows one or the other)."""
    cells = {name: html.escape(value) for name, value in _numbers(stats).items()}
    head = "".join(f"<th>{name}</th>" for name in cells)
    row = "".join(f"<td>{value}</td>" for value in cells.values())
    lines = (
        ("Frames", f"{cells['frames seen']} seen · {cells['frames in cache']} in cache · "
                   f"{cells['dropped frames']} dropped"),
        ("Cache", f"{cells['cache']} · {cells['tokens in cache']} tokens"),
        ("Peak", cells["peak"]),
        ("Compressions", f"{cells['compressions']} · {cells['ms/frame']} ms/frame"),
    )
    narrow = "".join(f'<div class="numbers-line"><b>{label}</b> {text}</div>' for label, text in lines)
    return (f'<table class="numbers-wide"><thead><tr>{head}</tr></thead><tbody><tr>{row}</tr></tbody></table>'
            f'<div class="numbers-narrow">{narrow}</div>')


def frames_in_cache_words(frames_covered: int, frames_seen: int) -> str:
    """'58 of 60 frames in cache': how the answer line, the table's title and the retention plot say it."""
    return f"{frames_covered:,} of {frames_seen:,} frame{'' if frames_seen == 1 else 's'} in cache"


def answer_message(answer: Answer) -> str:
    """The finished answer as the chat shows it: readable text (with the demo notice), then time and
    coverage."""
    text = readable_answer(answer.text)
    if answer.meaningless:
        text = f"{text} {DEMO_NOTICE}"
    return (
        f"{text}\n\n"
        f"_asked at {clock(answer.video_time_s)} · {answer.seconds:.2f} s (first token {answer.first_token_s:.2f} s) · "
        f"{frames_in_cache_words(answer.frames_covered, answer.frames_seen)}_"
    )


def memory_note(tab: TabSession) -> str:
    """A line beside the memory plot: what the cache is doing now, and why."""
    stats = tab.stats
    seen, compressions = stats.get("frames_seen", 0), stats.get("compressions", 0)
    if not stats.get("cap_bytes"):
        return "**No cap**: the cache grows with every frame; nothing is compressed."
    if not seen:
        return "**Empty**: the cache holds only the prompt. Frames fill it as they come."
    if not compressions:
        frames = tab.full_detail
        left = f" The first compression comes after about {frames:,} frames." if frames else ""
        return f"**Filling**: every frame is kept at full detail until the cap is reached.{left}"
    return (
        f"**Full, compressing**: before each new block of frames, the policy *{stats.get('policy')}* thins the "
        f"older frames' tokens so the cache stays under the cap ({compressions:,} compression"
        f"{'' if compressions == 1 else 's'} so far)."
    )


def header(model_name: str, is_demo: bool, max_sessions: int, label: str | None = None) -> str:
    demo = ", a demo model with random weights: **its answers are meaningless**" if is_demo else ""
    if label and not is_demo:
        demo = f" ({label})"
    return (
        f"# potwatch\nWatching with **{model_name}**{demo}. Each browser tab has its own session and KV cache "
        f"(at most {max_sessions} at once); old visual tokens are compressed to keep the cache under its cap."
    )
