"""Cost against stream length: stream the same synthetic video through one configuration and record,
per block of frames, the ms per frame, the KV bytes and the process RSS; per compression its ms; and
the time to the first answer token at chosen points of the stream."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from potwatch.bench.configurations import configuration
from potwatch.bench.gpu_memory import peak_figures, start_peak
from potwatch.bench.machine import rss_bytes
from potwatch.compression.token_meta import TokenKind
from potwatch.streaming.session import StreamSession
from potwatch.world.demo_scene import render_frame

TTFT_QUESTION = "Did anything arrive in the kitchen?"


@dataclass
class CostSettings:
    """What every configuration of one run shares, so their figures compare."""

    frames: int  # sampled frames in the stream
    fps: float = 2.0
    frame_size: tuple[int, int] = (320, 240)  # (width, height) of the rendered frames
    early_window: tuple[int, int] = (100, 200)  # frames whose median ms/frame is the flatness baseline
    reference_frame: int = 200  # TTFT and RSS ratios are taken against this point
    ttft_points: list[int] = field(default_factory=list)  # frames after which the question is asked
    ttft_repeats: int = 3  # the question is asked this many times at each point; the median counts
    question: str = TTFT_QUESTION

    @property
    def seconds(self) -> float:
        return self.frames / self.fps


def synthetic_stream(settings: CostSettings, frames: int | None = None) -> Iterator[np.ndarray]:
    """The long synthetic video: the demo kitchen, its event at 40% of the full length."""
    for index in range(settings.frames if frames is None else frames):
        yield render_frame(index / settings.fps, settings.frame_size, settings.seconds)


def stream_configuration(adapter, policy: str, cap_bytes: int | None, settings: CostSettings,
                         frames: int | None = None, progress=None) -> tuple[dict, StreamSession]:
    """Stream `frames` (default all) through a new session; returns the per-block record and the session."""
    gc.collect()
    start_peak(adapter.device)  # on CUDA: this configuration's own peak, session and cache included
    policy, kv_bits = configuration(policy)
    session = StreamSession(adapter, mem_cap=cap_bytes, policy=policy, fps=settings.fps, kv_bits=kv_bits)
    group = adapter.frames_per_group * session.groups_per_block
    total = settings.frames if frames is None else frames
    points = sorted({p for p in settings.ttft_points if p <= total} | {total - total % group})
    series = {"frame": [], "ms_per_frame": [], "cpu_ms_per_frame": [], "kv_bytes": [], "allocated_bytes": [],
              "rss_bytes": [], "compression_ms": []}
    events: list[dict] = []
    ttft: dict[int, list[float]] = {}
    ttft_compacted: dict[int, list[bool]] = {}
    pending: list[np.ndarray] = []
    for frame in synthetic_stream(settings, total):
        pending.append(frame)
        if len(pending) < group:
            continue
        count_before, ms_before = session.monitor.event_count, session.monitor.compression_ms
        started, cpu_started = time.perf_counter(), time.process_time()
        session.feed(pending)
        _sync(adapter)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        pending = []
        new_events = session.monitor.event_count - count_before
        if new_events:
            events.extend(event.as_dict() for event in list(session.monitor.events)[-new_events:])
        series["frame"].append(session.frames_seen)
        series["ms_per_frame"].append(1000 * elapsed / group)
        series["cpu_ms_per_frame"].append(1000 * cpu / group)  # this process's CPU time: what others' load hides
        series["kv_bytes"].append(session.cache.used_bytes)
        series["allocated_bytes"].append(session.cache.nbytes)
        series["rss_bytes"].append(rss_bytes())
        series["compression_ms"].append(session.monitor.compression_ms - ms_before)
        if session.frames_seen in points:
            ttft[session.frames_seen], ttft_compacted[session.frames_seen] = _ask_repeatedly(session, settings)
        if progress is not None:
            progress(group)
    record = {
        "policy": policy,
        "capped": cap_bytes is not None,
        "cap_bytes": cap_bytes,
        "frames": session.frames_seen,
        "tokens_per_group": session.tokens_per_group,
        "bytes_per_token": session.geometry.bytes_per_token,
        "kv_bytes_per_token": session.geometry.kv_bytes_per_token,
        "peak_bytes": session.peak_bytes,
        "final_tokens": session.cache.length,
        "final_visual_tokens": session.cache.kind_counts()[TokenKind.VISION],
        "series": series,
        "compression_events": events,
        "ttft_s": ttft,
        "ttft_compacted": ttft_compacted,  # whether the ask had to compact the cache (make room) first
        "gpu_memory": peak_figures(adapter, session.cache.nbytes, cap_bytes),  # None off CUDA
    }
    return record, session


def _ask_repeatedly(session: StreamSession, settings: CostSettings) -> tuple[list[float], list[bool]]:
    """Seconds to the first token of each ask, and whether making room for it compacted the cache.

    The turns stay in the cache, as in real use; once the dialogue share is full, each new turn drops
    the oldest, and that compaction is part of the time the user waits."""
    seconds, compacted = [], []
    for _ in range(settings.ttft_repeats):
        events = session.monitor.event_count
        seconds.append(session.ask(settings.question, max_new_tokens=1).first_token_s)
        compacted.append(session.monitor.event_count > events)
    return seconds, compacted


def _sync(adapter) -> None:
    """Wait for queued GPU work, so a block's time is the work it caused."""
    if adapter.device.type == "cuda":
        import torch

        torch.cuda.synchronize(adapter.device)


