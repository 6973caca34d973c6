"""A day in a megabyte: a simulated day of the synthetic world at 2 fps pushed through `StreamSession`
under fixed byte caps, with questions asked mid-stream as a user would, and how likely potwatch is to
answer right about an event as the event grows older.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/day.py --hours 24 --caps 1MB,4MB \\
        --policies tar_van,window,uniform --workers 2 --out benchmarks/reference/day

Each (policy, cap) runs in a fresh worker process of one thread: the day's frames are rendered in
memory (world/day.py: each colour-and-shape pair at most once, some never), fed one temporal group at a
time, and at every stop (every `--every` seconds of stream, and a minute and ten minutes after each
event came) the session is asked "Did you see a red box?" about the past events nearest 1 minute, 10
minutes, 1, 4, 12 and 20 hours old, about a pair that never came, and "What is in view now?"; the stream
goes on after each. The full cache runs too (`--full`), until it passes `--full-limit` bytes or the
wall time of `--full-minutes`, and the point where it stopped is reported.

Figures (JSON, a Markdown table, PNG plots): the memory curve (accuracy against event age, with the
number of questions behind each point), the cap held after every block, RSS at the start, each hour and
the end, ms/frame in the first and the last hour, compressions, dropped frames, and how many frames of
each hour still hold tokens at the end of the day."""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

AGE_BINS = ((0, 120, "1 min"), (120, 1200, "10 min"), (1200, 7200, "1 h"), (7200, 8 * 3600, "4 h"),
            (8 * 3600, 16 * 3600, "12 h"), (16 * 3600, 10 ** 9, "20 h"))
RSS_TOLERANCE = 0.02
SPEED_TOLERANCE = 1.05
FRAME_SIZE = (168, 224)  # (height, width) rendered; the tiny model sees 84 x 112
FULL = "full"


