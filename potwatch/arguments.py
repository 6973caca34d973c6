"""Command-line options that several commands share (`watch`, `serve`, `bench`), in one place that
imports nothing but argparse, so the commands need not import each other."""

from __future__ import annotations

import argparse


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """--threads for every command that runs the model (see potwatch/threads.py)."""
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads torch uses (default: the cores this process may use, less one left for the "
                             "rest of the machine; OMP_NUM_THREADS, when set, is kept)")


def add_trust_remote_code_argument(parser: argparse.ArgumentParser) -> None:
    """Off unless given: a checkpoint's own Python code would run with the user's rights."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a checkpoint run its own Python code from its folder or hub repository "
                             "(off by default; only for checkpoints you trust)")
