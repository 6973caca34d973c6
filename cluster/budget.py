"""A stream host's byte budget: the KV caches of the streams it holds together never exceed it.

As in `serve --mem-budget` (app/ui/budget.py), a cache is allocated whole when its session is made, so a
stream reserves its cap *before* the session is made and settles on what was really allocated (never
more than the cap) after; a session that fails to be made gives its reservation back. Thread-safe."""

from __future__ import annotations

import threading

from potwatch.compression.mem_cap import format_bytes


class HostBudget:
    """Bytes reserved by each stream on one host, under `budget` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = int(budget)
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def used(self) -> int:
        with self._lock:
            return sum(self._held.values())

    def room(self) -> int:
        return self.budget - self.used()

    def reserve(self, key: str, cap: int) -> str | None:
        """Reserve `cap` bytes for stream `key`: None when done, else the sentence saying why not."""
        with self._lock:
            left = self.budget - sum(self._held.values())
            if cap > left:
                return (f"this host's streams take {format_bytes(self.budget - left)} of its "
                        f"{format_bytes(self.budget)} budget, leaving {format_bytes(max(left, 0))}, less than the "
                        f"{format_bytes(cap)} cap asked for")
            self._held[key] = int(cap)
            return None

    def settle(self, key: str, nbytes: int) -> None:
        """The stream's session is made: it holds what its cache allocated (at most its cap)."""
        with self._lock:
            if key in self._held:
                self._held[key] = min(int(nbytes), self._held[key])

    def release(self, key: str) -> None:
        with self._lock:
            self._held.pop(key, None)

    def held(self) -> dict[str, int]:
        with self._lock:
            return dict(self._held)
