"""`potwatch serve`: load the model once and start the web UI, bound to this machine unless told."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

from potwatch.arguments import add_threads_argument, add_trust_remote_code_argument
from potwatch.compression.mem_cap import format_bytes, parse_mem_cap
from potwatch.errors import MemCapError, UserError
from potwatch.ports import check_port

DEFAULT_PORT = 7860


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="tiny (the small trained model potwatch ships), a demo model (`potwatch models` lists them), a hub id or a local folder; one for the whole server (default tiny)")
    parser.add_argument("--mem-cap", default=None, help="each session's starting cap on the KV cache, e.g. 1GB or 1MB; users can change it per tab; 'auto' shares what fits beside the model among --max-sessions tabs (default: per model: a small model such as tiny gets a cap it fills within the first minute, so compression shows at once; a large one 1GB)")
    parser.add_argument("--policy", default="tar_van", help="each session's default compression policy (`potwatch policies` lists them; default tar_van)")
    parser.add_argument("--kv-bits", default="16", metavar="16|8|4", help="each session's default bits per cached key or value: 16, 8 or 4 (quantised: the same cap holds more tokens); users can change it per tab (default 16)")
    parser.add_argument("--fps", type=float, default=2.0, help="each session's default frames sampled per second (default 2)")
    parser.add_argument("--ingest", default="all", metavar="all|changed", help="each session's default ingest: every visual token to the language model, or only those that changed since their patch was last sent (faster on fixed cameras); users can change it per tab (default all)")
    parser.add_argument("--change-threshold", type=float, default=None, metavar="X", help="each session's default change threshold under --ingest changed: the relative change of a token's embedding that sends it (default 0.15)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument("--max-sessions", type=int, default=4, help="browser tabs served at once, each with its own cache (default 4)")
    parser.add_argument("--mem-budget", default=None, metavar="SIZE", help="memory for all tabs' KV caches together, e.g. 4GB; a new tab that would go beyond it waits for room, and a cap that would is refused (default: the starting cap x --max-sessions)")
    parser.add_argument("--max-session-cap", default=None, metavar="SIZE", help="the largest cap a visitor may give a tab; above it, or 'none', is refused (default: the whole --mem-budget; the budget still refuses a cap the other tabs leave no room for)")
    parser.add_argument("--allow-any-cap", action="store_true", help="let visitors give a tab any cap, or none (an uncapped cache grows past the budget); off by default")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="longest answer, in tokens (default 48)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: float32 on CPU; the model's on CUDA, float16 where the GPU lacks bfloat16)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    add_trust_remote_code_argument(parser)
    add_threads_argument(parser)


def _size(option: str, text: str | None) -> int | None:
    """Bytes in an operator's size option, or a one-sentence UserError naming the option."""
    if text is None:
        return None
    try:
        return parse_mem_cap(text)
    except MemCapError as error:
        raise UserError(str(error).replace("Memory cap", option, 1)) from None


def memory_limits(args: argparse.Namespace, start_cap: str | None):
    """The budget and the per-tab ceiling from --mem-budget, --max-session-cap and --allow-any-cap for tabs
    starting at `start_cap` (None: only check the sizes are well formed); a UserError for limits that
    cannot work together."""
    from potwatch.app.ui.budget import MemoryLimits
    from potwatch.app.ui.sessions import cap_value

    budget = _size("--mem-budget", args.mem_budget)
    ceiling = _size("--max-session-cap", args.max_session_cap)
    if ceiling is not None and args.allow_any_cap:
        raise UserError("--max-session-cap and --allow-any-cap contradict each other; give one of them.")
    if start_cap is None:
        return None
    cap = cap_value(start_cap)
    if cap is None:
        if not args.allow_any_cap:
            raise UserError("--mem-cap none lets every tab's cache grow without bound, past any memory budget; give a "
                            "size such as 1GB, or add --allow-any-cap to allow it.")
        return MemoryLimits(budget=budget, ceiling=None, allow_any_cap=True)
    budget = cap * args.max_sessions if budget is None else budget
    if budget < cap:
        raise UserError(f"--mem-budget {format_bytes(budget)} is smaller than one tab's starting cap {format_bytes(cap)}; "
                        f"give at least {format_bytes(cap)}, e.g. {format_bytes(cap * args.max_sessions)} for "
                        f"{args.max_sessions} tabs, or a smaller --mem-cap.")
    # by default a tab may take the whole budget, so a cap can be raised, not only lowered; the budget
    # still refuses what the other tabs' caches leave no room for
    ceiling = budget if ceiling is None else ceiling
    if ceiling < cap:
        raise UserError(f"--max-session-cap {format_bytes(ceiling)} is below the starting cap {format_bytes(cap)}, so no "
                        f"tab could start; give at least {format_bytes(cap)}, or a smaller --mem-cap.")
    if not args.allow_any_cap and ceiling > budget:
        raise UserError(f"--max-session-cap {format_bytes(ceiling)} is above --mem-budget {format_bytes(budget)}, a cap no "
                        "tab could have; lower it or raise --mem-budget.")
    return MemoryLimits(budget=budget, ceiling=None if args.allow_any_cap else ceiling, allow_any_cap=args.allow_any_cap)


def limits_line(limits, start_cap: str, max_sessions: int) -> str:
    """What the operator's memory limits are, printed at start."""
    from potwatch.app.ui.sessions import cap_value

    cap = cap_value(start_cap)
    if limits.budget is None:
        budget = "no memory budget (--mem-budget sets one)"
    else:
        room = "" if cap is None else f", room for {min(limits.budget // cap, max_sessions)} tabs at the starting cap"
        budget = f"memory budget {format_bytes(limits.budget)} for all tabs' KV caches together{room} (--mem-budget sets it)"
    if limits.allow_any_cap:
        each = "visitors may give a tab any cap, or none (--allow-any-cap; an uncapped cache grows past the budget)"
    else:
        whole = " (the whole budget)" if limits.ceiling == limits.budget else ""
        each = f"each tab's cap at most {format_bytes(limits.ceiling)}{whole}, never none (--max-session-cap sets it)"
    return f"{budget}; {each}"


