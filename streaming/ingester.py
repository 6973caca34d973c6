"""Feeds a live source into a session through a bounded queue, so a slow model never makes memory grow.

A reader thread pulls frames from the source at the source's own pace; the caller's thread feeds them
to the session. When the queue is full the oldest queued frame is dropped and counted: the model
always works on the newest frames, and the session's stats show how many were dropped."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator

QUEUE_FRAMES = 8


class Ingester:
    def __init__(self, source: Iterable, session, queue_frames: int = QUEUE_FRAMES):
        self.source = source
        self.session = session
        self.queue: deque = deque()
        self.queue_frames = queue_frames
        self.dropped = 0
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
                    if len(self.queue) >= self.queue_frames:
                        self.queue.popleft()
                        self.dropped += 1
                        self.session.note_dropped(1)
                    self.queue.append(frame)
                    self._ready.notify()
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
                    frame = self.queue.popleft()
                yield frame
        finally:
            self._stop.set()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop.set()
