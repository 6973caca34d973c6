"""One `StreamSession` per browser tab, held in a bounded pool that shares the server's one model.

A `TabSession` wraps the session with what the page shows: a snapshot of the stats and of the
retention (taken by the thread that feeds, so the page's timer never waits on the model), a bounded
history for the memory plot, the current frame, and the source that is running (webcam or file; one
at a time)."""

from __future__ import annotations

import ctypes
import gc
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from potwatch.compression.mem_cap import format_bytes, parse_optional_mem_cap
from potwatch.errors import DeviceMemoryError, UserError
from potwatch.streaming.answer import Answer
from potwatch.streaming.change_filter import DEFAULT_CHANGE_THRESHOLD
from potwatch.streaming.session import StreamSession
from potwatch.streaming.settings import StreamSettings
from potwatch.streaming.sources import Frame

from potwatch.app.ui.budget import MemoryBudget, MemoryLimits, cache_bytes
from potwatch.app.ui.caps import cap_words, check_cap_fits, full_detail_frames
from potwatch.app.ui.player import PacedFile, PushSource, SourceRunner

log = logging.getLogger(__name__)

HISTORY_SAMPLES = 3000  # memory-plot points kept per tab (25 minutes at 2 fps); older ones scroll out
OPEN_WAIT_S = 1.0  # how often a request waiting for its tab's session being made looks again
RETENTION_EVERY_S = 0.5  # the retention snapshot is refreshed at most this often while frames flow
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".ogv", ".wmv", ".flv", ".ts", ".y4m")


def give_memory_back() -> None:
    """Collect what a closed tab left (its figures and frames are in reference cycles) and hand the freed
    heap back to the system (glibc keeps freed memory for the process otherwise, so RSS would only grow)."""
    gc.collect()
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim  # glibc (Linux) only
    except (OSError, AttributeError):
        return
    trim(0)


class PoolFullError(UserError):
    """Every session slot of the server is taken."""


class TabClosedError(PoolFullError):
    """The tab closed while its session was being made; handled like a full pool: no session for it."""


class BudgetFullError(PoolFullError):
    """The memory budget has no room for another tab's cache now; handled like a full pool: the page
    gets its session by itself once other tabs free memory."""


