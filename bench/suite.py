"""One benchmark run, start to finish: the cost of every configuration on the same long stream, the
compression pass against the copy floor at scale, loyalty and the needle probe, in one process; then
the JSON, the plots and the markdown table.

The full cache (`none`) is the slow one: its cost grows with every frame, so it may stop at
`full_cache_frames` while the capped configurations run the whole stream; its figures at the end of
the stream are then the exact byte count and a labelled extrapolation of ms per frame."""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from potwatch.bench.configurations import compressing_policies, quantised_variants
from potwatch.bench.copy_floor import block_layout, compression_at_scale, copy_floor_ms
from potwatch.bench.cost import CostSettings, cost_figures, median_between, ratio, stream_configuration, synthetic_stream, value_at
from potwatch.bench.machine import describe_machine
from potwatch.bench.needle import needle_probe
from potwatch.bench.report import markdown_report
from potwatch.compression.mem_cap import parse_mem_cap


@dataclass
class BenchConfig:
    """Everything a run depends on. `full()` is the default run, `quick()` the few-minute one."""

    model: str = "demo-2b"
    frames: int = 2000
    mem_cap: str = "80MB"
    # every compressing policy the registry knows, the default first (app/bench_configurations.py)
    policies: tuple[str, ...] = field(default_factory=lambda: compressing_policies(ablations=False))
    kv_bits: tuple[int, ...] = (8, 4)  # widths the first policy also runs at (`tar_van@8bit`), beside 16
    full_cache_frames: int | None = 600  # None: the full cache runs the whole stream
    fps: float = 2.0
    frame_size: tuple[int, int] = (320, 240)
    early_window: tuple[int, int] = (100, 200)
    reference_frame: int = 200
    ttft_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    ttft_repeats: int = 5
    scale_tokens: int | None = 19_500  # the at-scale compression check; None skips it
    loyalty_frames: int | None = 64  # None skips loyalty
    loyalty_policies: tuple[str, ...] = field(default_factory=compressing_policies)
    needle_seconds: float | None = 120.0  # None skips the needle probe
    threads: int | None = None  # torch threads; None leaves torch's default
    device: str | None = None  # None: CUDA when available, else the CPU
    trust_remote_code: bool = False  # only for a checkpoint whose own code the user trusts

    @property
    def configurations(self) -> list[str]:
        """The capped configurations of the cost runs and the at-scale pass: every policy at 16 bits,
        then the first one at each quantised width."""
        return list(self.policies) + quantised_variants(self.policies[0], self.kv_bits) if self.policies else []

    @property
    def fidelity_configurations(self) -> list[str]:
        """Loyalty's and the needle probe's: every loyalty policy, then the first at each quantised width."""
        policies = self.loyalty_policies
        return list(policies) + quantised_variants(policies[0], self.kv_bits) if policies else []

    @classmethod
    def full(cls, **changes) -> "BenchConfig":
        return cls(**changes)

    @classmethod
    def quick(cls, **changes) -> "BenchConfig":
        settings = dict(frames=300, full_cache_frames=240, ttft_repeats=3, scale_tokens=5_000, loyalty_frames=32,
                        needle_seconds=40.0)
        settings.update(changes)
        return cls(**settings)


def capacity_by_bits(geometry, cap_bytes: int, widths) -> list[dict]:
    """Tokens the cap holds at each K/V width, for this run's geometry and for the same model in
    bfloat16 (as on a GPU), where 16 bits is the baseline the quantised widths are meant to beat."""
    rows = []
    for bits in widths:
        row = {"kv_bits": bits}
        for label, dtype in (("run", geometry.dtype), ("bf16", torch.bfloat16)):
            base = replace(geometry, dtype=dtype, kv_bits=16)
            shaped = replace(base, kv_bits=bits)
            row[f"{label}_bytes_per_token"] = shaped.bytes_per_token
            row[f"{label}_tokens"] = shaped.tokens_for(cap_bytes)
            row[f"{label}_gain"] = shaped.tokens_for(cap_bytes) / base.tokens_for(cap_bytes)
        rows.append(row)
    return rows


def _say(text: str) -> None:
    print(f"potwatch bench: {text}", file=sys.stderr, flush=True)


def run_benchmark(config: BenchConfig, out: str | Path, command: str, progress: bool = True) -> dict:
    """Run everything `config` asks for and write bench.json, series.json, the PNGs and bench.md into `out`."""
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, Path(out), command, progress)
    finally:
        torch.set_num_threads(threads)


