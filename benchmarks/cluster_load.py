"""Cluster load: what `potwatch cluster` takes through its HTTP front door on this machine, with 1 and
with 2 stream hosts (one CPU core and one torch thread each) on a local Ray, loopback only.

    .venv/bin/python benchmarks/cluster_load.py                                   # tiny, 4 cameras
    .venv/bin/python benchmarks/cluster_load.py --out benchmarks/reference --streams 4 --frames 60

For each host count: a fresh cluster; `--streams` cameras push the demo video's frames (320x240 JPEG,
sampled at 2 fps, looped with growing stream times) one frame a request, all at once, `--frames`
each; then each asks `--questions` questions. Figures: frames/s taken in all, p50/p99 push and ask
latency (client side: HTTP, front door, directory look-up, the host's decode and model work), and
requests/s of GET /streams/{id} (the stats request: front door, directory look-up cached, a host call,
no model) and of GET /cluster (front door and directory only) from as many client threads, and the
directory's look-ups/s called straight from Ray. The clients run on the same 2 cores as Ray and the hosts, and
other engineers' jobs share the machine: every figure carries the load average before it and the
CPU the rest of the machine used meanwhile (from /proc/stat, less this benchmark's own processes).
Bounded: every loop stops at its count or at --limit-s. Writes cluster_load.json and cluster_load.md."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def own_jiffies(root: int) -> int:
    """CPU jiffies (user + system) of `root` and every process below it: this benchmark, Ray, the hosts."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                children.setdefault(int(stat[1]), []).append(int(entry))
            except OSError:
                pass
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(stat[11]) + int(stat[12])
        except OSError:
            pass
        todo.extend(children.get(pid, []))
    return total


class Machine:
    """How busy the rest of the machine was between `start` and `stop`, in cores."""

    def start(self) -> None:
        self.load = os.getloadavg()[0]
        self.busy, self.total = cpu_jiffies()
        self.own = own_jiffies(os.getpid())
        self.wall = time.monotonic()

    def stop(self) -> dict:
        busy, total = cpu_jiffies()
        own = own_jiffies(os.getpid())
        cores = os.cpu_count() or 1
        seconds = (total - self.total) / cores / os.sysconf("SC_CLK_TCK")
        others = max(busy - self.busy - (own - self.own), 0) / os.sysconf("SC_CLK_TCK")
        return {"load_1min_before": round(self.load, 2), "others_cores": round(others / max(seconds, 1e-9), 2),
                "own_cores": round((own - self.own) / os.sysconf("SC_CLK_TCK") / max(seconds, 1e-9), 2)}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(share * len(ordered)), len(ordered) - 1)]


def ms(values: list[float]) -> dict:
    return {"p50_ms": round(1000 * percentile(values, 0.5), 1), "p99_ms": round(1000 * percentile(values, 0.99), 1),
            "n": len(values)}


def demo_frames() -> list:
    from potwatch.assets import demo_video
    from potwatch.cluster.frames import encode_image
    from potwatch.streaming.sources import FileSource

    frames = [(frame.time_s, encode_image(frame.rgb)) for frame in FileSource(demo_video(), fps=2)]
    return frames


