"""The `potwatch` command: `watch` a video or webcam under a memory cap and answer questions."""

from __future__ import annotations

import argparse
import logging
import sys

from potwatch.arguments import add_threads_argument, add_trust_remote_code_argument
from potwatch.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="potwatch", description="Watch a video stream with a vision-language model under a hard KV-cache memory cap.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True)

    watch = commands.add_parser("watch", help="watch a video file or webcam and answer questions")
    watch.add_argument("video", help="a video file, or webcam:N for camera N")
    watch.add_argument("--mem-cap", default="1GB", help="cap on the KV cache: 2GB, 1.5GiB, 512MB, 64MiB, 300kB, bytes; 'auto' (the largest that fits beside the model, said when it starts); or 'none' (default 1GB)")
    watch.add_argument("--model", default="demo", help="a demo model (`potwatch models` lists them), a hub id or a local folder (default demo)")
    watch.add_argument("--policy", default="tar_van", help="compression policy (`potwatch policies` lists them; default tar_van)")
    watch.add_argument("--kv-bits", default="16", metavar="16|8|4", help="bits a cached key or value is stored in: 16 (as the model computes it), 8 or 4 (quantised: the same cap holds more tokens) (default 16)")
    watch.add_argument("--fps", type=float, default=2.0, help="frames sampled per second of video (default 2)")
    watch.add_argument("--ask", action="append", default=[], metavar="QUESTION", help="ask at the end of the video (repeatable)")
    watch.add_argument("--ask-at", action="append", nargs=2, default=[], metavar=("TIME", "QUESTION"), help="ask when the video reaches TIME, e.g. 30s (repeatable)")
    watch.add_argument("--interactive", action="store_true", help="read questions from stdin while the video plays")
    watch.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    watch.add_argument("--realtime", action="store_true", help="play a file at its real pace (frames that arrive while the model is busy are dropped)")
    watch.add_argument("--max-frames", type=int, default=None, help="stop after this many sampled frames")
    watch.add_argument("--positions", choices=["keep", "compact"], default=None,
                       help="keep original position ids, or compact them after each compression so endless streams stay in the model's range (default: per model family)")
    watch.add_argument("--ingest", choices=["all", "changed"], default="all",
                       help="send every visual token to the language model, or only those that changed since their patch was "
                            "last sent, skipping the vision tower for repeated frames: faster on fixed cameras (default all)")
    watch.add_argument("--change-threshold", type=float, default=None, metavar="X",
                       help="with --ingest changed: the relative change of a token's embedding that sends it (default 0.15)")
    watch.add_argument("--max-new-tokens", type=int, default=48, help="longest answer, in tokens (default 48)")
    watch.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: float32 on CPU; the model's on CUDA, float16 where the GPU lacks bfloat16)")
    watch.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    add_threads_argument(watch)
    add_trust_remote_code_argument(watch)

    from potwatch.bench.command import add_bench_arguments

    add_bench_arguments(commands.add_parser("bench", help="measure cost against stream length and fidelity against the full cache"))

    from potwatch.app.ui.serve import add_serve_arguments

    add_serve_arguments(commands.add_parser("serve", help="start the web UI: webcam or file, chat, memory and retention plots"))

    from potwatch.cluster.command import add_cluster_arguments

    add_cluster_arguments(commands.add_parser("cluster", help="serve many streams from stream hosts on Ray over HTTP/JSON (the cluster extra; docs/cluster.md)"))

    from potwatch.bench.make_qa import add_make_qa_arguments

    add_make_qa_arguments(commands.add_parser("make-qa", help="write a held-out question set: synthetic-world videos and questions.json"))

    commands.add_parser("models", help="list the supported families, the trained tiny model and the demo models")
    commands.add_parser("policies", help="list the compression policies")

    save = commands.add_parser("save-demo", help="write a demo model as a checkpoint folder (to try the from_pretrained path)")
    save.add_argument("name")
    save.add_argument("folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    from potwatch.threads import prefer_passive_wait

    prefer_passive_wait()  # first: OpenMP reads its wait policy once, when torch loads it
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "watch":
            from potwatch.app.watch import run_watch

            return run_watch(args)
        if args.command == "bench":
            from potwatch.bench.command import run_bench

            return run_bench(args)
        if args.command == "serve":
            from potwatch.app.ui.serve import run_serve

            return run_serve(args)
        if args.command == "cluster":
            from potwatch.cluster.command import run_cluster  # Ray loads only here

            return run_cluster(args)
        if args.command == "make-qa":
            from potwatch.bench.make_qa import run_make_qa

            return run_make_qa(args)
        if args.command == "models":
            return _list_models()
        if args.command == "policies":
            from potwatch.compression.policies.base import policy_names

            print("\n".join(policy_names()))
            return 0
        if args.command == "save-demo":
            from potwatch.models.registry import save_demo

            print(save_demo(args.name, args.folder))
            return 0
    except UserError as error:
        print(f"potwatch: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # `watch` prints its summary itself; elsewhere there is nothing to keep
        print("potwatch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1


def _list_models() -> int:
    """Supported families with the KV cost of their smallest real checkpoint, the trained tiny model,
    then the demo models."""
    from potwatch.models.family import smallest_checkpoints
    from potwatch.models.demo_models import DEMO_SPECS

    print("families (any checkpoint by hub id or local folder; bytes per token in bfloat16):")
    for checkpoint in smallest_checkpoints():
        geometry = checkpoint.geometry()
        shape = f"{checkpoint.layers} layers x {checkpoint.kv_heads} KV heads x {checkpoint.head_dim}"
        print(f"  {checkpoint.family:16s} e.g. {checkpoint.hub_id}: {shape} = {geometry.kv_bytes_per_token:,} B/token K+V"
              f" + {geometry.meta_bytes_per_token:,} B metadata")
    from potwatch.models.tiny_build import shipped_tiny_label

    print("trained model (shipped with potwatch, offline):")
    print(f"  {'tiny':18s} {'qwen2_vl':16s} {shipped_tiny_label().split(': ', 1)[1]}")
    print("demo models (random weights, offline; every answer is marked meaningless):")
    for name, spec in DEMO_SPECS.items():
        print(f"  {name:18s} {spec.family:16s} {spec.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
