"""Soak: a long stream on the tiny demo model under a small cap, to show nothing grows with the stream.

    .venv/bin/python benchmarks/soak.py --frames 20000

Frames go in one by one through the web UI's per-tab wrapper (`TabSession.feed`: the session, plus
the stats snapshots and the memory-plot history the page draws), with a question every `--ask-every`
frames. It checks, and prints:
- the cap: allocated and in-use cache bytes <= cap after every frame (so after every block);
- RSS: after the warm-up (the first `--warmup` share of frames) it stays within 2% of its value then;
- containers: no list, dict, set or deque reachable from the session grows without bound
  (`container_growth.py`);
- speed: ms per frame.
It exits with 1 when a check fails. `tests/test_soak.py` runs a short version in CI."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.container_growth import ContainerWatch  # noqa: E402

RSS_TOLERANCE = 0.02
SAMPLES = 200  # RSS and container checkpoints over the run


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class SoakResult:
    frames: int
    cap_bytes: int
    seconds: float
    ms_per_frame: float
    compressions: int
    answers: int
    peak_cache_bytes: int
    allocated_bytes: int
    cap_violations: int
    first_violation: str | None
    rss_warm: int
    rss_end: int
    rss_max: int
    rss_min: int
    growing: list[str] = field(default_factory=list)
    largest: list[str] = field(default_factory=list)

    @property
    def rss_ratio(self) -> float:
        """Largest RSS after the warm-up over RSS at the end of it."""
        return self.rss_max / self.rss_warm

    @property
    def rss_flat(self) -> bool:
        return self.rss_max <= self.rss_warm * (1 + RSS_TOLERANCE) and self.rss_end >= self.rss_warm * (1 - RSS_TOLERANCE)

    @property
    def ok(self) -> bool:
        return self.cap_violations == 0 and self.rss_flat and not self.growing

    def report(self) -> str:
        mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
        lines = [
            f"frames: {self.frames:,} in {self.seconds:.1f} s, {self.ms_per_frame:.2f} ms/frame; "
            f"{self.compressions:,} compressions, {self.answers} answers",
            f"cap: {self.cap_bytes:,} B; allocated {self.allocated_bytes:,} B, peak in use {self.peak_cache_bytes:,} B; "
            f"over the cap after {self.cap_violations} of {self.frames:,} frames"
            + (f" (first: {self.first_violation})" if self.first_violation else ""),
            f"RSS: {mb(self.rss_warm)} after warm-up, {mb(self.rss_end)} at the end, max {mb(self.rss_max)}, "
            f"min {mb(self.rss_min)}; max/warm-up {self.rss_ratio:.4f} "
            f"({'flat' if self.rss_flat else 'NOT flat'} within {RSS_TOLERANCE:.0%})",
            "growing containers: " + ("; ".join(self.growing) if self.growing else "none"),
            "largest containers at the end: " + ", ".join(self.largest),
            "soak: " + ("PASS" if self.ok else "FAIL"),
        ]
        return "\n".join(lines)


def run_soak(frames: int = 20000, mem_cap: str = "400kB", model: str = "demo", policy: str = "tar_van",
             ask_every: int = 500, warmup: float = 0.1, max_new_tokens: int = 4,
             size: tuple[int, int] = (240, 320), threads: int | None = 1, progress: bool = False) -> SoakResult:
    """Stream `frames` frames and measure; see the module docstring. `threads`: torch CPU threads
    during the run (1: the tiny model gains nothing from more, and on a shared machine loses)."""
    import torch

    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _soak(frames, mem_cap, model, policy, ask_every, warmup, max_new_tokens, size, progress)
    finally:
        torch.set_num_threads(saved_threads)


def _soak(frames, mem_cap, model, policy, ask_every, warmup, max_new_tokens, size, progress) -> SoakResult:
    from potwatch.app.ui.sessions import TabSession, TabSettings
    from potwatch.models.registry import load_model
    from potwatch.streaming.session import StreamSession
    from potwatch.streaming.sources import Frame
    from potwatch.world.demo_scene import render_frames

    adapter = load_model(model)
    session = StreamSession(adapter, mem_cap=mem_cap, policy=policy, max_new_tokens=max_new_tokens)
    tab = TabSession("soak", session, TabSettings(mem_cap=mem_cap, policy=policy))
    scene = list(render_frames(30.0, size=(size[1], size[0]), fps=2))  # 60 frames of the demo scene, cycled
    cap = session.cap_bytes
    # TaR keeps a few tokens of many old frames, so the frames held (one retention entry each) rise
    # for a long while; every held frame has a token in some layer and head, which bounds them by the cap
    geometry = session.geometry
    watch = ContainerWatch(tab, bounds={"TabSession.retention": geometry.layers * geometry.kv_heads * session.cache.capacity})
    every = max(frames // SAMPLES, 1)
    warm_at = max(int(frames * warmup), 1)
    violations, first_violation, answers = 0, None, 0
    rss_warm, rss_after = None, []
    started = time.perf_counter()
    for index in range(frames):
        tab.feed(Frame(index, index / session.fps, scene[index % len(scene)]))
        cache = session.cache
        if max(cache.nbytes, cache.used_bytes) > cap:
            violations += 1
            first_violation = first_violation or f"frame {index}: allocated {cache.nbytes} B, in use {cache.used_bytes} B"
        if ask_every and (index + 1) % ask_every == 0:
            for piece in tab.ask(f"What happened by frame {index}?"):
                answers += not isinstance(piece, str)
        if index + 1 == warm_at:
            rss_warm = rss_bytes()
        if (index + 1) % every == 0 or index + 1 == frames:
            if index + 1 > warm_at:
                rss_after.append(rss_bytes())
            watch.check((index + 1) / frames)
            if progress and (index + 1) % max(frames // 10, 1) == 0:
                print(f"{index + 1:,}/{frames:,} frames, RSS {rss_bytes() / 1e6:.1f} MB, "
                      f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    stats = session.stats()
    rss_after = rss_after or [rss_warm]
    result = SoakResult(
        frames=frames, cap_bytes=cap, seconds=seconds, ms_per_frame=1000 * seconds / frames,
        compressions=stats["compressions"], answers=answers, peak_cache_bytes=stats["peak_bytes"],
        allocated_bytes=stats["allocated_bytes"], cap_violations=violations, first_violation=first_violation,
        rss_warm=rss_warm, rss_end=rss_after[-1], rss_max=max(rss_after), rss_min=min(rss_after),
        growing=watch.growing(), largest=watch.largest(),
    )
    tab.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20000, help="frames to stream (default 20000)")
    parser.add_argument("--mem-cap", default="400kB", help="the cache cap (default 400kB: ~12 frames of the demo model)")
    parser.add_argument("--model", default="demo", help="a demo model name (default demo)")
    parser.add_argument("--policy", default="tar_van", help="compression policy (default tar_van)")
    parser.add_argument("--ask-every", type=int, default=500, help="ask a question every N frames; 0: never (default 500)")
    parser.add_argument("--warmup", type=float, default=0.1, help="share of frames before RSS is taken as the baseline (default 0.1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the tiny model gains nothing from more)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run_soak(args.frames, args.mem_cap, args.model, args.policy, args.ask_every, args.warmup,
                      threads=args.threads, progress=not args.json)
    if args.json:
        print(json.dumps({**asdict(result), "rss_ratio": result.rss_ratio, "ok": result.ok}, indent=2))
    else:
        print(f"command: .venv/bin/python benchmarks/soak.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
        print(result.report())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