@dataclass(frozen=True)
class DayRun:
    policy: str  # a policy name, or "full" for the uncapped cache
    cap: str | None
    hours: float
    every_s: float
    seed: int
    positions: str | None
    model: str = "tiny"
    full_limit: int = 1 << 30
    full_minutes: float = 20.0

    @property
    def label(self) -> str:
        return "full cache" if self.policy == FULL else f"{self.policy} @ {self.cap}"


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_day(run: DayRun, progress: bool = False) -> dict:
    """One day through one session; every figure of the module docstring for it."""
    import torch

    from potwatch.models.registry import load_model
    from potwatch.streaming.session import StreamSession
    from potwatch.world.day import day_questions, first_seen, make_day
    from potwatch.world.questions import check_answer
    from potwatch.world.render import render
    from potwatch.world.stream import SAMPLE_FPS

    torch.set_num_threads(1)
    adapter = load_model(run.model)
    day = make_day(run.seed, run.hours)
    questions = day_questions(day, run.every_s, run.seed)
    full = run.policy == FULL
    session = StreamSession(adapter, mem_cap=None if full else run.cap, policy="none" if full else run.policy,
                            fps=SAMPLE_FPS, positions=run.positions, frame_size=FRAME_SIZE, max_new_tokens=24)
    cap = session.cap_bytes
    hour_frames = int(3600 * SAMPLE_FPS)
    edge = min(hour_frames, max(day.frames // 10, 2))  # "first/last hour" of a day, a tenth of a short one
    rss = {"start": rss_bytes()}
    feed_s = {"first": 0.0, "last": 0.0}
    over_cap, peak, asked = 0, 0, []
    started = time.perf_counter()
    stopped = None
    pending = list(questions)
    size = (FRAME_SIZE[1], FRAME_SIZE[0])
    for first in range(0, day.frames - 1, 2):
        frames = [render(day.stream, (first + i) / SAMPLE_FPS, size) for i in range(2)]
        began = time.perf_counter()
        session.feed(frames)
        spent = time.perf_counter() - began
        if first < edge:
            feed_s["first"] += spent
        if first >= day.frames - edge:
            feed_s["last"] += spent
        cache = session.cache
        used = max(cache.nbytes, cache.used_bytes)
        peak = max(peak, cache.used_bytes)
        if cap is not None and used > cap:
            over_cap += 1
        fed = first + 2
        while pending and pending[0].frames <= fed:
            item = pending.pop(0)
            answer = session.ask(item.question.question, max_new_tokens=24).text
            asked.append({"asked_at_s": item.asked_at_s, "kind": item.question.kind, "question": item.question.question,
                          "expected": item.question.answer, "answer": answer, "age_s": item.age_s,
                          "yes": item.question.truth.get("yes"), "right": check_answer(item.question.truth, answer)})
        if fed % hour_frames == 0:
            rss[f"hour {fed // hour_frames}"] = rss_bytes()
        if full and (cache.nbytes > run.full_limit or time.perf_counter() - started > 60 * run.full_minutes):
            stopped = {"frames": fed, "stream_s": fed / SAMPLE_FPS, "cache_bytes": cache.nbytes,
                       "reason": "memory limit" if cache.nbytes > run.full_limit else "time limit"}
            break
        if progress and fed % (hour_frames // 4) == 0:
            print(f"{run.label}: {fed / SAMPLE_FPS / 3600:.2f} h of stream, {time.perf_counter() - started:.0f} s",
                  file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    rss["end"] = rss_bytes()
    stats = session.stats()
    held = session.cache.frames_held().tolist()
    per_hour: dict[int, int] = {}
    for frame in held:
        per_hour[int(frame / SAMPLE_FPS // 3600)] = per_hour.get(int(frame / SAMPLE_FPS // 3600), 0) + 1
    frames_fed = stats["frames_seen"]
    edge_frames = min(edge, frames_fed)
    result = {
        "label": run.label, "policy": run.policy, "cap": run.cap, "cap_bytes": cap, "hours": run.hours,
        "positions": session.positions_mode, "seed": run.seed, "every_s": run.every_s,
        "frames": frames_fed, "seconds": seconds, "ms_per_frame": 1000 * seconds / max(frames_fed, 1),
        "ms_per_frame_first": 1000 * feed_s["first"] / max(edge_frames, 1),
        "ms_per_frame_last": 1000 * feed_s["last"] / max(edge_frames, 1) if stopped is None else None,
        "edge_frames": edge_frames, "blocks_over_cap": over_cap, "peak_bytes": peak,
        "allocated_bytes": stats["allocated_bytes"], "compressions": stats["compressions"],
        "dropped_frames": stats["dropped_frames"], "rss": rss, "stopped": stopped,
        "frames_held_per_hour": {str(hour): count for hour, count in sorted(per_hour.items())},
        "frames_per_hour": hour_frames, "events": [_event(e, first_seen(e)) for e in day.stream.events],
        "never": [" ".join(pair) for pair in day.never], "answers": asked,
    }
    session.close()
    return result


def _event(event, seen_s: float) -> dict:
    return {"name": event.name, "first_seen_s": seen_s, "stay_s": event.end_s - event.start_s, "slot": event.slot}


def memory_curve(answers: list[dict]) -> list[dict]:
    """Accuracy on "Did you see a ...?" about events that came, by the event's age, per bin."""
    points = []
    for low, high, name in AGE_BINS:
        marks = [a["right"] for a in answers if a["age_s"] is not None and low <= a["age_s"] < high]
        if marks:
            points.append({"age": name, "from_s": low, "to_s": high, "questions": len(marks),
                           "accuracy": sum(marks) / len(marks)})
    return points


def morning_in_the_evening(answers: list[dict], day_s: float) -> dict:
    """Questions asked in the last quarter of the day about events that came in its first half."""
    marks = [a["right"] for a in answers if a["age_s"] is not None and a["asked_at_s"] >= 0.75 * day_s
             and a["asked_at_s"] - a["age_s"] < 0.5 * day_s]
    return {"questions": len(marks), "accuracy": sum(marks) / len(marks) if marks else None}


def summarise(result: dict) -> dict:
    answers = result["answers"]
    rss = result["rss"]
    hours = [value for key, value in rss.items() if key.startswith("hour")]
    baseline = hours[0] if hours else rss["start"]
    after = hours[1:] + [rss["end"]] if hours else [rss["end"]]
    drift = max(after) / baseline - 1 if after else 0.0
    no = [a["right"] for a in answers if a["kind"] == "presence" and a["yes"] is False]
    now = [a["right"] for a in answers if a["kind"] == "now"]
    first, last = result["ms_per_frame_first"], result["ms_per_frame_last"]
    return {
        "curve": memory_curve(answers),
        "morning_in_the_evening": morning_in_the_evening(answers, result["hours"] * 3600),
        "no_questions": {"questions": len(no), "accuracy": sum(no) / len(no) if no else None},
        "now_questions": {"questions": len(now), "accuracy": sum(now) / len(now) if now else None},
        "rss_drift": drift, "rss_within": drift <= RSS_TOLERANCE,
        "speed_ratio": last / first if last and first else None,
        "cap_held": result["blocks_over_cap"] == 0 and (result["cap_bytes"] is None or result["peak_bytes"] <= result["cap_bytes"]),
    }


def markdown(results: list[dict], command: str) -> str:
    bins = [name for _, _, name in AGE_BINS]
    lines = ["# A day in a megabyte", "", f"`{command}`", "",
             "Accuracy on \"Did you see a ...?\" about events that came, by the event's age when asked "
             "(questions behind each point in brackets):", "",
             "| configuration | " + " | ".join(bins) + " | morning, asked in the evening | never-seen pairs (\"no\") | now |",
             "| --- | " + " | ".join("---" for _ in bins) + " | --- | --- | --- |"]
    for result in results:
        summary = result["summary"]
        by_bin = {point["age"]: point for point in summary["curve"]}
        cells = [f"{by_bin[b]['accuracy']:.0%} ({by_bin[b]['questions']})" if b in by_bin else "–" for b in bins]
        morning, no, now = summary["morning_in_the_evening"], summary["no_questions"], summary["now_questions"]
        cells += [_share(morning), _share(no), _share(now)]
        lines.append(f"| {result['label']} | " + " | ".join(cells) + " |")
    lines += ["", "| configuration | frames | ms/frame first / last hour | ratio | peak / cap | blocks over the cap | "
              "compressions | dropped | RSS start → end (drift) | stopped |", "| --- | " + " | ".join("---" for _ in range(9)) + " |"]
    for result in results:
        summary, rss = result["summary"], result["rss"]
        cap = "no cap" if result["cap_bytes"] is None else f"{result['peak_bytes'] / 1e6:.3f} / {result['cap_bytes'] / 1e6:.3f} MB"
        last = "–" if result["ms_per_frame_last"] is None else f"{result['ms_per_frame_last']:.2f}"
        ratio = "–" if summary["speed_ratio"] is None else f"{summary['speed_ratio']:.3f}"
        stopped = "–" if not result["stopped"] else (f"at {result['stopped']['stream_s'] / 3600:.2f} h "
                                                     f"({result['stopped']['reason']}, {result['stopped']['cache_bytes'] / 1e6:.0f} MB)")
        lines.append(f"| {result['label']} | {result['frames']:,} | {result['ms_per_frame_first']:.2f} / {last} | {ratio} | {cap} | "
                     f"{result['blocks_over_cap']} | {result['compressions']:,} | {result['dropped_frames']} | "
                     f"{rss['start'] / 1e6:.0f} → {rss['end'] / 1e6:.0f} MB ({summary['rss_drift']:+.1%}) | {stopped} |")
    lines += ["", "Temporal groups (two frames, one second) of each hour that still hold a token at the end of the day:", "",
              "| configuration | " + " | ".join(f"h{h}" for h in range(_hours(results))) + " |",
              "| --- | " + " | ".join("---" for _ in range(_hours(results))) + " |"]
    for result in results:
        held = result["frames_held_per_hour"]
        lines.append(f"| {result['label']} | " + " | ".join(str(held.get(str(h), 0)) for h in range(_hours(results))) + " |")
    return "\n".join(lines) + "\n"


def _share(figure: dict) -> str:
    return "–" if figure["accuracy"] is None else f"{figure['accuracy']:.0%} ({figure['questions']})"


def _hours(results: list[dict]) -> int:
    return max(1, math.ceil(max(r["hours"] for r in results)))


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.2))
    for result in results:
        curve = result["summary"]["curve"]
        if not curve:
            continue
        centres = [math.sqrt(max(p["from_s"], 30) * min(p["to_s"], 24 * 3600)) / 3600 for p in curve]
        axis.plot(centres, [p["accuracy"] for p in curve], "o-", label=result["label"])
        for x, p in zip(centres, curve):
            axis.annotate(str(p["questions"]), (x, p["accuracy"]), fontsize=6, xytext=(2, 3), textcoords="offset points")
    axis.set_xscale("log")
    axis.set_xlabel("age of the event when asked (hours, log scale)")
    axis.set_ylabel("answered right")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=7)
    axis.set_title("How long potwatch remembers: \"Did you see a ...?\" over a day (questions per point)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _worker(run: DayRun) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = run_day(run, progress=True)
    result["summary"] = summarise(result)
    return result


def run_all(runs: list[DayRun], workers: int) -> list[dict]:
    if workers <= 1:
        return [_worker(run) for run in runs]
    with multiprocessing.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
        return pool.map(_worker, runs, chunksize=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0, help="length of the simulated day (default 24)")
    parser.add_argument("--caps", default="1MB,4MB", help="byte caps, comma-separated (default 1MB,4MB)")
    parser.add_argument("--policies", default="tar_van,window,uniform")
    parser.add_argument("--every", type=float, default=1200.0, help="seconds of stream between regular stops (default 1200)")
    parser.add_argument("--positions", choices=("keep", "compact"), default=None, help="position ids (default: the model's)")
    parser.add_argument("--full", action="store_true", help="also run the full cache until --full-limit or --full-minutes")
    parser.add_argument("--full-limit", default="1GB", help="the full cache stops past this many bytes (default 1GB)")
    parser.add_argument("--full-minutes", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of one thread each (default 2)")
    parser.add_argument("--out", default=None, help="folder for day.json, day.md and day.png")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from potwatch.compression.mem_cap import parse_mem_cap

    runs = [DayRun(policy, cap, args.hours, args.every, args.seed, args.positions, args.model)
            for cap in args.caps.split(",") for policy in args.policies.split(",")]
    if args.full:
        runs.insert(0, DayRun(FULL, None, args.hours, args.every, args.seed, args.positions, args.model,
                              full_limit=parse_mem_cap(args.full_limit), full_minutes=args.full_minutes))
    started = time.perf_counter()
    results = run_all(runs, args.workers)
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/day.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(results, command.strip())
    print(text)
    print(f"{len(runs)} runs in {(time.perf_counter() - started) / 60:.1f} min on {args.workers} worker(s) of one thread")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "day.json").write_text(json.dumps({"command": command, "runs": results}, indent=1))
        (out / "day.md").write_text(text)
        plot(results, out / "day.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
