"""`potwatch cluster`: start stream hosts, the directory and the HTTP front door on a local Ray (loopback
only) or an existing Ray cluster (--address), and serve until Ctrl-C or SIGTERM.

This module imports no Ray at module level: `potwatch --help` builds its arguments; Ray loads when the
command runs."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from potwatch.compression.mem_cap import format_bytes, parse_mem_cap
from potwatch.errors import MemCapError, UserError
from potwatch.ports import check_port

DEFAULT_PORT = 8000


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hosts", type=int, default=1, help="stream hosts: Ray actors that each load the model once and hold streams (one per GPU, or per --host-cpus cores; default 1)")
    parser.add_argument("--model", default="tiny", help="tiny (the small trained model potwatch ships), a demo model, a hub id or a local folder; one for every host (default tiny)")
    parser.add_argument("--host-budget", default="2GB", metavar="SIZE", help="bytes for all KV caches of one host's streams together; a new stream goes to the host with most room, or is refused (503) when none has room for its cap (default 2GB)")
    parser.add_argument("--host-cpus", type=float, default=1, help="CPU cores Ray gives each host (default 1)")
    parser.add_argument("--host-gpus", type=float, default=0, help="GPUs Ray gives each host (default 0; 1 runs each host on its own GPU)")
    parser.add_argument("--idle-timeout", type=float, default=300, metavar="SECONDS", help="close a stream after this long without a push, question or stats (default 300)")
    parser.add_argument("--push-wait", type=float, default=30, metavar="SECONDS", help="how long a push or question waits for its stream's previous one before it is refused as busy (503; default 30)")
    parser.add_argument("--front-doors", type=int, default=1, help="replicas of the HTTP front door (default 1)")
    parser.add_argument("--host", default="127.0.0.1", help="address the front door binds (default 127.0.0.1: this machine only; 0.0.0.0 for the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port the front door listens on (default {DEFAULT_PORT})")
    parser.add_argument("--address", default=None, help="an existing Ray cluster to run on (e.g. 10.0.0.5:6379, or 'auto'); default: start a local Ray bound to 127.0.0.1")
    parser.add_argument("--max-body", default="32MB", metavar="SIZE", help="the largest request taken; larger ones are refused (413; default 32MB)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads in each host (default: --host-cpus)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: float32 on CPU; the model's on CUDA)")
    parser.add_argument("--device", default=None, help="cpu or cuda for every host (default: cuda when the host has a GPU)")


def cluster_config(args: argparse.Namespace):
    """The ClusterConfig of the arguments, or a UserError naming the first that cannot work."""
    from potwatch.cluster.config import ClusterConfig

    def size(option: str, text: str) -> int:
        try:
            return parse_mem_cap(text)
        except MemCapError as error:
            raise UserError(str(error).replace("Memory cap", option, 1)) from None

    if args.hosts < 1:
        raise UserError(f"--hosts {args.hosts} starts no stream host; give 1 or more.")
    if args.host_cpus <= 0 and args.host_gpus <= 0:
        raise UserError("--host-cpus and --host-gpus are both 0, so a host would run on nothing; give --host-cpus 1.")
    if args.host_cpus < 0 or args.host_gpus < 0:
        raise UserError("--host-cpus and --host-gpus cannot be negative; give 1, say.")
    if args.front_doors < 1:
        raise UserError(f"--front-doors {args.front_doors} starts no front door; give 1 or more.")
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a port number; give one between 1 and 65535, e.g. {DEFAULT_PORT}.")
    for option, value in (("--idle-timeout", args.idle_timeout), ("--push-wait", args.push_wait)):
        if not value > 0:
            raise UserError(f"{option} {value:g} is not a positive number of seconds; give one like 30.")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads} is not a number of threads; give 1 or more.")
    device = args.device or ("cuda" if args.host_gpus > 0 else "cpu")
    return ClusterConfig(model=args.model, hosts=args.hosts, budget=size("--host-budget", args.host_budget),
                         host_cpus=args.host_cpus, host_gpus=args.host_gpus, threads=args.threads, device=device,
                         dtype=args.dtype, idle_s=args.idle_timeout, push_wait_s=args.push_wait,
                         front_doors=args.front_doors, http_host=args.host, port=args.port,
                         max_body=size("--max-body", args.max_body))


def run_cluster(args: argparse.Namespace) -> int:
    """Start the cluster, say where it answers, and serve until Ctrl-C or SIGTERM; then stop it."""
    config = cluster_config(args)
    check_port(config.http_host, config.port)
    from potwatch.cluster.start import check_address, start_cluster

    if args.address:
        check_address(args.address)  # in seconds; Ray itself retries for minutes
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as error:
        raise UserError(f"`potwatch cluster` needs the cluster extra ({error.name} is missing); run: "
                        "pip install -e '.[cluster]'.") from None

    where = f"the Ray cluster at {args.address}" if args.address else "a local Ray on 127.0.0.1"
    print(f"potwatch: starting {config.hosts} stream hosts of {config.model} ({format_bytes(config.budget)} of KV "
          f"cache each, {config.host_cpus:g} CPUs, {config.host_gpus:g} GPUs) on {where} ...", file=sys.stderr, flush=True)
    previous = None
    cluster = None
    try:
        cluster = start_cluster(config, address=args.address)
        previous = _stop_on_sigterm()  # after ray.init, which sets a SIGTERM handler of its own
        print(f"potwatch: cluster answering at {cluster.url} (POST /streams to open a stream; docs/cluster.md; "
              "Ctrl-C stops)", file=sys.stderr, flush=True)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("potwatch: stopping", file=sys.stderr, flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _stop_on_sigterm():
    """SIGTERM stops the cluster like Ctrl-C, so its clean-up runs (Ray's own handler would exit without
    stopping Ray's agents); returns the handler it replaced (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, stop)
