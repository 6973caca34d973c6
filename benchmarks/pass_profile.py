"""Where one compression pass spends its time: fill a cache with random K/V (as the benchmark's at-scale
check does), run a configuration's pass a few times under cProfile, and print the copy_ floor, the
passes' ms and potwatch's functions by cumulative time.

    .venv/bin/python benchmarks/pass_profile.py tar_van --tokens 19500       # the at-scale size
    .venv/bin/python benchmarks/pass_profile.py tar_van@8bit --tokens 1361   # the reference stream's cap
    .venv/bin/python benchmarks/pass_profile.py keep_merge --model demo-llava-0.5b

Without --model the geometry is Qwen2-VL-2B's (28 layers x 2 KV heads x 128, float32 on the CPU) with its
54-token blocks, and no model is loaded. Run it with OMP_NUM_THREADS=1 on a shared machine. The CPU pass
runs its C loops (kernels/cpu_pass.c); POTWATCH_NATIVE=0 profiles the plain-torch path instead."""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from potwatch.bench.configurations import configuration  # noqa: E402
from potwatch.bench.copy_floor import (block_layout, copy_floor_ms, fill_synthetic, qwen_layout,  # noqa: E402
                                           synthetic_cache, synthetic_queries)
from potwatch.compression.budget import KVGeometry  # noqa: E402
from potwatch.compression.monitor import CompressionMonitor  # noqa: E402
from potwatch.compression.policies.base import make_policy  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configuration", help="a policy, optionally at 8 or 4 bits: tar_van, keep_merge, tar_van@8bit")
    parser.add_argument("--tokens", type=int, default=19_500, help="tokens in the cache (default 19500)")
    parser.add_argument("--passes", type=int, default=3, help="passes over the refilled cache (default 3)")
    parser.add_argument("--model", default=None, help="take the geometry and block layout of this model")
    parser.add_argument("--top", type=int, default=25, help="functions to print (default 25)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    name, bits = configuration(args.configuration)
    policy = make_policy(name)
    if args.model:
        from potwatch.models.registry import load_model

        adapter = load_model(args.model, device="cpu")
        geometry = adapter.geometry()
        layout, system = block_layout(adapter, (320, 240), 2.0)
    else:
        geometry = KVGeometry(28, 2, 128, torch.float32)
        layout, system = qwen_layout((6, 9)), 124
    geometry = replace(geometry, kv_bits=bits, token_state=policy.per_token_state)
    cache = synthetic_cache(geometry, args.tokens, layout, system)
    held = cache.length
    copy_ms = copy_floor_ms(cache, held)
    profiler, passes = cProfile.Profile(), []
    for attempt in range(args.passes):
        if attempt:
            fill_synthetic(cache, layout, system)
        monitor = CompressionMonitor(cache, make_policy(name))
        if policy.needs_queries:
            monitor.queries = synthetic_queries(geometry, layout.tokens, "cpu")
        profiler.enable()
        passes.append(monitor.make_room(cache.capacity - held + layout.tokens).ms)
        profiler.disable()
    median = statistics.median(passes)
    print(f"{args.configuration}: {held:,} tokens, torch threads {torch.get_num_threads()}; copy_ of its stored K/V "
          f"{copy_ms:.1f} ms; passes {', '.join(f'{ms:.1f}' for ms in passes)} ms (median {median:.1f}, "
          f"{median / copy_ms:.2f}x copy_)")
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).sort_stats("cumulative")
    stats.print_stats(r"potwatch|compression|kernels|torch\._C|built-in method torch", args.top)
    print(text.getvalue().split("\n", 4)[-1].rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
