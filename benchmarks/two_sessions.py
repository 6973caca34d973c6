"""Two web-UI sessions streaming at once on one model: does each keep its share of the machine?

    .venv/bin/python benchmarks/two_sessions.py                  # demo-2b, 40 frames of 640x360
    .venv/bin/python benchmarks/two_sessions.py --configs free:1   # a lane per tab: none waits for the model

Both sessions go through the web UI's own path: a `SessionPool` on one model, a `TabSession` per tab.
Two runs, each first with one session alone, then with two at once:
- **as fast as possible**: each session is fed `--frames` frames of the same video by its own thread
  through `TabSession.feed` (nothing is dropped). A session's frame rate is frames / its own seconds.
  Sessions that take turns on the model each get about half of what one gets alone; the target is
  at least 45% (`TARGET`). Then one tab asks a question while the other streams: its first piece
  comes after at most the block running then, since an answer goes before the blocks waiting.
- **paced like the UI**: each tab plays the video file at its own pace (`TabSession.play`: the
  `PacedFile` clock and the `Ingester`, which drops what the model cannot take in time), sampled at a
  rate that needs 80% of the machine for two sessions (40% of one session's fastest rate, at most 30
  fps), to the video's end. A session's rate is frames ingested / seconds until its last frame was
  ingested, so both lag and drops lower it; dropped frames are counted for each session.

The table gives the load average before and after every figure: on a busy machine the figures are
indicative only. Writes the table to `--out` (default benchmarks/results/two_sessions.md; the
reference copy is benchmarks/reference/two_sessions.md)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET = 0.45  # each of two sessions keeps at least this share of one session's frame rate
PACED_SHARE = 0.4  # paced run: each session samples at this share of one session's fastest rate


@dataclass
class Run:
    """One session's part of a run."""

    label: str
    frames: int
    seconds: float
    dropped: int = 0
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def load_average() -> float:
    return os.getloadavg()[0]


def write_video(path: Path, frames: int, fps: float, size: tuple[int, int]) -> Path:
    """The synthetic kitchen scene at `size` (width, height), long enough for `frames` frames at `fps`."""
    import cv2

    from potwatch.world.demo_scene import render_frames

    native = 30.0
    seconds = frames / fps
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), native, size)
    for rgb in render_frames(seconds, size=size, fps=native):
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def fresh(tab, settings) -> None:
    """Apply and reset: a new stream under the same settings, as the page's button does."""
    tab.apply(settings)


def feed_all(tab, frames) -> float:
    started = time.perf_counter()
    for frame in frames:
        tab.feed(frame)
    return time.perf_counter() - started