def run_hosts(hosts: int, args, frames: list) -> dict:
    from potwatch.cluster.client import ClusterClient
    from potwatch.cluster.config import ClusterConfig
    from potwatch.cluster.start import start_cluster

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    cluster = start_cluster(ClusterConfig(model=args.model, hosts=hosts, budget=2 * 10**9, host_cpus=1, threads=1,
                                          port=port, idle_s=3600))
    start_s = time.monotonic() - started
    try:
        client = ClusterClient(cluster.url)
        streams = [client.open(mem_cap=args.cap, fps=2, max_new_tokens=24) for _ in range(args.streams)]
        deadline = time.monotonic() + args.limit_s
        loop_s = frames[-1][0] + 0.5

        def camera(stream) -> list[float]:
            latencies = []
            for i in range(args.frames):
                if time.monotonic() > deadline:
                    break
                time_s, image = frames[i % len(frames)]
                sent = time.perf_counter()
                stream.push_encoded([image], [time_s + loop_s * (i // len(frames))])
                latencies.append(time.perf_counter() - sent)
            return latencies

        machine = Machine()
        machine.start()
        pushes, push_wall = in_parallel(camera, streams)
        push_machine = machine.stop()
        taken = sum(s.stats()["frames_seen"] for s in streams)

        def asker(stream) -> list[float]:
            latencies = []
            for question in ("What colour was the box?", "How many objects came in?")[: args.questions]:
                sent = time.perf_counter()
                stream.ask(question)
                latencies.append(time.perf_counter() - sent)
            return latencies

        asks = [x for part in in_parallel(asker, streams)[0] for x in part]
        machine.start()
        counts, stats_wall = in_parallel(lambda stream: calls_for(stream.stats, args.stats_s), streams)
        requests = sum(counts)
        stats_machine = machine.stop()
        counts, overview_wall = in_parallel(lambda _: calls_for(client.overview, args.stats_s / 2), streams)
        overview_rate = sum(counts) / overview_wall
        lookups = directory_lookups(cluster.directory, streams[0].id, args.stats_s / 2)
        for stream in streams:
            stream.close()
        return {"hosts": hosts, "streams": len(streams), "start_s": round(start_s, 1),
                "frames_pushed": sum(len(p) for p in pushes), "frames_taken": taken,
                "frames_per_s": round(taken / push_wall, 1), "push": ms([x for p in pushes for x in p]),
                "ask": ms(asks), "stats_requests_per_s": round(requests / stats_wall, 1),
                "cluster_requests_per_s": round(overview_rate, 1), "directory_lookups_per_s": round(lookups, 1),
                "machine_while_pushing": push_machine, "machine_while_stats": stats_machine}
    finally:
        cluster.stop()


def in_parallel(work, items: list) -> tuple[list, float]:
    """`work` on every item at once, one thread each: (results in order, wall seconds)."""
    began = time.perf_counter()
    with ThreadPoolExecutor(len(items)) as pool:
        results = list(pool.map(work, items))
    return results, time.perf_counter() - began


def calls_for(call, seconds: float, most: int = 100_000) -> int:
    """How many times `call()` ran in `seconds` (at most `most`: the loop is bounded either way)."""
    done, stop = 0, time.monotonic() + seconds
    while time.monotonic() < stop and done < most:
        call()
        done += 1
    return done


def directory_lookups(directory, stream_id: str, seconds: float) -> float:
    """Look-ups/s the directory actor answers, called straight from this process 100 at a time."""
    import ray

    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds and done < 1_000_000:
        ray.get([directory.lookup.remote(stream_id) for _ in range(100)])
        done += 100
    return done / (time.perf_counter() - began)


def table(results: list[dict], args) -> str:
    lines = [f"Cluster load: model {args.model}, {args.streams} cameras x {args.frames} frames (320x240 JPEG), cap "
             f"{args.cap}, hosts of 1 CPU core and 1 torch thread, a local Ray on {os.cpu_count()} shared cores.", "",
             "| hosts | frames/s | push p50 / p99 ms | ask p50 / p99 ms | stats requests/s | GET /cluster/s | "
             "directory look-ups/s | load before | other jobs' cores (push / stats) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        m1, m2 = r["machine_while_pushing"], r["machine_while_stats"]
        lines.append(f"| {r['hosts']} | {r['frames_per_s']} | {r['push']['p50_ms']} / {r['push']['p99_ms']} | "
                     f"{r['ask']['p50_ms']} / {r['ask']['p99_ms']} | {r['stats_requests_per_s']} | "
                     f"{r['cluster_requests_per_s']} | {r['directory_lookups_per_s']} | "
                     f"{m1['load_1min_before']} | {m1['others_cores']} / {m2['others_cores']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--cap", default="700kB", help="each stream's cap (default 700kB: tiny compresses within the video)")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--frames", type=int, default=60, help="frames each camera pushes (default 60)")
    parser.add_argument("--questions", type=int, default=2)
    parser.add_argument("--stats-s", type=float, default=10.0, help="seconds of stats requests (default 10)")
    parser.add_argument("--hosts", default="1,2", help="host counts to measure (default 1,2)")
    parser.add_argument("--limit-s", type=float, default=300.0, help="the longest a push phase runs (default 300)")
    parser.add_argument("--out", default=None, help="a folder for cluster_load.json and cluster_load.md")
    args = parser.parse_args(argv)
    frames = demo_frames()
    results = [run_hosts(int(h), args, frames) for h in args.hosts.split(",")]
    text = table(results, args)
    print(json.dumps(results, indent=2))
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cluster_load.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
        (out / "cluster_load.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