def median_between(series: dict, low: float, high: float, key: str = "ms_per_frame") -> float | None:
    """Median of `key` over the blocks whose frame count lies in (low, high]."""
    values = [v for f, v in zip(series["frame"], series[key]) if low < f <= high]
    return statistics.median(values) if values else None


def value_at(series: dict, frame: int, key: str) -> float | None:
    """`key` at the first block that reached `frame` frames."""
    for f, v in zip(series["frame"], series[key]):
        if f >= frame:
            return v
    return None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def cost_figures(record: dict, settings: CostSettings, copy_ms: float | None) -> dict:
    """The issue's ratios for one configuration, each measured in this run."""
    series = record["series"]
    frames = record["frames"]
    low, high = settings.early_window
    early = median_between(series, low, high)
    late = median_between(series, 0.9 * frames, frames)
    visual = [e for e in record["compression_events"] if e["reason"] == "visual"]
    compression_ms = statistics.median(e["ms"] for e in visual) if visual else None
    ttft = {frame: statistics.median(values) for frame, values in record["ttft_s"].items()}
    reference_ttft = ttft.get(settings.reference_frame)
    end_frame = max(ttft) if ttft else None
    end_ttft = ttft.get(end_frame)
    flags = [flag for values in record["ttft_compacted"].values() for flag in values]
    ingest_ms = sum(ms * _group(series, i) for i, ms in enumerate(series["ms_per_frame"]))
    peak_kv = max([record["peak_bytes"], *series["allocated_bytes"]])
    figures = {
        "frames": frames,
        "ms_per_frame_early": early,
        "ms_per_frame_late": late,
        "flatness": ratio(late, early),
        # The same ratio over this process's CPU time per frame: on a machine shared with other work the
        # wall-clock ratio also measures how that work came and went during the run.
        "cpu_flatness": ratio(median_between(series, 0.9 * frames, frames, "cpu_ms_per_frame"),
                              median_between(series, low, high, "cpu_ms_per_frame")),
        "compressions": len(visual),
        "compression_ms_median": compression_ms,
        "compression_tokens_median": statistics.median(e["tokens_before"] for e in visual) if visual else None,
        "copy_ms": copy_ms,
        "compression_vs_copy": ratio(compression_ms, copy_ms),
        "compression_ms_total": sum(series["compression_ms"]),
        "ingest_ms_total": ingest_ms,
        "compression_overhead": ratio(sum(series["compression_ms"]), ingest_ms),
        "paper_compression_overhead_gpu": 0.005,
        "ttft_s": ttft,
        "ttft_ratio": ratio(end_ttft, reference_ttft),
        "ttft_ratio_without_compaction": ratio(_median_uncompacted(record, end_frame),
                                               _median_uncompacted(record, settings.reference_frame)),
        "ttft_compacting_share": sum(flags) / len(flags) if flags else None,
        "peak_kv_bytes": peak_kv,
        "cap_bytes": record["cap_bytes"],
        "final_kv_bytes": series["kv_bytes"][-1] if series["kv_bytes"] else None,
        "rss_at_reference_bytes": value_at(series, settings.reference_frame, "rss_bytes"),
        "rss_at_end_bytes": series["rss_bytes"][-1] if series["rss_bytes"] else None,
        "gpu_memory": record.get("gpu_memory"),
    }
    figures["rss_ratio"] = ratio(figures["rss_at_end_bytes"], figures["rss_at_reference_bytes"])
    return figures


def _median_uncompacted(record: dict, frame: int | None) -> float | None:
    """Median TTFT at `frame` over the asks that did not have to compact the cache first."""
    if frame is None or frame not in record["ttft_s"]:
        return None
    values = [s for s, c in zip(record["ttft_s"][frame], record["ttft_compacted"][frame]) if not c]
    return statistics.median(values) if values else None


def _group(series: dict, index: int) -> int:
    """Frames in block `index` (the frame counter's step)."""
    previous = series["frame"][index - 1] if index else 0
    return series["frame"][index] - previous