def _run(config: BenchConfig, out: Path, command: str, progress: bool) -> dict:
    from potwatch.models.registry import load_model

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {
        "schema": 1,
        "command": command,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "config": asdict(config),
    }
    _say(f"loading {config.model}")
    adapter = load_model(config.model, device=config.device, trust_remote_code=config.trust_remote_code)
    cap_bytes = parse_mem_cap(config.mem_cap)
    settings = _cost_settings(config)
    geometry = adapter.geometry()
    per_group = adapter.tokens_per_group(config.frame_size[1], config.frame_size[0])
    full_frames = min(config.full_cache_frames or config.frames, config.frames)
    settings.ttft_points = sorted(set(settings.ttft_points) | {full_frames - full_frames % adapter.frames_per_group})
    results["settings"] = {
        "model": config.model,
        "frames": config.frames,
        "fps": config.fps,
        "frame_size": list(config.frame_size),
        "frames_per_group": adapter.frames_per_group,
        "tokens_per_group": per_group,
        "cap_bytes": cap_bytes,
        "cap_tokens": geometry.tokens_for(cap_bytes),
        "bytes_per_token": geometry.bytes_per_token,
        "kv_bytes_per_token": geometry.kv_bytes_per_token,
        "capacity_by_bits": capacity_by_bits(geometry, cap_bytes, (16, *config.kv_bits)),
        "full_cache_frames": full_frames,
        "early_window": list(config.early_window),
        "reference_frame": config.reference_frame,
        "ttft_points": settings.ttft_points,
        "ttft_question": settings.question,
        "demo_model": adapter.is_demo,
    }
    timings: dict[str, float] = {}
    records, results["cost"] = _cost_runs(adapter, config, settings, cap_bytes, full_frames, progress, timings)
    if "none" in records and config.policies:
        results["cost"]["none"]["vs_capped"] = _full_against_capped(records, results["cost"], settings, config)
    results.update(_fidelity_runs(adapter, config, timings))
    results["timings_s"] = timings
    results["elapsed_s"] = time.perf_counter() - started
    results["files"] = _write_outputs(results, records, out, cap_bytes, config.model)
    _say(f"wrote {', '.join(results['files'])} into {out} ({results['elapsed_s']:.0f} s)")
    return results


def _cost_runs(adapter, config: BenchConfig, settings: CostSettings, cap_bytes: int, full_frames: int,
               progress: bool, timings: dict) -> tuple[dict, dict]:
    """Each capped policy over the whole stream, then the full cache; (records, figures) by configuration."""
    records, cost = {}, {}
    runs = [(name, cap_bytes, None) for name in config.configurations] + [("none", None, full_frames)]
    for index, (name, cap, frames) in enumerate(runs, 1):
        _say(f"[{index}/{len(runs)}] {name}: {frames or config.frames:,} frames" + (" under the cap" if cap else ", no cap"))
        tick = time.perf_counter()
        with _progress_bar(frames or config.frames, name, progress) as bar:
            record, session = stream_configuration(adapter, name, cap, settings, frames, bar)
        tokens = _median_tokens(record)
        copy_ms = copy_floor_ms(session.cache, tokens) if tokens else None  # same run, same cache, same bytes
        session.close()
        del session
        gc.collect()
        figures = cost_figures(record, settings, copy_ms)
        figures["peak_kv_over_cap"] = figures["peak_kv_bytes"] / cap_bytes
        records[name], cost[name] = record, figures
        timings[f"cost_{name}"] = time.perf_counter() - tick
    return records, cost


def _fidelity_runs(adapter, config: BenchConfig, timings: dict) -> dict:
    """The at-scale compression pass, loyalty and the needle probe, each only if `config` asks for it."""
    results = {}
    if config.scale_tokens:
        _say(f"one compression pass over {config.scale_tokens:,} tokens against copy_")
        tick = time.perf_counter()
        layout, system_tokens = block_layout(adapter, config.frame_size, config.fps)
        results["compression_at_scale"] = compression_at_scale(
            adapter.geometry(), config.scale_tokens, config.configurations, layout, system_tokens, str(adapter.device),
        )
        timings["compression_at_scale"] = time.perf_counter() - tick
    if config.loyalty_frames:
        from potwatch.bench.loyalty import measure_loyalty

        _say(f"loyalty: {config.loyalty_frames} frames, {len(config.fidelity_configurations)} configurations, 5 ratios")
        tick = time.perf_counter()
        loyalty_settings = CostSettings(frames=config.loyalty_frames, fps=config.fps, frame_size=config.frame_size)
        frames = list(synthetic_stream(loyalty_settings))
        results["loyalty"] = measure_loyalty(adapter, frames, config.fps, config.fidelity_configurations)
        timings["loyalty"] = time.perf_counter() - tick
    if config.needle_seconds:
        _say(f"needle probe: {config.needle_seconds:g} s of video, cap 1/8 of its visual tokens")
        tick = time.perf_counter()
        results["needle"] = needle_probe(adapter, config.needle_seconds, config.fps, config.frame_size,
                                         policies=config.fidelity_configurations)
        timings["needle"] = time.perf_counter() - tick
    return results


