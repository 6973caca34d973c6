"""Finds lists, dicts, sets and deques reachable from an object that keep growing, for the soak.

A long stream must not make any container in the session grow without bound. `ContainerWatch`
walks the potwatch objects reachable from a root (the session, its cache, monitor, policy, adapter,
the UI's per-tab wrapper), notes the length of every container it meets at each checkpoint, and
calls one "growing" when its largest size went up from each quarter of the run to the next.
A deque with a `maxlen` is bounded by construction and only reported."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

CONTAINERS = (list, dict, set, deque)
SKIPPED = (torch.Tensor, np.ndarray, torch.nn.Module, str, bytes, int, float, bool, type(None), type,
           threading.Thread, type(threading.Lock()), type(threading.RLock()), threading.Event, threading.Condition)


def container_sizes(root: object, max_depth: int = 8) -> dict[str, tuple[int, int | None]]:
    """{path: (length, maxlen or None)} of every container reachable from `root` through attributes
    of potwatch objects (and of the root) and values of dicts (elements of lists and deques are not
    entered; torch modules, tensors and arrays neither: their size is fixed by the model and the cap)."""
    sizes: dict[str, tuple[int, int | None]] = {}
    seen: set[int] = set()

    def visit(obj: object, path: str, depth: int) -> None:
        if depth > max_depth or isinstance(obj, SKIPPED) or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, CONTAINERS):
            sizes[path] = (len(obj), getattr(obj, "maxlen", None))
            if isinstance(obj, dict):
                for key, value in list(obj.items())[:64]:
                    visit(value, f"{path}[{key!r}]", depth + 1)
            return
        if (depth == 0 or type(obj).__module__.startswith("potwatch")) and hasattr(obj, "__dict__"):
            for name, value in list(vars(obj).items()):
                visit(value, f"{path}.{name}", depth + 1)

    visit(root, type(root).__name__, 0)
    return sizes


@dataclass
class ContainerWatch:
    """Container sizes over a run, checked at increasing progress points in [0, 1]."""

    root: object
    samples: list[tuple[float, dict[str, tuple[int, int | None]]]] = field(default_factory=list)
    # containers bounded by something other than a maxlen, e.g. the frames the capped cache holds: a
    # path here is "growing" only when it passes its bound
    bounds: dict[str, int] = field(default_factory=dict)

    def check(self, progress: float) -> None:
        self.samples.append((progress, container_sizes(self.root)))

    def quarter_max(self, path: str) -> list[int]:
        """Largest size of `path` in each quarter of the run (-1 where it was never seen)."""
        out = [-1] * 4
        for progress, sizes in self.samples:
            if path in sizes:
                quarter = min(int(progress * 4), 3)
                out[quarter] = max(out[quarter], sizes[path][0])
        return out

    def growing(self) -> list[str]:
        """Unbounded-looking containers: no maxlen, and a new largest size in each of quarters 2, 3 and 4
        (a container that changes with the content, like the frames held, peaks early and stays)."""
        if not self.samples:
            return []
        last = self.samples[-1][1]
        found = []
        for path, (_, maxlen) in last.items():
            if maxlen is not None:
                continue
            if path in self.bounds:
                largest = max(self.quarter_max(path))
                if largest > self.bounds[path]:
                    found.append(f"{path}: {largest} entries, over its bound of {self.bounds[path]}")
                continue
            q = self.quarter_max(path)
            if q[1] >= 0 and q[0] < q[1] < q[2] < q[3]:
                found.append(f"{path}: largest size per quarter {q}")
        return found

    def largest(self, count: int = 5) -> list[str]:
        """The biggest containers at the end, for the report."""
        last = self.samples[-1][1] if self.samples else {}
        ranked = sorted(last.items(), key=lambda item: -item[1][0])[:count]
        return [f"{path}={length}" + (f" (maxlen {maxlen})" if maxlen else "") for path, (length, maxlen) in ranked]
