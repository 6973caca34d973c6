"""Server-side sources for the web UI: a video file played at its own pace (with pause), frames pushed
by the browser's webcam, and the thread that runs either one into a tab's session.

Both go through the `Ingester`, so a slow model gets the newest frame and an evenly thinned backlog
(the dropped frames are counted) instead of letting memory grow. Pausing a file stops its clock and its decoder: nothing queues up
while paused, and playing on resumes at the same frame."""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from potwatch.errors import UserError
from potwatch.streaming.ingester import Ingester
from potwatch.streaming.sources import FileSource, Frame

log = logging.getLogger(__name__)

PUSH_QUEUE_FRAMES = 16  # browser frames waiting for the reader thread; more are dropped and counted
CAMERA_GAP_S = 3.0  # a longer pause between camera frames is the camera stopped, not frames lost
_POLL_S = 0.1  # how often waiting threads look at pause/stop
_TIME_EPS = 1e-6


class PacedFile:
    """A video file decoded with PyAV and released at real-time pace on a clock that stops while paused.

    (FileSource's own realtime mode counts from the start of iteration, so after a pause it would
    release the paused stretch in one burst; this clock does not.)"""

    kind = "file"

    def __init__(self, path: str | Path, fps: float) -> None:
        self.source = FileSource(path, fps=fps, realtime=False)  # checks the file up front
        self.path = Path(path)
        self.fps = self.source.fps
        self.duration_s = self.source.duration_s
        self.expected_frames = self.source.expected_frames
        self.position_s = 0.0
        self._playing = threading.Event()
        self._playing.set()
        self._stopped = threading.Event()
        self._paused_total = 0.0

    @property
    def error(self) -> str | None:
        return self.source.error

    @property
    def paused(self) -> bool:
        return not self._playing.is_set()

    def pause(self) -> None:
        self._playing.clear()

    def resume(self) -> None:
        self._playing.set()

    def stop(self) -> None:
        self._stopped.set()
        self._playing.set()

    def _wait_while_paused(self) -> None:
        if self._playing.is_set():
            return
        started = time.monotonic()
        while not self._playing.wait(_POLL_S):
            pass
        self._paused_total += time.monotonic() - started

    def _wait_until(self, clock_start: float, time_s: float) -> bool:
        """Sleep until `time_s` on the play clock; False when stopped meanwhile."""
        while not self._stopped.is_set():
            self._wait_while_paused()
            if self._stopped.is_set():
                return False
            delay = clock_start + self._paused_total + time_s - time.monotonic()
            if delay <= 0:
                return True
            self._stopped.wait(min(delay, _POLL_S))
        return False

    def __iter__(self) -> Iterator[Frame]:
        clock_start = time.monotonic()
        self._paused_total = 0.0
        for frame in self.source:
            if not self._wait_until(clock_start, frame.time_s):
                return
            self.position_s = frame.time_s
            yield frame


class PushSource:
    """Frames handed in by a request handler (the browser webcam), sampled at `fps` by the wall clock
    and read by an Ingester's reader thread. `offer` never blocks the web server."""

    kind = "webcam"

    def __init__(self, fps: float, queue_frames: int = PUSH_QUEUE_FRAMES) -> None:
        self.fps = float(fps)
        self.error: str | None = None
        self.expected_frames: int | None = None
        self.dropped = 0  # frames the reader had no room for: the model was behind
        self.missed = 0  # sampling instants no frame came for: the browser sent fewer than `fps`
        self.position_s = 0.0  # stream time of the last frame taken
        self._last_taken_s: float | None = None
        self._queue: queue.Queue[Frame] = queue.Queue(maxsize=queue_frames)
        self._stopped = threading.Event()
        self._start: float | None = None
        self._next_instant = 0.0
        self._index = 0
        self.last_offer_at = time.monotonic()

    def offer(self, rgb: np.ndarray, now: float | None = None) -> bool:
        """Take a frame if a sampling instant k/fps has come; True when it was queued."""
        if self._stopped.is_set():
            return False
        now = time.monotonic() if now is None else now
        self.last_offer_at = now
        if self._start is None:
            self._start = now
        time_s = now - self._start
        if time_s + _TIME_EPS < self._next_instant:
            return False
        instant = math.floor(time_s * self.fps + _TIME_EPS)
        self._count_missed(instant, time_s)
        self._next_instant = (instant + 1) / self.fps
        self._last_taken_s = self.position_s = time_s
        try:
            self._queue.put_nowait(Frame(self._index, time_s, rgb))
        except queue.Full:
            self.dropped += 1
            return False
        self._index += 1
        return True

    def _count_missed(self, instant: int, time_s: float) -> None:
        """Count the sampling instants between the last frame taken and `instant` that no frame came for
        (a browser or network too busy to send `fps` frames); a gap over CAMERA_GAP_S is the camera
        stopped, which `activity` says instead."""
        if self._last_taken_s is None or time_s - self._last_taken_s > CAMERA_GAP_S:
            return
        expected = round(self._next_instant * self.fps)  # the instant after the last one taken
        self.missed += max(instant - expected, 0)

    def stop(self) -> None:
        self._stopped.set()

    def __iter__(self) -> Iterator[Frame]:
        while not self._stopped.is_set():
            try:
                yield self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue


class SourceRunner:
    """Runs one source into one session on a daemon thread, through the bounded Ingester queue.

    `feed` is called with each frame on this thread; a UserError it raises (a cap too small for the
    frame size, say) ends the run and is kept as `error`, a sentence for the status line."""

    def __init__(self, source: PacedFile | PushSource, session, feed: Callable[[Frame], None],
                 on_finish: Callable[[], None] | None = None) -> None:
        self.source = source
        self.session = session
        self.feed = feed
        self.on_finish = on_finish  # called on this thread once the run is over, however it ended
        self.ingester = Ingester(source, session)
        self.error: str | None = None
        self.frames_fed = 0
        self._drops_reported = 0
        self._missed_reported = 0
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"potwatch-{source.kind}", daemon=True)

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._finished.is_set()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    @property
    def played_through(self) -> bool:
        """The source ran to its end: not stopped, no error."""
        return self.finished and not self._stop.is_set() and self.error is None

    def start(self) -> "SourceRunner":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for frame in self.ingester.frames():
                if self._stop.is_set():
                    break
                self.feed(frame)
                self.frames_fed += 1
                self._report_drops()
        except UserError as error:
            self.error = str(error)
        except Exception as error:  # noqa: BLE001 - shown in the status line, logged with its traceback
            log.exception("feeding the %s failed", self.kind)
            self.error = f"Feeding the {self.kind} failed ({error}); reset the session to go on."
        finally:
            if self.error is None and self.source.error:
                self.error = self.source.error
            if self.on_finish is not None:
                try:
                    self.on_finish()
                except Exception:  # noqa: BLE001 - a display refresh must not hide how the run ended
                    log.exception("refreshing after the %s ended failed", self.kind)
            self._finished.set()

    def _report_drops(self) -> None:
        """Hand frames the push queue dropped, and camera instants no frame came for, to the session's count
        of dropped frames (here, off the web server's threads)."""
        dropped, missed = getattr(self.source, "dropped", 0), getattr(self.source, "missed", 0)
        new = dropped - self._drops_reported + missed - self._missed_reported
        if new > 0:
            self.session.note_dropped(new)
        self._drops_reported, self._missed_reported = dropped, missed

    def stop(self, wait_s: float = 5.0) -> None:
        """Stop reading and feeding; waits for a frame being fed to finish."""
        self._stop.set()
        self.ingester.stop()
        self.source.stop()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(wait_s)