def fast_runs(pool, settings, frames) -> tuple[Run, list[Run]]:
    """One tab fed as fast as it takes frames, then two at once (each by its own thread)."""
    first, second = pool.open("tab-1"), pool.open("tab-2")
    fresh(first, settings)
    before = load_average()
    alone = Run("alone", len(frames), feed_all(first, frames))
    alone.load = (before, load_average())
    fresh(first, settings)
    fresh(second, settings)
    seconds: dict[str, float] = {}

    def stream(tab):
        def run():
            seconds[tab.key] = feed_all(tab, frames)
        return run

    before = load_average()
    threads = [threading.Thread(target=stream(tab)) for tab in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = load_average()
    return alone, [Run(f"two at once: {tab.key}", len(frames), seconds[tab.key], load=(before, after))
                   for tab in (first, second)]


def question_while_streaming(pool, settings, frames) -> dict:
    """Tab 2 streams as fast as it can; a quarter of the way in, tab 1 (which has watched a few frames)
    asks. How long the question waited for the model (its whole time less the answer's own, which
    starts once it has the model), against the longest block tab 2 ran."""
    from potwatch.streaming.answer import Answer

    first, second = pool.open("tab-1"), pool.open("tab-2")
    fresh(first, settings)
    fresh(second, settings)
    feed_all(first, frames[:4])
    streaming = threading.Thread(target=feed_all, args=(second, frames))
    streaming.start()
    while second.session.frames_ingested < len(frames) // 4 and streaming.is_alive():
        time.sleep(0.005)
    asked_at = time.perf_counter()
    for item in first.ask("What is on the table?"):
        if isinstance(item, Answer):  # the tab then refreshes its page's snapshot: not the question's time
            answer, total = item, time.perf_counter() - asked_at
    streaming.join()
    blocks = [seconds for seconds, _ in second.session._recent_block_seconds]
    return {"wait_s": total - answer.seconds, "first_token_s": total - answer.seconds + answer.first_token_s,
            "block_s": max(blocks) if blocks else 0.0}


def paced_runs(pool, settings, video: Path, seconds: float) -> tuple[Run, list[Run]]:
    """Tabs playing the video at their own pace, as the page's Start button does: one alone, then two."""
    first, second = pool.open("tab-1"), pool.open("tab-2")

    def play(tabs) -> list[Run]:
        for tab in tabs:
            fresh(tab, settings)
            tab.choose_video(video, video.name)
        before = load_average()
        started = time.perf_counter()
        for tab in tabs:
            tab.play()
        ended: dict[str, float] = {}
        deadline = started + 2 * seconds + 10  # the video lasts `seconds`; a tab that lags finishes later
        while len(ended) < len(tabs) and time.perf_counter() < deadline:
            for tab in tabs:
                if tab.runner.finished and tab.key not in ended:
                    ended[tab.key] = time.perf_counter() - started
            time.sleep(0.02)
        after = load_average()
        runs = [Run(tab.key, tab.session.frames_ingested, ended.get(tab.key, time.perf_counter() - started),
                    tab.session.dropped_frames, (before, after)) for tab in tabs]
        for tab in tabs:
            tab.stop()
        return runs

    alone = play([first])[0]
    alone.label = "alone"
    both = play([first, second])
    for run in both:
        run.label = f"two at once: {run.label}"
    return alone, both


def table(title: str, alone: Run, both: list[Run], paced: bool) -> tuple[list[str], float]:
    """The runs as a markdown table, and the ratio: the slower of the two over one alone."""
    worst = min(run.fps for run in both) / alone.fps if alone.fps else 0.0
    lines = [f"#### {title}", "",
             "| session | frames | seconds | frames/s | share of alone | dropped | load avg before → after |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for run in (alone, *both):
        share = run.fps / alone.fps if alone.fps else 0.0
        lines.append(f"| {run.label} | {run.frames} | {run.seconds:.2f} | {run.fps:.2f} | {share:.0%} | "
                     f"{run.dropped if paced else '—'} | {run.load[0]:.2f} → {run.load[1]:.2f} |")
    return lines + ["", f"ratio (the slower of the two over one alone): **{worst:.2f}**", ""], worst


def configurations(text: str) -> list[tuple[str, int, int]]:
    """'serve,turns:2,free:1' -> [(mode, threads, lanes), ...]: 'serve' is what `potwatch serve` chooses for
    two tabs on this machine (`serve_lanes`: lanes of whole cores); 'turns:N' one tab at a time on the
    model with N threads; 'free:N' no turns at all (for comparison)."""
    from potwatch.threads import serve_lanes, usable_cores

    chosen = []
    for part in text.split(","):
        mode, _, threads = part.strip().partition(":")
        if mode == "serve" and not threads:
            lanes, each = serve_lanes(usable_cores(), 2)
            chosen.append(("serve", each, lanes))
            continue
        if mode not in ("turns", "free") or not threads.isdigit() or int(threads) < 1:
            raise SystemExit(f"--configs: '{part}' is not serve, turns:N or free:N (N threads), e.g. serve,turns:2.")
        # free: a lane per tab, so no tab ever waits for the model (as before tabs took turns)
        chosen.append((mode, int(threads), 2 if mode == "free" else 1))
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo-2b")
    parser.add_argument("--frames", type=int, default=40, help="frames each session is fed in the fast run (default 40)")
    parser.add_argument("--size", default="640x360", help="video frame size WxH (default 640x360)")
    parser.add_argument("--mem-cap", default="1GB", help="each session's cap (default 1GB, serve's default for a 2B model)")
    parser.add_argument("--configs", default="serve,turns:1,free:1",
                        help="configurations in order: serve (what `potwatch serve` chooses: lanes of whole cores), "
                             "turns:N (one tab at a time on the model, N torch threads) or free:N (no turns; for "
                             "comparison); default serve,turns:1,free:1")
    parser.add_argument("--paced-fps", type=float, default=None,
                        help=f"the paced runs' rate (default: {PACED_SHARE:.0%} of one session's fastest rate in the "
                             "first configuration, at most 30)")
    parser.add_argument("--skip-paced", action="store_true", help="only the as-fast-as-possible runs")
    parser.add_argument("--out", default="benchmarks/results/two_sessions.md")
    args = parser.parse_args(argv)
    chosen = configurations(args.configs)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from potwatch.app.ui.sessions import SessionPool, TabSettings
    from potwatch.models.registry import load_model
    from potwatch.streaming.sources import FileSource

    width, height = (int(part) for part in args.size.lower().split("x"))
    adapter = load_model(args.model)
    command = " ".join(["benchmarks/two_sessions.py", *(argv if argv is not None else sys.argv[1:])])
    head = [f"# Two web-UI sessions at once on one model", "", f"`{command}`", "",
            f"model {args.model}, frames {width}×{height}, cap {args.mem_cap} a session, {args.frames} frames a "
            f"session in the fast runs; {os.cpu_count()} CPUs seen, affinity {len(os.sched_getaffinity(0))} CPUs; "
            f"target: each of two keeps ≥ {TARGET:.0%} of one session's frame rate.", "",
            "*serve*: what `potwatch serve` does here: lanes of whole cores (`serve_lanes` in potwatch/threads.py), "
            "up to one tab per lane running the model at once, the others waiting their turn. "
            "*turns*: the sessions take turns on the model, one block of frames or one answer at a time, an answer "
            "before the blocks waiting (streaming/model_turns.py). *free*: they run the model at once, as before "
            "turns, for comparison. *fast: ratio*: the slower tab's frames/s with two at once over one tab alone, "
            "both fed as fast as they take frames. *paced*: tabs playing the video at its pace, as the UI does.", ""]
    summary = ["| configuration | torch threads | fast: ratio | paced: ratio | paced: dropped (alone / two) | "
               "question waited for the model | longest block | load avg |",
               "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    details: list[str] = []
    paced_fps = args.paced_fps
    loads_seen: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        video = write_video(Path(folder) / "scene.mp4", args.frames, 30, (width, height))
        frames = list(FileSource(video, fps=30))[: args.frames]
        from potwatch.streaming.model_turns import model_turns

        for mode, threads, lanes in chosen:
            name = {"serve": f"serve ({lanes} lane{'s' if lanes > 1 else ''})", "turns": "turns",
                    "free": "free (no turns)"}[mode]
            torch.set_num_threads(threads)  # new threads (each run's) take it too
            model_turns(adapter).lanes = lanes
            loads = [load_average()]
            settings = TabSettings(mem_cap=args.mem_cap, fps=30).checked()
            pool = SessionPool(adapter, max_sessions=2, settings=settings, max_new_tokens=8)
            feed_all(pool.open("tab-1"), frames[:4])  # first calls allocate what they need
            alone, both = fast_runs(pool, settings, frames)
            lines, fast = table("as fast as possible (each tab fed by its own thread through TabSession.feed)",
                                alone, both, False)
            asked = question_while_streaming(pool, settings, frames)
            lines += [f"A question asked while the other tab streams as fast as it can waited "
                      f"{1000 * asked['wait_s']:.0f} ms for the model (the other tab's longest block: "
                      f"{1000 * asked['block_s']:.0f} ms); first token after {1000 * asked['first_token_s']:.0f} ms.", ""]
            paced_cell = drops_cell = "—"
            if not args.skip_paced:
                paced_fps = paced_fps or round(min(30.0, max(0.5, PACED_SHARE * alone.fps)), 2)
                seconds = args.frames / paced_fps
                paced = TabSettings(mem_cap=args.mem_cap, fps=paced_fps).checked()
                clip = Path(folder) / f"paced-{paced_fps:g}.mp4"
                if not clip.exists():
                    write_video(clip, args.frames, paced_fps, (width, height))
                alone_p, both_p = paced_runs(pool, paced, clip, seconds)
                more, ratio = table(f"paced like the UI ({paced_fps:g} fps each, a {seconds:.1f} s video played "
                                    "to its end; the Ingester drops what waits too long)", alone_p, both_p, True)
                lines += more
                paced_cell = f"{ratio:.2f}"
                drops_cell = f"{alone_p.dropped} / {' + '.join(str(run.dropped) for run in both_p)}"
            pool.close_all()
            loads.append(load_average())
            loads_seen += [*loads, *(run.load[1] for run in (alone, *both))]
            summary.append(f"| {name} | {threads} | **{fast:.2f}** | {paced_cell} | {drops_cell} | "
                           f"{1000 * asked['wait_s']:.0f} ms | {1000 * asked['block_s']:.0f} ms | "
                           f"{loads[0]:.2f} → {loads[1]:.2f} |")
            details += [f"### {name}, {threads} torch thread{'s' if threads > 1 else ''}", "", *lines]
            print(summary[-1], flush=True)
    busiest = max(loads_seen)
    if busiest > 0.5 * len(os.sched_getaffinity(0)):
        head += [f"**Busy machine**: the 1-minute load average reached {busiest:.2f} on "
                 f"{len(os.sched_getaffinity(0))} CPUs during these runs (other programs ran beside them), so "
                 "these figures are indicative only; rerun on a quiet machine.", ""]
    text = "\n".join([*head, *summary, "", *details])
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