def _cost_settings(config: BenchConfig) -> CostSettings:
    group = 2  # every supported family folds two frames into a temporal group
    points = {config.reference_frame} | {int(f * config.frames) // group * group for f in config.ttft_fractions}
    points |= {config.frames - config.frames % group}
    return CostSettings(
        frames=config.frames, fps=config.fps, frame_size=config.frame_size, early_window=config.early_window,
        reference_frame=config.reference_frame, ttft_points=sorted(p for p in points if 0 < p <= config.frames),
        ttft_repeats=config.ttft_repeats,
    )


def _median_tokens(record: dict) -> int | None:
    visual = [e["tokens_before"] for e in record["compression_events"] if e["reason"] == "visual"]
    return int(statistics.median(visual)) if visual else None


def _full_against_capped(records: dict, cost: dict, settings: CostSettings, config: BenchConfig) -> dict:
    """The full cache's slowdown and memory growth against the first capped configuration."""
    against = config.policies[0]
    full, capped = records["none"]["series"], records[against]["series"]
    frame = records["none"]["frames"]
    full_late = median_between(full, 0.9 * frame, frame)
    capped_same = median_between(capped, 0.9 * frame, frame)
    kv_full, kv_capped = value_at(full, frame, "kv_bytes"), value_at(capped, frame, "allocated_bytes")
    ttft_full = cost["none"]["ttft_s"].get(frame)
    ttft_capped = cost[against]["ttft_s"].get(frame)
    result = {
        "against": against,
        "frame": frame,
        "ms_per_frame_ratio": ratio(full_late, capped_same),
        "kv_bytes": kv_full,
        "capped_kv_bytes": kv_capped,
        "kv_bytes_ratio": ratio(kv_full, kv_capped),
        "ttft_ratio": ratio(ttft_full, ttft_capped),
        "rss_growth_bytes": (cost["none"]["rss_at_end_bytes"] or 0) - (cost["none"]["rss_at_reference_bytes"] or 0),
    }
    if frame < config.frames:
        result["at_stream_end"] = _projected_end(records["none"], cost[against], config)
    return result


def _projected_end(record: dict, capped: dict, config: BenchConfig) -> dict:
    """Bytes at the end of the stream (exact) and ms per frame (linear fit against cached tokens)."""
    series = record["series"]
    per_token = record["bytes_per_token"]
    tokens = np.asarray(series["kv_bytes"], dtype=float) / per_token
    ms = np.asarray(series["ms_per_frame"], dtype=float)
    keep = tokens > np.quantile(tokens, 0.1)  # skip the warm-up blocks
    slope, intercept = np.polyfit(tokens[keep], ms[keep], 1)
    groups_left = (config.frames - record["frames"]) // 2
    end_tokens = record["final_tokens"] + groups_left * record["tokens_per_group"]
    end_ms = float(intercept + slope * end_tokens)
    return {
        "frames": config.frames,
        "tokens": int(end_tokens),
        "kv_bytes": int(end_tokens * per_token),
        "kv_over_cap": end_tokens * per_token / capped["cap_bytes"],
        "ms_per_frame_extrapolated": end_ms,
        "ms_per_frame_per_1k_tokens": float(slope * 1000),
        "ms_per_frame_ratio_extrapolated": ratio(end_ms, capped["ms_per_frame_late"]),
    }


class _progress_bar:
    """A tqdm bar on stderr (hidden when not a terminal) that the stream loop advances by frames."""

    def __init__(self, total: int, name: str, enabled: bool):
        self.total, self.name, self.enabled = total, name, enabled
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return None
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, desc=self.name, unit="frame", file=sys.stderr, disable=None, leave=False)
        return self.bar.update

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def _write_outputs(results: dict, records: dict, out: Path, cap_bytes: int, model: str) -> list[str]:
    from potwatch.bench import plots as bench_plots

    files = []
    series = {name: {key: r[key] for key in ("series", "compression_events", "ttft_s", "ttft_compacted")}
              for name, r in records.items()}
    (out / "series.json").write_text(json.dumps(series))
    files.append("series.json")
    if bench_plots.plots_available():
        paths = bench_plots.plot_series(records, cap_bytes, out, model)
        paths.append(bench_plots.plot_ttft(results["cost"], out))
        if results.get("loyalty"):
            paths.append(bench_plots.plot_loyalty(results["loyalty"], out))
        if results.get("needle"):
            paths.append(bench_plots.plot_needle(results["needle"], out))
        files += [p.name for p in paths]
    else:
        _say("matplotlib is not installed, so no plots were drawn; pip install matplotlib and run again")
    files += ["bench.json", "bench.md"]
    results["files"] = files
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=_jsonable))
    (out / "bench.md").write_text(markdown_report(results))
    return files


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
