"""Busy machine: ms/frame with the machine quiet, then beside a CPU-bound process this benchmark starts
itself, for the threads potwatch chooses, torch's defaults and 1 thread.

    .venv/bin/python benchmarks/busy_machine.py                      # 40 frames of 640x360 on demo-2b
    .venv/bin/python benchmarks/busy_machine.py --out benchmarks/reference --repeat 3

Each measurement is a fresh process (OpenMP reads OMP_WAIT_POLICY once, when torch loads it) that
streams the synthetic kitchen into a `StreamSession` with no cap and times `feed` after a short warm-up.
The competitor is a plain Python busy loop (`--competitors` of them). The target (issue 14): potwatch's
own choice stays within 2x its quiet figure beside one competitor.

"Quiet" is only as quiet as the machine: every figure carries the 1-minute load average before it and
the CPU the rest of the machine used while it ran (from /proc/stat, less the worker's own), in cores.
Writes busy_machine.json and busy_machine.md into --out."""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_RATIO = 2.0
OWN_WAIT = "OpenMP's own"
CLEARED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
CONFIGS = {
    "potwatch": "what `potwatch watch` chooses",
    "torch": "torch's defaults (a thread per CPU)",
}


def parse_config(config: str) -> tuple[str, dict[str, str]]:
    """'potwatch', 'torch', 'N' (threads), each optionally '-passive' or '-spinK' (OMP_WAIT_POLICY=PASSIVE,
    GOMP_SPINCOUNT=K): (threads part, environment to set before torch loads)."""
    threads, _, wait = ("torch-passive" if config == "passive" else config).partition("-")
    if threads not in CONFIGS and not threads.isdigit():
        raise SystemExit(f"busy_machine: unknown configuration '{config}'; use potwatch, torch or N, "
                         "optionally with -passive or -spinK")
    if wait == "passive":
        return threads, {"OMP_WAIT_POLICY": "PASSIVE"}
    if wait.startswith("spin") and wait[4:].isdigit():
        return threads, {"GOMP_SPINCOUNT": wait[4:]}
    if wait:
        raise SystemExit(f"busy_machine: unknown wait '{wait}' in '{config}'; use -passive or -spinK")
    return threads, {}


def describe(config: str) -> str:
    threads, env = parse_config(config)
    text = CONFIGS.get(threads) or f"{threads} thread{'s' if threads != '1' else ''}"
    return text