def starting_settings(args: argparse.Namespace, mem_cap: str):
    """Each new tab's settings from the command line (`mem_cap` as it stands before the model loads),
    checked: a value that cannot work stops the server with one sentence."""
    from potwatch.app.ui.sessions import TabSettings

    threshold = {} if args.change_threshold is None else {"change_threshold": args.change_threshold}  # none: the default
    return TabSettings(mem_cap=mem_cap, policy=args.policy, fps=args.fps, kv_bits=args.kv_bits, ingest=args.ingest,
                       **threshold).checked()


def _auto_settings(adapter, settings, max_sessions: int):
    """Each tab's starting cap under --mem-cap auto: what fits beside the model, shared by --max-sessions
    tabs (each with its own activations), said with the figures it came from."""
    from dataclasses import replace

    from potwatch.compression.auto_cap import auto_cap_for

    chosen = auto_cap_for(adapter, settings.policy, settings.kv_bits, settings.fps, sessions=max_sessions)
    step = 10 ** max(len(str(chosen.cap_bytes)) - 3, 0)  # three figures, rounded down: never past what was chosen
    cap = format_bytes(chosen.cap_bytes // step * step)
    print(f"potwatch: each tab starts with a {cap} cap, {chosen.describe()} (shared by {max_sessions} tabs)",
          file=sys.stderr, flush=True)
    return replace(settings, mem_cap=cap)


def run_serve(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM. Uploads go to a folder of this server's own (unless
    $GRADIO_TEMP_DIR names one), deleted with everything in it when the server stops."""
    own_folder = None
    if not os.environ.get("GRADIO_TEMP_DIR"):
        own_folder = tempfile.mkdtemp(prefix="potwatch-serve-")
        os.environ["GRADIO_TEMP_DIR"] = own_folder
    previous = _stop_on_sigterm()
    try:
        return _serve(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if own_folder is not None:
            shutil.rmtree(own_folder, ignore_errors=True)
            os.environ.pop("GRADIO_TEMP_DIR", None)


def _stop_on_sigterm():
    """Make SIGTERM (systemd, docker stop) stop the server like Ctrl-C, so the clean-up runs; returns
    the handler it replaced (None off the main thread, where no handler can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, stop)


def _serve(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise UserError(f"The web UI needs the ui extra ({error.name} is missing); run: pip install -e '.[ui]'.") from error
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a port number; give one between 1 and 65535, e.g. 7860.")
    from potwatch.app.ui.sessions import SessionPool

    from potwatch.compression.mem_cap import is_auto

    auto = is_auto(args.mem_cap)
    given_cap = None if auto else args.mem_cap  # 'auto' becomes a size once the model is loaded
    settings = starting_settings(args, given_cap or "1GB")
    if args.max_sessions < 1:
        raise UserError(f"--max-sessions {args.max_sessions} allows no session; give 1 or more.")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens} allows no answer; give 1 or more, e.g. 48.")
    memory_limits(args, None)  # a malformed size fails before the model loads
    if given_cap is not None:
        memory_limits(args, settings.mem_cap)
    from potwatch.threads import check_threads, use_serve_threads

    if args.threads is not None:
        check_threads(args.threads)
    check_port(args.host, args.port)
    # tabs run the model in lanes of whole cores (streaming/model_turns.py): never more threads than cores
    thread_choice, lanes = use_serve_threads(args.threads, args.max_sessions)
    print(f"potwatch: {thread_choice.describe()}", file=sys.stderr, flush=True)
    print(f"potwatch: loading model {args.model} ...", file=sys.stderr, flush=True)
    from potwatch.models.registry import load_model

    adapter = load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    from potwatch.streaming.model_turns import model_turns

    model_turns(adapter).lanes = lanes
    if auto:
        settings = _auto_settings(adapter, settings, args.max_sessions)
    elif args.mem_cap is None:
        from dataclasses import replace

        from potwatch.app.ui.defaults import default_mem_cap

        settings = replace(settings, mem_cap=default_mem_cap(adapter, settings.fps, args.max_new_tokens, settings.policy))
        print(f"potwatch: each tab starts with a {settings.mem_cap} cap (--mem-cap sets another)", file=sys.stderr,
              flush=True)
    limits = memory_limits(args, settings.mem_cap)
    print(f"potwatch: {limits_line(limits, settings.mem_cap, args.max_sessions)}", file=sys.stderr, flush=True)
    pool = SessionPool(adapter, max_sessions=args.max_sessions, settings=settings, max_new_tokens=args.max_new_tokens,
                       limits=limits)
    pool.check()
    from potwatch.app.ui.page import build_app, launch_options

    app = build_app(pool)
    try:
        app.launch(server_name=args.host, server_port=args.port, share=args.share, prevent_thread_lock=True,
                   quiet=True, **launch_options())
    except OSError as error:
        pool.close_all()
        raise UserError(f"Port {args.port} on {args.host} is taken or cannot be bound; pick another with --port or --host.") from error
    print(f"potwatch: serving {args.model} at {app.local_url} (Ctrl-C stops)", file=sys.stderr, flush=True)
    if args.share and app.share_url:
        print(f"potwatch: public share link {app.share_url}", file=sys.stderr, flush=True)
    try:
        while app.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("potwatch: stopping", file=sys.stderr, flush=True)
    finally:
        app.close()
        pool.close_all()
    return 0
