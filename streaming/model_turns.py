"""Sessions that share one model take turns with it, so their forwards never run at once.

Each forward already uses every thread torch was given; two at once (two browser tabs streaming, a
question beside a stream) would ask for twice the cores there are, and on a CPU that is 20-30 times
slower than running them one after the other. So the model work of all sessions on one adapter - a
block of frames (vision tower, compression and language model) or a whole answer - runs one turn at
a time, the turns in the order they were asked for, except that an answer goes before every block
still waiting: a question waits at most for the turn running now (one block, or an answer asked
earlier), never behind a queue of frames. Frames that wait meanwhile are thinned and counted by the
session's ingester as on any slow machine. A thread already holding the turn enters again freely (an
answer first ingests the frames still pending).

`lanes` lets that many turns run at once, for a server that splits the cores among them (`serve` gives
each lane whole cores: `potwatch/threads.py`'s `serve_lanes`); one lane, the default, is one turn at a
time."""

from __future__ import annotations

import heapq
import itertools
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

ANSWER, BLOCK = 0, 1  # the lower goes first


class ModelTurns:
    """The turns on one model: up to `lanes` at once, waiters served answers first, then first come first served."""

    def __init__(self, lanes: int = 1) -> None:
        self._changed = threading.Condition()
        self._holders: dict[int, int] = {}  # thread -> how deep it has entered its turn
        self._lanes = max(int(lanes), 1)
        self._waiting: list[tuple[int, int]] = []  # (kind, ticket), a heap
        self._tickets = itertools.count()

    @property
    def lanes(self) -> int:
        return self._lanes

    @lanes.setter
    def lanes(self, lanes: int) -> None:
        with self._changed:
            self._lanes = max(int(lanes), 1)
            self._changed.notify_all()

    @contextmanager
    def turn(self, kind: int) -> Iterator[None]:
        me = threading.get_ident()
        with self._changed:
            if me in self._holders:
                self._holders[me] += 1
            else:
                ticket = (kind, next(self._tickets))
                heapq.heappush(self._waiting, ticket)
                try:
                    while len(self._holders) >= self._lanes or self._waiting[0] != ticket:
                        self._changed.wait()
                except BaseException:  # Ctrl-C while waiting: give up the place in the queue
                    self._waiting.remove(ticket)
                    heapq.heapify(self._waiting)
                    self._changed.notify_all()
                    raise
                heapq.heappop(self._waiting)
                self._holders[me] = 1
                self._changed.notify_all()  # a free lane may be the next waiter's
        try:
            yield
        finally:
            with self._changed:
                self._holders[me] -= 1
                if self._holders[me] == 0:
                    del self._holders[me]
                    self._changed.notify_all()

    @property
    def waiting(self) -> int:
        """Turns asked for and not yet given (for tests and displays)."""
        with self._changed:
            return len(self._waiting)


_TURNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TURNS_LOCK = threading.Lock()


def model_turns(adapter) -> ModelTurns:
    """The one ModelTurns of `adapter`, shared by every session on it."""
    with _TURNS_LOCK:
        turns = _TURNS.get(adapter)
        if turns is None:
            turns = _TURNS[adapter] = ModelTurns()
        return turns
