"""The server's memory budget: every tab's KV cache together stays under `--mem-budget`, and no tab's cap
goes above `--max-session-cap` (nor to 'none') unless the operator allows any cap.

A cache is allocated whole when its session is made or reset, so the budget is kept by reserving a
cap's bytes *before* the cache is allocated and settling on what was really allocated
(`cache.nbytes`, never more than the cap) after. While a reset swaps caches a tab holds the larger
of its old and new reservations: the session frees the old cache before it allocates the new one,
and allocates the old one again if the new one fails. An uncapped cache (only with
`--allow-any-cap`) counts what it has grown to; nothing stops it growing, which the start-up line says."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from potwatch.compression.mem_cap import format_bytes
from potwatch.errors import UserError


class CapRefusedError(UserError):
    """A cap this server does not allow a tab: above the ceiling, 'none', or beyond what the budget has left."""


@dataclass(frozen=True)
class MemoryLimits:
    """budget: bytes for all tabs' caches together (None: no budget). ceiling: the largest cap one tab may
    have (None: any). allow_any_cap: any cap, or none, may be typed (the budget still holds capped caches)."""

    budget: int | None = None
    ceiling: int | None = None
    allow_any_cap: bool = False

    def describe(self) -> str:
        """The limits in words, for the page: what a visitor may type."""
        if self.allow_any_cap or self.ceiling is None:
            each = "any cap, or none,"
        else:
            each = f"a cap of at most {format_bytes(self.ceiling)}"
        budget = "" if self.budget is None else f"; all tabs' caches together stay within {format_bytes(self.budget)}"
        return f"This server allows each tab {each}{budget}."


class MemoryBudget:
    """What each tab's cache reserves of the budget, by tab key. Thread-safe."""

    def __init__(self, limits: MemoryLimits | None = None) -> None:
        self.limits = limits or MemoryLimits()
        self._reserved: dict[str, int] = {}
        self._measure: dict[str, Callable[[], int]] = {}  # a tab's cache bytes now (an uncapped cache grows)
        self._lock = threading.Lock()

    # --- what a visitor may type -----------------------------------------------------------------
    def check_cap(self, cap: int | None, typed: str | None = None) -> None:
        """A CapRefusedError, in the page's words, for a cap above the ceiling or 'none'; the cap is echoed
        as the visitor `typed` it ('1TB', not '1000.00 GB')."""
        limits = self.limits
        if limits.allow_any_cap or limits.ceiling is None:
            return
        most = format_bytes(limits.ceiling)
        if cap is None:
            raise CapRefusedError(f"This server does not run a tab without a memory cap; type a cap of at most {most}.")
        if cap > limits.ceiling:
            raise CapRefusedError(
                f"This server allows each tab a memory cap of at most {most}, not {typed or format_bytes(cap)}; type {most} "
                "or less.")

    # --- the budget ------------------------------------------------------------------------------
    def used(self, leaving_out: str | None = None) -> int:
        """Bytes the tabs' caches hold or have reserved now (all tabs, or all but `leaving_out`)."""
        with self._lock:
            return self._used(leaving_out)

    def _used(self, leaving_out: str | None) -> int:
        return sum(max(reserved, self._measure[key]()) for key, reserved in self._reserved.items() if key != leaving_out)

    def _room_for(self, key: str, cap: int | None) -> int | None:
        """None when `cap` fits beside the other tabs' caches, else the bytes the others leave."""
        if self.limits.budget is None or cap is None:
            return None
        left = self.limits.budget - self._used(leaving_out=key)
        return None if cap <= left else max(left, 0)

    def reserve_new(self, key: str, cap: int | None) -> int | None:
        """Reserve a new tab's cache before it is made: None when done, else the bytes the other tabs
        leave (nothing reserved). `track` it once made, or `release` it if making it failed."""
        with self._lock:
            short = self._room_for(key, cap)
            if short is None:
                self._reserved[key] = cap or 0
                self._measure[key] = _nothing
            return short

    def track(self, key: str, measure: Callable[[], int]) -> None:
        """The tab's cache is made: from now on its reservation is what `measure` says it holds."""
        with self._lock:
            self._measure[key] = measure
            self._reserved[key] = measure()

    @contextmanager
    def resizing(self, key: str, cap: int | None) -> Iterator[None]:
        """Around a reset of tab `key` to `cap`: refuses (CapRefusedError) a cap the budget cannot hold
        beside the other tabs; holds the larger reservation while the caches swap; settles on what the
        tab's cache really holds afterwards, whatever happened."""
        with self._lock:
            short = self._room_for(key, cap)
            if short is not None:
                others = self.limits.budget - short
                raise CapRefusedError(
                    f"The other tabs' caches take {format_bytes(others)} of this server's {format_bytes(self.limits.budget)} "
                    f"memory budget, so this tab's cap can be at most {format_bytes(short)} now; type a smaller cap, "
                    "or try again when other tabs close.")
            self._reserved[key] = max(self._reserved.get(key, 0), cap or 0)
        try:
            yield
        finally:
            self.settle(key)

    def settle(self, key: str) -> None:
        """The tab's reservation becomes what its cache really holds now."""
        with self._lock:
            if key in self._reserved:
                self._reserved[key] = self._measure[key]()

    def release(self, key: str) -> None:
        with self._lock:
            self._reserved.pop(key, None)
            self._measure.pop(key, None)


def _nothing() -> int:
    return 0


def cache_bytes(session) -> Callable[[], int]:
    """A function giving the bytes `session`'s cache has allocated now (0 while a reset swaps caches, or closed)."""
    def measure() -> int:
        cache = session.cache
        return 0 if cache is None else cache.nbytes
    return measure
