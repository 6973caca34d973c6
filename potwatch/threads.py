"""Torch's CPU threads, chosen to fit the machine potwatch really runs on.

torch starts one thread per CPU it may run on, and after every operator they wait for each other. On a
busy machine that wait is the cost: when another program holds a core, one of torch's threads sits in
the run queue while the others spin waiting for it, and each frame takes 20-30 times as long (measured:
26 ms/frame quiet, 752 ms/frame beside one CPU-bound process, on 2 cores; see
benchmarks/reference/busy_machine.md). So potwatch

- counts the cores it may really use: its CPU affinity and its cgroup CPU quota, not `os.cpu_count()`
  (a container given 2 CPUs of a 64-core host sees 64);
- leaves one of them to the rest of the machine (the browser, the camera pipeline, the video decoder),
  so one busy neighbour costs a core, not a barrier per operator: threads = usable cores − 1, at least 1;
- shares those threads among the sessions that run at once in one process (`serve`);
- asks OpenMP to sleep rather than spin while it waits (OMP_WAIT_POLICY=PASSIVE), which only works
  before torch is imported: the CLI does it first thing, a program can call `prefer_passive_wait()`.

torch.set_num_threads reaches the calling thread and every thread that has not yet run a torch
operator; a thread that already ran one keeps its count until it calls set_num_threads itself. So
`serve` chooses once, at start, before its worker threads exist (or each worker sets its own).

What a user says wins: `--threads N` (or `threads=N`), then OMP_NUM_THREADS / MKL_NUM_THREADS in the
environment; only when neither is given does potwatch choose. The commands choose; in the API a
program asks (`use_threads()`, or `StreamSession(threads="auto")`), since a library must not change a
process-wide setting the program may have made itself. Imports no torch at module level."""

from __future__ import annotations

import dataclasses
import os
import sys

from potwatch.cgroup import cpu_quota
from potwatch.errors import UserError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
WAIT_VARIABLE = "OMP_WAIT_POLICY"


@dataclasses.dataclass(frozen=True)
class ThreadChoice:
    """How many threads torch's operators use (None: left as they were) and why, in words."""

    threads: int | None
    reason: str

    def describe(self) -> str:
        if self.threads is None:
            return f"threads: {self.reason}"
        return f"threads: {self.threads} ({self.reason})"


def affinity_cores() -> int:
    """CPUs this process may be scheduled on (taskset, cpuset); `os.cpu_count()` where that is unknown."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return max(os.cpu_count() or 1, 1)


def usable_cores(affinity: int | None = None, quota: float | None | object = ...) -> int:
    """Whole cores this process may really use: its affinity, cut to its cgroup CPU quota (rounded down:
    threads beyond a quota of 1.5 CPUs are throttled, not run), at least 1."""
    affinity = affinity_cores() if affinity is None else affinity
    quota = cpu_quota() if quota is ... else quota
    cores = affinity if quota is None else min(affinity, int(quota))
    return max(cores, 1)


def threads_for(cores: int, sessions: int = 1) -> int:
    """Threads for each of `sessions` sessions that run at once on `cores` usable cores: all but one core
    (left to the rest of the machine) shared evenly, at least 1 each. Pure, for tests and `serve`."""
    budget = max(cores - 1, 1)
    return max(budget // max(sessions, 1), 1)


def serve_lanes(cores: int, max_sessions: int, threads: int | None = None) -> tuple[int, int]:
    """(lanes, threads per lane) for `serve`: how many tabs may run the model at once, and torch's threads
    for each. Every lane gets whole cores, so the lanes never oversubscribe the machine: with `threads`
    given, as many lanes as the cores hold; else a lane per core up to `max_sessions`, the cores shared
    evenly. A lone lane leaves a core to the rest of the machine, as `watch` does. Pure, for tests."""
    cores, max_sessions = max(cores, 1), max(max_sessions, 1)
    if threads is not None:
        return max(1, min(max_sessions, cores // threads)), threads
    lanes = min(max_sessions, cores)
    return lanes, (threads_for(cores) if lanes == 1 else cores // lanes)


def check_threads(threads) -> int:
    """A positive whole number of threads, or a UserError saying how to write one."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"Threads {threads!r} is not a whole number of at least 1; give one like --threads 2.")
    return threads