class _Opening:
    """A tab whose session is being made: other requests of that tab wait on `done`."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.closed = False  # the tab went away meanwhile


def cap_value(text: str | int | None) -> int | None:
    """A cap as typed ('400kB', 'none') in bytes, as StreamSession takes it: None means no cap."""
    return parse_optional_mem_cap(text)


@dataclass(frozen=True)
class TabSettings:
    """Per-session settings; they apply on reset. ingest: "all" sends every visual token to the model,
    "changed" only those that changed by more than `change_threshold` (streaming/change_filter.py)."""

    mem_cap: str = "1GB"
    policy: str = "tar_van"
    fps: float = 2.0
    kv_bits: int = 16
    ingest: str = "all"
    change_threshold: float = DEFAULT_CHANGE_THRESHOLD

    def checked(self) -> "TabSettings":
        """The same settings, or a UserError that says what to fix (`error.setting` names the field). The
        page's own limits first (a cap typed, at most 30 frames a second), then the stream's (`for_session`)."""
        mem_cap = str(self.mem_cap or "").strip()
        if not mem_cap:
            raise _on("mem_cap", UserError("The memory cap is empty; type a size such as 400kB or 1GB, or 'none'."))
        try:
            fps = float(self.fps)
        except (TypeError, ValueError):
            fps = float("nan")
        if not (0 < fps <= 30):
            raise _on("fps", UserError(f"The frame rate {self.fps!r} is not between 0 and 30 frames a second; try 2."))
        settings = replace(self, mem_cap=mem_cap, fps=fps)
        checked = settings.for_session()
        return replace(settings, kv_bits=checked.kv_bits, ingest=checked.ingest,
                       change_threshold=checked.change_threshold)

    def for_session(self, max_new_tokens: int = 48) -> StreamSettings:
        """These settings as a session takes them, checked ('auto' is refused: a tab's cap is a size)."""
        return StreamSettings.from_user(mem_cap=self.mem_cap, policy=self.policy, fps=self.fps, kv_bits=self.kv_bits,
                                        max_new_tokens=max_new_tokens, auto_allowed=False, ingest=self.ingest,
                                        change_threshold=self.change_threshold)


def _on(setting: str, error: UserError) -> UserError:
    """`error`, named as concerning `setting` (as streaming/settings.py names its own)."""
    error.setting, error.rule = setting, "value"
    return error


@dataclass(frozen=True)
class MemorySample:
    """One point of the memory plot."""

    frames_seen: int
    cache_bytes: int
    cap_bytes: int | None
    compressions: int


class TabSession:
    """One browser tab's session and everything its page shows."""

    def __init__(self, key: str, session: StreamSession, settings: TabSettings,
                 budget: MemoryBudget | None = None) -> None:
        self.key = key
        self.session = session
        self.settings = settings
        self.budget = budget or MemoryBudget()  # the server's, shared by every tab; none: no limits
        self.history: deque[MemorySample] = deque(maxlen=HISTORY_SAMPLES)
        self.stats: dict = {}
        self.retention: dict[int, float] = {}
        self.current_frame: np.ndarray | None = None
        self.runner: SourceRunner | None = None
        self.video_path: Path | None = None
        self.video_name: str | None = None
        self.video_size: tuple[int, int] | None = None  # (height, width) of the chosen video's frames
        self.fed_kind: str | None = None  # 'file' or 'webcam': what the stream in the cache came from
        self.missed_before = 0  # camera instants missed by webcam runs since stopped (see `missed_frames`)
        self.webcam_paused = False
        self.notice: str | None = None  # the last thing the user should know (an error, a refusal)
        self.video_notice: str | None = None  # a refused upload; gone once a video plays or the webcam is watched
        self.version = 0  # goes up whenever what the page shows changes
        self.rendered: dict[str, object] = {}  # what the page last got, per output, to skip repeats
        self.render_lock = threading.Lock()  # one refresh of this tab's outputs at a time
        self.narrow = False  # the page is on a phone: plots are drawn for its width
        self.resend = 0  # ticks that send the status and buttons even unchanged (after a click; see handlers)
        self.cap_line = ""  # what the cap holds, in words (snapshot)
        self.full_detail: int | None = None  # frames the cap holds at full detail (snapshot)
        self.answering = False
        self.chat: list[dict] = []  # the chat as the page shows it (messages format)
        self._control = threading.Lock()  # one source switch at a time
        self._retention_at = 0.0
        self.record(retention=True)

    # --- what the page shows -------------------------------------------------------------------
    def record(self, retention: bool = False) -> None:
        """Snapshot the stats, what the cap holds (and, at most every RETENTION_EVERY_S, the retention) for
        the page, under the session's lock: a reset on another thread swaps the cache, and a snapshot
        taken meanwhile would read a cache that is gone."""
        with self.session._lock:
            if self.session.closed:
                return
            stats = self.session.stats()
            self.full_detail = full_detail_frames(self.session, self.video_size)
            self.cap_line = cap_words(self.session, self.video_size)
        self.stats = stats
        sample = MemorySample(stats["frames_seen"], stats["cache_bytes"], stats["cap_bytes"], stats["compressions"])
        if not self.history or self.history[-1] != sample:
            self.history.append(sample)
        now = time.monotonic()
        if retention or now - self._retention_at >= RETENTION_EVERY_S:
            self.retention = self.session.retention()
            self._retention_at = now
        self.version += 1

    def feed(self, frame: Frame) -> None:
        """Called on the runner's thread for every frame it feeds."""
        self.session.feed(frame)
        self.current_frame = frame.rgb
        self.record()

    # --- sources -------------------------------------------------------------------------------
    @property
    def source_kind(self) -> str | None:
        """'webcam' or 'file' while a source is attached (running or paused), else None."""
        runner = self.runner
        return runner.kind if runner is not None and not runner.finished else None

    def _stop_runner(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            runner.stop()
            self.missed_before += getattr(runner.source, "missed", 0)
            self._finish_note(runner)
            self.version += 1

    def _finish_note(self, runner: SourceRunner) -> None:
        if runner.error:
            self.notice = runner.error

    def _start(self, source: PacedFile | PushSource) -> SourceRunner:
        self.video_notice = None  # a video plays (or the webcam is watched): an old refusal is stale
        self.fed_kind = source.kind
        self.runner = SourceRunner(source, self.session, self.feed, on_finish=lambda: self.record(retention=True))
        self.runner.start()
        self.version += 1
        return self.runner

    def offer_webcam(self, rgb: np.ndarray) -> None:
        """A frame from the browser camera: fed at the session's fps unless paused or a file plays."""
        if rgb is None or self.webcam_paused:
            return
        with self._control:
            if self.source_kind == "file":
                self.notice = "A video file is playing; stop it to watch the webcam."
                return
            runner = self.runner
            if runner is None or runner.kind != "webcam" or runner.finished:
                if runner is not None:
                    self._finish_note(runner)
                if self.fed_kind == "file" and self.session.frames_seen:
                    try:
                        self._fresh_stream()  # the camera after a video: its own memory, never a mix of the two
                    except UserError as error:  # the device had no room for the fresh cache: said, not raised
                        self.notice = str(error)
                        return
                runner = self._start(PushSource(self.session.fps))
            runner.source.offer(np.asarray(rgb))

    def set_webcam_paused(self, paused: bool) -> None:
        self.webcam_paused = paused
        if paused:
            with self._control:
                if self.source_kind == "webcam":
                    self._stop_runner()
        self.version += 1

    def choose_video(self, path: str | Path, name: str | None = None) -> None:
        """Pick the file the file tab plays; only video files are accepted."""
        path = Path(path)
        shown = name or path.name
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise UserError(f"'{shown}' is not a video file; upload an mp4, mkv, webm, mov or avi file.")
        opened = PacedFile(path, fps=self.session.fps)  # opens it now, so a broken file is refused at once
        with self._control:
            if self.source_kind != "webcam" and self.session.frames_seen:
                self._fresh_stream()  # a new video starts a fresh memory (the settings kept), never a mix
            elif self.runner is not None and self.runner.kind == "file":
                self._stop_runner()
            self.video_path, self.video_name = path, shown
            self.video_size = (opened.source.height, opened.source.width)
            self.notice = None
            self.record()

    def play(self) -> None:
        """Start the chosen file, or resume it when paused; a running webcam feed stops."""
        with self._control:
            runner = self.runner
            if runner is not None and runner.kind == "file" and not runner.finished:
                runner.source.resume()
                self.version += 1
                return
            if self.video_path is None:
                raise UserError("No video is chosen; upload a video file or pick the demo video first.")
            self._stop_runner()
            if self.session.frames_seen:
                self._fresh_stream()  # Start plays the video from its start into a fresh memory, never a mix
            self.notice = None
            self._start(PacedFile(self.video_path, fps=self.session.fps))

    def pause(self) -> None:
        with self._control:
            runner = self.runner
            if runner is not None and runner.kind == "file" and not runner.finished:
                runner.source.pause()
                self.record(retention=True)  # the page's counts settle on what the cache holds now

    def stop(self) -> None:
        """Stop the file (the cache keeps what it saw; questions still work)."""
        with self._control:
            if self.runner is not None and self.runner.kind == "file":
                self._stop_runner()

    # --- questions -----------------------------------------------------------------------------
    def ask(self, question: str) -> Iterator[str | Answer]:
        """The answer's text pieces, then the Answer.

        The session's generator runs start to end on one thread of its own (its lock must be released
        by the thread that took it, and a closed browser tab must not leave it half-run); the pieces
        are relayed from there."""
        pieces: queue.Queue = queue.Queue()
        done = object()

        def work() -> None:
            try:
                for piece in self.session.ask_stream(question):
                    pieces.put(piece)
                self.record(retention=True)
            except BaseException as error:  # noqa: BLE001 - re-raised on the caller's thread
                pieces.put(error)
            finally:
                pieces.put(done)

        self.answering = True
        threading.Thread(target=work, name="potwatch-answer", daemon=True).start()
        try:
            while True:
                item = pieces.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.answering = False

    # --- settings and life ---------------------------------------------------------------------
    def apply(self, settings: TabSettings) -> None:
        """Stop the source, forget the stream and the dialogue, and take the new settings. A cap the
        server does not allow (above its ceiling, 'none', beyond its memory budget) changes nothing."""
        settings = settings.checked()
        cap = cap_value(settings.mem_cap)
        self.budget.check_cap(cap, typed=settings.mem_cap)
        check_cap_fits(self.session, settings.for_session(self.session.max_new_tokens), self.frame_size(),
                       settings.mem_cap)  # before anything stops: a refused cap changes nothing
        with self._control, self.budget.resizing(self.key, cap):
            watching = self.source_kind == "webcam"
            self._stop_runner()
            try:
                self.session.reset(mem_cap=cap, policy=settings.policy, fps=settings.fps, kv_bits=settings.kv_bits,
                                   ingest=settings.ingest, change_threshold=settings.change_threshold)
            except UserError as error:
                if isinstance(error, DeviceMemoryError) and not self.session.closed:
                    self._forget_stream()  # the session started afresh at its old settings: so does the page
                if watching and not self.session.closed:  # the camera is watched on, as the session now is
                    self._start(PushSource(self.session.fps))
                raise
            self.settings = settings
            self._forget_stream()
            if watching:  # the browser still streams its camera: watch it on, under the new settings
                self._start(PushSource(self.session.fps))

    def frame_size(self) -> tuple[int, int] | None:
        """(height, width) of the frames a cap must hold: the stream's, else the chosen video's (None: unknown)."""
        return self.session.frame_size or self.video_size

    def _fresh_stream(self) -> None:
        """Forget the stream and the dialogue under the same settings (the caller holds `_control`); the
        chat on the page stays, as a record of what was asked."""
        self._stop_runner()
        self.session.frame_size = None  # as a new session's: the next source's frames set it
        with self.budget.resizing(self.key, cap_value(self.settings.mem_cap)):
            self.session.reset()
        self.fed_kind = None
        self.missed_before = 0
        self.history.clear()
        self.current_frame = None
        self.notice = None
        self.record(retention=True)

    def missed_frames(self) -> int:
        """Camera instants no frame came for (the browser sent fewer than fps), in this stream."""
        runner = self.runner
        live = getattr(runner.source, "missed", 0) if runner is not None else 0
        return self.missed_before + live

    def _forget_stream(self) -> None:
        self.history.clear()
        self.current_frame = None
        self.notice = None
        self.chat.clear()
        self.rendered.clear()
        self.fed_kind = None
        self.missed_before = 0
        self.record(retention=True)

    def played_through(self, path: Path) -> bool:
        """True when the last source was the video at `path`, played to its end (nothing fed since)."""
        runner = self.runner
        return (runner is not None and runner.kind == "file" and runner.played_through
                and Path(runner.source.path) == Path(path))

    def close(self) -> None:
        with self._control:
            self._stop_runner()
            self.session.close()


class SessionPool:
    """The server's sessions, one per browser tab, at most `max_sessions` at once, all on one model."""

    def __init__(self, adapter, max_sessions: int = 4, settings: TabSettings | None = None,
                 max_new_tokens: int = 48, limits: MemoryLimits | None = None) -> None:
        """limits: the memory budget and the per-tab ceiling (`potwatch serve` always gives them; none:
        no limits, as for tests and programs that make their own pool)."""
        if max_sessions < 1:
            raise UserError(f"--max-sessions {max_sessions} allows no session; give 1 or more.")
        self.adapter = adapter
        self.max_sessions = max_sessions
        self.settings = (settings or TabSettings()).checked()
        self.max_new_tokens = max_new_tokens
        self.budget = MemoryBudget(limits)
        self._tabs: dict[str, TabSession] = {}
        self._opening: dict[str, _Opening] = {}  # tabs whose session is being made
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tabs)

    def new_session(self, settings: TabSettings) -> StreamSession:
        return StreamSession(self.adapter, settings=settings.for_session(self.max_new_tokens))

    def check(self) -> None:
        """Build and free one session with the server's settings, so a cap too small fails at start-up."""
        self.new_session(self.settings).close()

    def get(self, key: str) -> TabSession | None:
        return self._tabs.get(key)

    def tabs(self) -> list[TabSession]:
        """The open tabs, now."""
        with self._lock:
            return list(self._tabs.values())

    def open(self, key: str) -> TabSession:
        """This tab's session, made now if it has none; PoolFullError when every slot is taken.

        A page fires several events at once when it loads; they all get the one session the first
        of them makes (the others wait for it), and a tab takes one slot however many ask."""
        while True:
            with self._lock:
                if key in self._tabs:
                    return self._tabs[key]
                pending = self._opening.get(key)
                if pending is None:
                    if len(self._tabs) + len(self._opening) >= self.max_sessions:
                        limit = f"{self.max_sessions} tab{'' if self.max_sessions == 1 else 's'}"
                        raise PoolFullError(
                            f"This server already watches for as many tabs as it may ({limit} at once); this "
                            "page gets its own session by itself as soon as another tab closes."
                        )
                    self._reserve(key)
                    pending = self._opening[key] = _Opening()
                    break
            pending.done.wait(OPEN_WAIT_S)  # the same tab's first request is making the session
            if pending.closed:
                raise TabClosedError("This page was closed; reload it to start a session.")
        try:  # the cache is allocated outside the pool's lock: other tabs need not wait for it
            tab = TabSession(key, self.new_session(self.settings), self.settings, self.budget)
            self.budget.track(key, cache_bytes(tab.session))
        except BaseException:
            self.budget.release(key)
            with self._lock:
                del self._opening[key]
            pending.done.set()
            raise
        with self._lock:
            del self._opening[key]
            if not pending.closed:
                self._tabs[key] = tab
        pending.done.set()
        if pending.closed:  # the tab went away while its session was made: free it at once
            tab.close()
            self.budget.release(key)
            raise TabClosedError("This page was closed; reload it to start a session.")
        log.info("session %s opened (%d of %d)", key, len(self._tabs), self.max_sessions)
        return tab

    def close(self, key: str) -> bool:
        with self._lock:
            tab = self._tabs.pop(key, None)
            if tab is None and key in self._opening:
                self._opening[key].closed = True  # freed as soon as it is made
        if tab is None:
            return False
        tab.close()
        self.budget.release(key)
        log.info("session %s closed (%d of %d)", key, len(self._tabs), self.max_sessions)
        return True

    def _reserve(self, key: str) -> None:
        """Reserve a new tab's starting cap in the budget (under the pool's lock); BudgetFullError if it has no room."""
        cap = cap_value(self.settings.mem_cap)
        left = self.budget.reserve_new(key, cap)
        if left is not None:
            budget = format_bytes(self.budget.limits.budget)
            raise BudgetFullError(
                f"This server's memory budget ({budget} for all tabs' caches) has {format_bytes(left)} left, too little "
                f"for another tab's {format_bytes(cap)} cache; this page waits and gets its own session by itself as "
                "soon as other tabs free memory (close or lower their caps)."
            )

    def close_all(self) -> None:
        for key in list(self._tabs):
            self.close(key)
