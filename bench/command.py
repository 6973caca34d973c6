"""`potwatch bench`: the benchmarks in `benchmarks/`, reachable from the command line.

Without `--accuracy` it runs the cost and fidelity benchmark (see `bench_suite`); with
`--accuracy QUESTIONS.json --videos DIR` it scores multiple-choice video QA (see `bench_accuracy`), under
one cap, or with `--ratios` as the fidelity table: every configuration under caps that hold those shares
of each stream's visual tokens (see `bench_fidelity`)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from potwatch.arguments import add_trust_remote_code_argument
from potwatch.errors import UserError


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a few hundred frames instead of 2,000 (under 5 minutes on 2 cores); "
                        "with --ratios: 2 videos, tar_van, uniform and window, and tar_van at 4 bits")
    parser.add_argument("--out", default="benchmarks/results", help="folder for JSON, plots and the table (default benchmarks/results)")
    parser.add_argument("--model", default=None, help="model to stream through (default demo-2b for the benchmark, tiny for --accuracy)")
    parser.add_argument("--mem-cap", default=None, help="the cap every capped configuration shares (default 80MB; for --accuracy 1GB)")
    parser.add_argument("--frames", type=int, default=None, help="sampled frames in the long stream (default 2000; 300 with --quick)")
    parser.add_argument("--full-cache-frames", type=int, default=None,
                        help="frames the full cache (no cap) runs before it stops growing (default 600; 240 with --quick; 0: all)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads torch uses (default: as `watch`, the usable cores less one, or OMP_NUM_THREADS "
                             "when set; 1 for the fidelity table)")
    add_trust_remote_code_argument(parser)
    parser.add_argument("--kv-bits", default=None, metavar="WIDTHS",
                        help="K/V widths to run the first policy at beside 16 bits, e.g. 8,4 (default 8,4; 16 for none)")
    parser.add_argument("--cost-only", action="store_true", help="skip the at-scale pass, loyalty and the needle probe")
    parser.add_argument("--policies", default=None, metavar="A,B",
                        help="compressing policies to run in every table, comma-separated (default: all the benchmark's own; "
                             "the full cache always runs)")
    parser.add_argument("--ingest-cost", action="store_true",
                        help="compare --ingest all and changed: ms/frame and visual tokens sent per frame on a fixed and "
                             "a moving camera (default model tiny; --quick: one 60 s round)")
    accuracy = parser.add_argument_group("accuracy harness (multiple-choice video QA)")
    accuracy.add_argument("--accuracy", metavar="QUESTIONS_JSON", default=None, help="score these questions instead of running the benchmark")
    accuracy.add_argument("--videos", metavar="DIR", default=None, help="folder holding the videos the questions name")
    accuracy.add_argument("--policy", default="tar_van", help="compression policy for --accuracy (default tar_van)")
    accuracy.add_argument("--fps", type=float, default=2.0, help="frames sampled per second (default 2)")
    accuracy.add_argument("--ingest", choices=["all", "changed"], default="all",
                          help="for --accuracy: send every visual token, or only those that changed (default all); in the "
                               "tables name a configuration tar_van+changed in --policies instead")
    accuracy.add_argument("--max-frames", type=int, default=None, help="stop each video after this many sampled frames")
    accuracy.add_argument("--ratios", default=None, metavar="1/2,1/4",
                          help="make the fidelity table: every policy (or --policies), the first at --kv-bits widths, and "
                               "the full cache, under caps that hold these shares of each stream's visual tokens "
                               "(e.g. 1/2,1/4,1/8,1/16)")
    accuracy.add_argument("--streams", type=int, default=None, help="with --ratios: score only the first N videos")
    accuracy.add_argument("--answers", choices=["letter", "text"], default="letter",
                          help="score the option letter ranked first (default), or the free-text answer checked against "
                               "the question's truth (sets written by make-qa)")
    accuracy.add_argument("--workers", type=int, default=1,
                          help="with --ratios: worker processes, one stream at a time each (default 1; 2 on 2 cores)")


def command_line() -> str:
    """The command as the user typed it, for the report."""
    program = Path(sys.argv[0]).name
    arguments = " ".join(shlex.quote(a) for a in sys.argv[1:])
    if program == "potwatch":
        return f"potwatch {arguments}".strip()
    return f"python {shlex.quote(sys.argv[0])} {arguments}".strip()


def run_bench(args) -> int:
    from potwatch.compression.mem_cap import is_auto
    from potwatch.threads import use_threads

    if is_auto(args.mem_cap):
        raise UserError("The benchmark compares configurations under one fixed cap, and 'auto' differs from machine "
                        "to machine; give a size such as --mem-cap 80MB.")
    use_threads(args.threads)  # the same choice as `watch`, checked before anything loads
    if args.ratios is not None and not args.accuracy:
        raise UserError(
            "--ratios makes the fidelity table of a question set; add --accuracy QUESTIONS.json and --videos DIR."
        )
    if args.ingest_cost:
        from potwatch.bench.ingest_cost import run_ingest_cost

        return run_ingest_cost(args, command_line())
    if args.ratios is not None:
        return _run_fidelity(args)
    if args.accuracy:
        return _run_accuracy(args)
    from potwatch.bench.suite import BenchConfig, run_benchmark

    changes = {}
    if args.model:
        changes["model"] = args.model
    if args.mem_cap:
        changes["mem_cap"] = args.mem_cap
    if args.frames is not None:
        if args.frames < 4:
            raise UserError(f"--frames {args.frames} is too short a stream; give at least 4 (default 2000).")
        changes["frames"] = args.frames
    if args.full_cache_frames is not None:
        changes["full_cache_frames"] = args.full_cache_frames or None
    if args.threads:
        changes["threads"] = args.threads
    if args.device:
        changes["device"] = args.device
    if args.trust_remote_code:
        changes["trust_remote_code"] = True
    if args.kv_bits is not None:
        changes["kv_bits"] = _widths(args.kv_bits)
    if args.cost_only:
        changes.update(scale_tokens=None, loyalty_frames=None, needle_seconds=None)
    if args.policies is not None:
        names = parse_policies(args.policies)
        changes.update(policies=names, loyalty_policies=names)
    config = BenchConfig.quick(**changes) if args.quick else BenchConfig.full(**changes)
    results = run_benchmark(config, args.out, command_line())
    print((Path(args.out) / "bench.md").read_text())
    return 0 if _invariants_hold(results) else 1


def _widths(text: str) -> tuple[int, ...]:
    """'8,4' -> (8, 4); 16 alone means no quantised configuration."""
    from potwatch.compression.quantized_kv import check_kv_bits

    widths = [check_kv_bits(part, capped=True) for part in text.split(",")]
    return tuple(bits for bits in widths if bits != 16)
def parse_policies(text: str) -> tuple[str, ...]:
    """'tar_van,keep_merge' -> the names, each a registered compressing policy (UserError otherwise)."""
    from potwatch.compression.policies.base import make_policy

    from potwatch.bench.configurations import configuration

    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise UserError("--policies names no policy; give a comma-separated list such as tar_van,keep_merge.")
    for name in names:
        if not make_policy(configuration(name)[0]).evicts:  # an unknown name raises its own UserError here
            raise UserError(f"--policies takes compressing policies; '{name}' is the full cache, which always runs.")
    return names


def _invariants_hold(results: dict) -> bool:
    """Peak KV within the cap for every capped configuration, and loyalty exact at ratio 1."""
    ok = all(f["peak_kv_over_cap"] <= 1 for f in results["cost"].values() if f["cap_bytes"] is not None)
    if results.get("loyalty"):
        ok = ok and results["loyalty"]["ratio_1_exact"]
    if not ok:
        print("potwatch bench: an invariant failed (peak KV over the cap, or ratio 1 not exact); see bench.json", file=sys.stderr)
    return ok


def _run_accuracy(args) -> int:
    from potwatch.bench.accuracy import accuracy_markdown, load_questions, run_accuracy
    from potwatch.compression.mem_cap import parse_optional_mem_cap
    from potwatch.models.registry import load_model

    _check_videos(args)
    items = load_questions(args.accuracy)
    text = args.mem_cap or "1GB"
    mem_cap = None if parse_optional_mem_cap(text) is None else text  # validated; the report keeps it as typed
    adapter = load_model(args.model or "tiny", device=args.device, trust_remote_code=args.trust_remote_code)
    summary = run_accuracy(adapter, items, args.videos, mem_cap, args.policy, args.fps, args.max_frames,
                           answers=args.answers, ingest=args.ingest)
    summary["ingest"] = args.ingest
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = command_line()
    summary["command"] = command
    (out / "accuracy.json").write_text(json.dumps(summary, indent=2))
    (out / "accuracy.md").write_text(accuracy_markdown(summary, command))
    print(accuracy_markdown(summary, command))
    return 0


def _check_videos(args) -> None:
    if not args.videos:
        raise UserError("--accuracy needs --videos DIR, the folder that holds the videos the questions name.")
    if not Path(args.videos).is_dir():
        raise UserError(f"The videos folder '{args.videos}' does not exist; check the path.")


QUICK_POLICIES = ("tar_van", "uniform", "window")
QUICK_STREAMS = 2


def _run_fidelity(args) -> int:
    """The fidelity table in one command: accuracy.json, accuracy.md and accuracy.png in --out."""
    import torch

    from potwatch.bench.accuracy import load_questions
    from potwatch.bench.fidelity import (ANSWER_TOKENS, DIALOGUE_SHARE, configurations, make_plan, parse_ratios,
                                             score_streams, stream_jobs)
    from potwatch.bench.fidelity_report import fidelity_markdown, plot_fidelity
    from potwatch.bench.fidelity_summary import summarise
    from potwatch.models.registry import load_model

    started = time.perf_counter()
    ratios = parse_ratios(args.ratios)
    if args.mem_cap:
        raise UserError("--ratios sets the caps from each stream's length; leave out --mem-cap, or --ratios for one cap.")
    if args.workers < 1 or (args.streams is not None and args.streams < 1):
        raise UserError("--workers and --streams take a whole number of at least 1, e.g. --workers 2.")
    _check_videos(args)
    items = load_questions(args.accuracy)
    policies = parse_policies(args.policies) if args.policies else (QUICK_POLICIES if args.quick else None)
    widths = _widths(args.kv_bits) if args.kv_bits is not None else ((4,) if args.quick else (8, 4))
    threads = args.threads or 1  # one thread a process: the reference table is timed on a shared 2-core machine
    torch.set_num_threads(threads)
    model = args.model or "tiny"
    adapter = load_model(model, device=args.device, trust_remote_code=args.trust_remote_code)
    jobs = stream_jobs(items, args.videos, args.streams or (QUICK_STREAMS if args.quick else None))
    asked = [item for _, questions in jobs for item in questions]
    plan = make_plan(adapter, asked, configurations(policies, widths), ratios, args.fps, args.max_frames, args.answers)
    streams = score_streams(adapter, jobs, plan, args.workers, model, args.device, args.trust_remote_code, threads,
                            progress=True)
    summary = {
        "command": command_line(),
        "model": adapter.name,
        "demo_model": adapter.is_demo,
        "questions_file": str(args.accuracy),
        "streams": len(streams),
        "fps": args.fps,
        "threads": threads,
        "workers": min(args.workers, len(jobs)),
        "wall_s": time.perf_counter() - started,
        "system_tokens": plan.system_tokens,
        "question_room": plan.question_room,
        "answers": plan.answers,
        "session": {"target_ratio": plan.target_ratio, "dialogue_share": DIALOGUE_SHARE, "max_new_tokens": ANSWER_TOKENS},
        **summarise(streams, asked, plan),
        "stream_details": [{key: s[key] for key in ("video", "frames", "visual_tokens", "decode_s", "caps")}
                           for s in streams],
    }
    if adapter.is_demo:
        summary["notice"] = "demo model with random weights: the accuracy only checks the harness"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps(summary, indent=1) + "\n")
    markdown = fidelity_markdown(summary)
    (out / "accuracy.md").write_text(markdown)
    from potwatch.bench.plots import plots_available

    if plots_available():
        plot_fidelity(summary, out)
    print(markdown)
    if not summary["peak_within_cap"]:
        print("potwatch bench: a capped run's peak cache passed its cap; see accuracy.json", file=sys.stderr)
    return 0 if summary["peak_within_cap"] else 1