def choose_threads(threads: int | None = None, sessions: int = 1, environ=None,
                   cores: int | None = None) -> ThreadChoice:
    """What potwatch would set, and why, without touching torch: `threads` if given; nothing when the
    environment sets OMP_NUM_THREADS or MKL_NUM_THREADS; else `threads_for(usable cores, sessions)`."""
    if threads is not None:
        count = check_threads(threads)
        return ThreadChoice(count, "as asked" + (f", for each of {sessions} sessions" if sessions > 1 else ""))
    told = _environment_choice(os.environ if environ is None else environ)
    if told is not None:
        return told
    affinity = affinity_cores()
    quota = cpu_quota()
    usable = usable_cores(affinity, quota) if cores is None else max(cores, 1)
    count = threads_for(usable, sessions)
    where = f"{usable} usable cores"
    if cores is None and quota is not None and int(quota) < affinity:
        where += f" (cgroup quota {quota:g} of {affinity} CPUs)"
    share = f", shared by {sessions} sessions at once" if sessions > 1 else ""
    spare = ", one left for the rest of the machine" if usable > 1 else ""
    return ThreadChoice(count, f"{where}{spare}{share}")


def _environment_choice(environ) -> ThreadChoice | None:
    for name in THREAD_VARIABLES:
        if environ.get(name, "").strip():
            return ThreadChoice(None, f"{name}={environ[name].strip()} is set, so torch's threads are left as it says")
    return None


def use_threads(threads: int | None = None, sessions: int = 1) -> ThreadChoice:
    """Choose (see `choose_threads`) and set torch's intra-op threads for this process. For the CLI,
    `serve` (sessions = sessions that may run at once) and programs that want potwatch's choice."""
    choice = choose_threads(threads, sessions)
    if choice.threads is not None:
        import torch

        torch.set_num_threads(choice.threads)
    return choice


def use_serve_threads(threads: int | None, max_sessions: int) -> tuple[ThreadChoice, int]:
    """Set torch's threads for `serve` and return them with the lanes (`serve_lanes`): how many tabs may
    run the model at once. OMP_NUM_THREADS / MKL_NUM_THREADS, when set and no --threads is given, still
    win, and then one tab runs the model at a time."""
    told = _environment_choice(os.environ) if threads is None else None
    if told is not None:
        return told, 1
    cores = usable_cores()
    lanes, count = serve_lanes(cores, max_sessions, check_threads(threads) if threads is not None else None)
    reason = "as asked" if threads is not None else f"{cores} usable cores"
    if lanes > 1:
        reason += f", for each of up to {lanes} tabs running the model at once; more take turns"
    else:
        reason += ", tabs take turns running the model"
    import torch

    torch.set_num_threads(count)
    return ThreadChoice(count, reason), lanes


def session_threads(threads: int | str | None = None) -> ThreadChoice:
    """What a new `StreamSession` does with its `threads` argument. None (the default) leaves torch's
    threads alone: a library does not change a process-wide setting unasked, and a program's own
    `torch.set_num_threads` cannot be told from torch's default. "auto" applies potwatch's choice for
    one session (OMP_NUM_THREADS / MKL_NUM_THREADS, when set, still win); an int sets them."""
    if threads is None:
        return ThreadChoice(None, "left as they were")
    if threads == "auto":
        return use_threads(None)
    if isinstance(threads, str):
        raise UserError(f"Threads {threads!r} is not a number of threads; give a whole number, 'auto' or None.")
    return use_threads(check_threads(threads))


def prefer_passive_wait(environ=None) -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE unless the user set a policy, so torch's threads sleep instead of
    spinning while they wait for each other. OpenMP reads it once, when torch loads it: this does
    nothing once torch is imported. Returns whether it set the variable."""
    environ = os.environ if environ is None else environ
    if environ.get(WAIT_VARIABLE, "").strip() or "torch" in sys.modules:
        return False
    environ[WAIT_VARIABLE] = "PASSIVE"
    return True
