"""Feeds a live source into a session through a bounded queue, so a slow model never makes memory grow.

A reader thread pulls frames from the source at the source's own pace; the caller's thread feeds them
to the session. When frames arrive faster than the model takes them, the queue (at most
`queue_frames` frames) keeps the newest frame and thins the backlog evenly in time (the rule is in
`thinning_queue.py`); every dropped frame is counted in `dropped` and in the session's stats."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from potwatch.streaming.thinning_queue import ThinningQueue

QUEUE_FRAMES = 8


class Ingester:
    def __init__(self, source: Iterable, session, queue_frames: int = QUEUE_FRAMES):
        self.source = source
        self.session = session
        self.queue: ThinningQueue = ThinningQueue(queue_frames)
        self.queue_frames = queue_frames
        self.error: BaseException | None = None
        self._ready = threading.Condition()
        self._done = False
        self._stop = threading.Event()

    def _read(self) -> None:
        try:
            for frame in self.source:
                if self._stop.is_set():
                    break
                with self._ready:
                    dropped = self.queue.push(frame)
                    self._ready.notify()
                if dropped:  # outside the queue's lock: the consumer may be waiting for it
                    self.session.note_dropped(1)
        except BaseException as error:  # noqa: BLE001 - handed to the consuming thread
            self.error = error
        finally:
            with self._ready:
                self._done = True
                self._ready.notify()

    def frames(self) -> Iterator:
        """Frames in arrival order, minus the dropped ones; ends when the source does."""
        reader = threading.Thread(target=self._read, name="potwatch-reader", daemon=True)
        reader.start()
        try:
            while True:
                with self._ready:
                    while not self.queue and not self._done:
                        self._ready.wait(0.1)
                    if not self.queue and self._done:
                        break
                    frame = self.queue.pop()
                yield frame
        finally:
            self._stop.set()
        if self.error is not None:
            raise self.error

    @property
    def dropped(self) -> int:
        """Frames dropped so far because the model was behind."""
        return self.queue.dropped

    def stop(self) -> None:
        self._stop.set()