# --- the worker: one measurement in a fresh process ---------------------------------------------------
def busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy so far (/proc/stat's first line)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def worker(config: str, model: str, frames: int, size: tuple[int, int], warmup: int) -> dict:
    threads, env = parse_config(config)
    os.environ.update(env)
    if threads == "potwatch":
        from potwatch.threads import prefer_passive_wait

        prefer_passive_wait()  # what the CLI does before anything imports torch
    import torch

    if threads == "potwatch":
        from potwatch.threads import use_threads

        use_threads(None)
    elif threads != "torch":
        torch.set_num_threads(int(threads))
    from potwatch.models.registry import load_model
    from potwatch.streaming.session import StreamSession
    from potwatch.world.demo_scene import render_frame

    session = StreamSession(load_model(model, device="cpu"), mem_cap=None, policy="none", threads=None)
    pictures = [render_frame(i / 2.0, size, seconds=frames) for i in range(warmup + frames)]
    session.feed(pictures[:warmup])
    cpu0, busy0, wall0 = time.process_time(), busy_seconds(), time.perf_counter()
    session.feed(pictures[warmup:])
    wall = time.perf_counter() - wall0
    others = (busy_seconds() - busy0 - (time.process_time() - cpu0)) / wall
    wait = os.environ.get("OMP_WAIT_POLICY") or (f"GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}"
                                                 if os.environ.get("GOMP_SPINCOUNT") else None)
    return {"config": config, "threads": torch.get_num_threads(), "wait_policy": wait,
            "ms_per_frame": 1000 * wall / frames, "other_cores": max(others, 0.0)}


# --- the driver ------------------------------------------------------------------------------------------
def wait_for_quiet(noise: float, seconds: float, window: float = 2.0) -> float:
    """Wait (at most `seconds`) until the machine kept at most `noise` cores busy over `window` seconds;
    returns the last figure."""
    deadline = time.monotonic() + seconds
    while True:
        before = busy_seconds()
        time.sleep(window)
        busy = (busy_seconds() - before) / window
        if busy <= noise or time.monotonic() >= deadline:
            return busy


def measure(config: str, competitors: int, args) -> dict:
    """One run; again (up to --retries times) while the rest of the machine kept more than --noise cores
    busy beside the competitors, so quiet means quiet. The least disturbed run is kept."""
    runs = []
    for _ in range(args.retries + 1):
        wait_for_quiet(args.noise, args.wait)
        runs.append(_run_once(config, competitors, args))
        if runs[-1]["other_cores"] - competitors <= args.noise:
            break
    best = min(runs, key=lambda run: run["other_cores"])
    best["attempts"] = len(runs)
    return best


def _run_once(config: str, competitors: int, args) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in CLEARED}
    env["HF_HUB_OFFLINE"] = "1"
    load = os.getloadavg()[0]
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(competitors)]
    try:
        command = [sys.executable, __file__, "--worker", config, "--model", args.model, "--frames", str(args.frames),
                   "--size", args.size, "--warmup", str(args.warmup)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    if done.returncode != 0:
        raise SystemExit(f"busy_machine: the worker for {config} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(competitors=competitors, load_before=load)
    print(f"  {config:10s} {'busy' if competitors else 'quiet':5s} {result['threads']} threads  "
          f"{result['ms_per_frame']:7.1f} ms/frame  load {load:.2f}  others {result['other_cores']:.2f} cores",
          file=sys.stderr, flush=True)
    return result


def summarise(runs: list[dict], configs: list[str]) -> list[dict]:
    rows = []
    for config in configs:
        quiet = [r for r in runs if r["config"] == config and r["competitors"] == 0]
        busy = [r for r in runs if r["config"] == config and r["competitors"] > 0]
        row = {"config": config, "what": describe(config), "threads": quiet[0]["threads"],
               "wait_policy": quiet[0]["wait_policy"]}
        for name, group in (("quiet", quiet), ("busy", busy)):
            row[f"{name}_ms"] = statistics.median(r["ms_per_frame"] for r in group)
            row[f"{name}_load"] = statistics.mean(r["load_before"] for r in group)
            row[f"{name}_others"] = statistics.mean(r["other_cores"] for r in group)
        row["ratio"] = row["busy_ms"] / row["quiet_ms"]
        rows.append(row)
    best = min(row["quiet_ms"] for row in rows)
    for row in rows:
        row["ratio_to_best_quiet"] = row["busy_ms"] / best
    return rows


def markdown(summary: dict) -> str:
    s = summary
    lines = [
        "# Busy machine: ms/frame quiet and beside a CPU-bound process",
        "",
        f"`{s['command']}`",
        "",
        f"- {s['model']}, {s['frames']} frames of {s['size']} after {s['warmup']} warm-up frames, no cap; "
        f"median of {s['repeat']} run(s); {s['competitors']} competing busy loop(s) in the busy column.",
        f"- machine: {s['cpu']}, {s['usable_cores']} usable cores (affinity {s['affinity']}, cgroup quota "
        f"{s['quota'] if s['quota'] is not None else 'none'}); torch {s['torch']}.",
        "- load: the 1-minute load average before the run; others: cores the rest of the machine kept busy while "
        "it ran (the competitor counts ~1.0). The machine is shared: a run during which other programs kept more "
        f"than {s['noise']} cores busy beside the competitor was run again (up to {s['retries']} times) and the "
        "least disturbed kept.",
        "",
        "| configuration | threads | OpenMP wait | quiet ms/frame | busy ms/frame | busy ÷ quiet "
        "| busy ÷ best quiet | load quiet / busy | others quiet / busy |",
        "|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for row in s["rows"]:
        lines.append(
            f"| {row['config']}: {row['what']} | {row['threads']} | {row['wait_policy'] or OWN_WAIT} "
            f"| {row['quiet_ms']:.1f} | {row['busy_ms']:.1f} | {row['ratio']:.2f} | {row['ratio_to_best_quiet']:.2f} "
            f"| {row['quiet_load']:.2f} / {row['busy_load']:.2f} | {row['quiet_others']:.2f} / {row['busy_others']:.2f} |")
    mine = next((row for row in s["rows"] if row["config"] == "potwatch"), None)
    if mine is not None:
        verdict = "meets" if mine["ratio"] <= TARGET_RATIO else "misses"
        lines += ["", f"potwatch's default: busy ÷ quiet = {mine['ratio']:.2f}, which {verdict} the target of "
                      f"≤ {TARGET_RATIO:g}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="potwatch,torch,1",
                        help="comma-separated: potwatch, torch or N (threads), each optionally with -passive or -spinK "
                             "(OMP_WAIT_POLICY=PASSIVE, GOMP_SPINCOUNT=K) (default potwatch,torch,1)")
    parser.add_argument("--model", default="demo-2b")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", default="640x360", help="WIDTHxHEIGHT of the synthetic frames (default 640x360)")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--competitors", type=int, default=1, help="busy loops in the busy runs (default 1)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, the median reported (default 1)")
    parser.add_argument("--noise", type=float, default=0.3,
                        help="cores other programs may keep busy during a run before it is run again (default 0.3)")
    parser.add_argument("--wait", type=float, default=120,
                        help="seconds to wait before each run for the machine to calm down below --noise (default 120)")
    parser.add_argument("--retries", type=int, default=3, help="runs again at most this often when disturbed (default 3)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one measurement may take")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    width, height = (int(part) for part in args.size.lower().split("x"))
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.frames, (width, height), args.warmup)))
        return 0
    from potwatch.cgroup import cpu_quota
    from potwatch.threads import affinity_cores, usable_cores

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the competitors are stopped on the way out
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    runs = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for _ in range(args.repeat):
        for config in configs:  # quiet and busy back to back, so both see the same machine
            runs.append(measure(config, 0, args))
            runs.append(measure(config, args.competitors, args))
            # every run so far, so a long run stopped early keeps what it measured
            (out / "busy_machine.runs.json").write_text(json.dumps(runs, indent=1) + "\n")
    import torch

    from potwatch.bench.machine import _cpu_name

    summary = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "model": args.model, "frames": args.frames, "size": args.size, "warmup": args.warmup, "repeat": args.repeat,
        "competitors": args.competitors, "noise": args.noise, "retries": args.retries, "cpu": _cpu_name(), "affinity": affinity_cores(), "quota": cpu_quota(),
        "usable_cores": usable_cores(), "torch": torch.__version__, "runs": runs, "rows": summarise(runs, configs),
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    (out / "busy_machine.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "busy_machine.runs.json").unlink(missing_ok=True)  # busy_machine.json holds every run
    text = markdown(summary)
    (out / "busy_machine.md").write_text(text)
    print(text)
    mine = next((row for row in summary["rows"] if row["config"] == "potwatch"), None)
    return 0 if mine is None or mine["ratio"] <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
