"""A stream host: one Ray actor that loads the model once and holds many streams' `StreamSession`s under
its byte budget, closing those left idle.

Every method answers a plain dict (cluster/replies.py). A host has a generation, new each time its actor
starts: a stream belongs to the generation that opened it, so after a restart (the process died and Ray
started it again, empty) a request for an older stream is answered "lost" (410) at once, without the
model. The model loads in a thread, so a restarted host answers those requests as soon as its process is
up; opening a stream waits for the model.

A stream's frames are taken in order: one push or question of a stream at a time (a lock per stream),
each push's stream times after the last; a request that cannot start within `push_wait_s` is refused as
busy (503) and changes nothing. Streams of one host take turns with the model (streaming/model_turns.py)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from potwatch.cluster import replies
from potwatch.cluster.budget import HostBudget
from potwatch.cluster.config import DIRECTORY, HOST_SETTINGS, NAMESPACE, ClusterConfig
from potwatch.cluster.frames import Sampler, TooLargeError, checked_times, decode_image, image_bytes
from potwatch.compression.mem_cap import format_bytes
from potwatch.errors import UserError

log = logging.getLogger(__name__)
GONE_KEPT = 10_000  # closed-for-idleness stream ids remembered, to say so (410) rather than "unknown" (404)
MODEL_WAIT_S = 600.0  # the longest an open waits for the host's model to load


@dataclass
class HostedStream:
    session: object
    sampler: Sampler
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)
    last_time_s: float | None = None  # the stream time of the last frame pushed
    taken_time_s: float | None = None  # the stream time of the last frame the session took
    frames_pushed: int = 0
    frames_between_samples: int = 0  # pushed between two sampling instants of the stream's fps: not taken


def open_settings() -> list[str]:
    """The settings a client may give a stream: every one `StreamSettings.from_user` takes (the cap,
    policy, bits, fps, ...) but those of the host (threads, dtype)."""
    import inspect

    from potwatch.streaming.settings import StreamSettings

    names = inspect.signature(StreamSettings.from_user).parameters
    return [name for name in names if name not in HOST_SETTINGS]


class StreamHost:
    """Streams on one share of the cluster (one GPU, or some CPU cores). Made a Ray actor by cluster/start.py."""

    def __init__(self, index: int, config: ClusterConfig) -> None:
        self.index = index
        self.config = config
        self.generation = uuid.uuid4().hex[:8]
        self.budget = HostBudget(config.budget)
        self.streams: dict[str, HostedStream] = {}
        self.gone: OrderedDict[str, str] = OrderedDict()
        self._streams_lock = threading.Lock()
        self._loaded = threading.Event()
        self._load_error: str | None = None
        self.adapter = None
        self._stop = threading.Event()
        self._tell_directory("host_started", index, self.generation)
        threading.Thread(target=self._load, name="potwatch-load", daemon=True).start()
        threading.Thread(target=self._reap_idle, name="potwatch-reaper", daemon=True).start()

    # --- start -------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            from potwatch.models.registry import load_model
            from potwatch.threads import use_threads

            use_threads(self.config.host_threads())
            self.adapter = load_model(self.config.model, dtype=self.config.dtype, device=self.config.device)
        except Exception as error:  # noqa: BLE001 - said to every open, and by `potwatch cluster` at start
            self._load_error = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
            log.exception("host %d could not load %s", self.index, self.config.model)
        finally:
            self._loaded.set()
        if self._load_error is None:
            self._tell_directory("host_ready", self.index, self.generation, self.budget.budget)

    def _tell_directory(self, method: str, *args) -> None:
        """A message to the directory that nothing waits for (it may be restarting itself)."""
        try:
            import ray

            getattr(ray.get_actor(DIRECTORY, namespace=NAMESPACE), method).remote(*args)
        except Exception:  # noqa: BLE001 - the directory asks the hosts again when it starts
            log.info("host %d could not tell the directory %s", self.index, method)

    def ready(self, timeout_s: float = MODEL_WAIT_S) -> dict:
        """The host once its model is loaded (or why it is not)."""
        if not self._loaded.wait(timeout_s):
            return replies.refused(replies.NO_ROOM, f"Host {self.index} is still loading its model; try again shortly.",
                                   retry_after=self.config.retry_after_s)
        if self._load_error is not None:
            return replies.refused(replies.BAD_INPUT, self._load_error)
        return self.holding()

    def holding(self) -> dict:
        """What this host holds: its generation, budget, and each stream's reserved bytes (the directory
        rebuilds its records from this after it restarts)."""
        return {"index": self.index, "generation": self.generation, "ready": self._loaded.is_set() and not self._load_error,
                "budget": self.budget.budget, "used": self.budget.used(), "streams": self.budget.held()}

    # --- the streams -------------------------------------------------------------------------------
    def open(self, stream_id: str, settings: dict) -> dict:
        """Make stream `stream_id`'s session with `settings` (checked: a 400 with the sentence when one
        cannot work), its cap reserved in this host's budget first (503 when it does not fit)."""
        ready = self.ready()
        if replies.refusal_of(ready):
            return ready
        from potwatch.streaming.session import StreamSession
        from potwatch.streaming.settings import StreamSettings

        unknown = sorted(set(settings) - set(open_settings()))
        if unknown:
            return replies.refused(replies.BAD_INPUT, f"Unknown setting '{unknown[0]}'; give any of "
                                   f"{', '.join(open_settings())}.")
        try:
            checked = StreamSettings.from_user(auto_allowed=False, **settings)
        except UserError as error:
            return replies.refused(replies.BAD_INPUT, str(error))
        if checked.cap_bytes is None:
            return replies.refused(replies.BAD_INPUT, "A cluster stream needs a memory cap in bytes, such as 64MB, so "
                                   "it can be placed within a host's budget; 'none' and 'auto' are not taken.")
        short = self.budget.reserve(stream_id, checked.cap_bytes)
        if short is not None:
            return replies.refused(replies.NO_ROOM, f"Host {self.index} has no room: {short}; try again when streams "
                                   "close, or give a smaller cap.", retry_after=self.config.retry_after_s)
        try:
            session = StreamSession(model=self.adapter, settings=checked)
        except UserError as error:
            self.budget.release(stream_id)
            return replies.refused(replies.BAD_INPUT, str(error))
        except BaseException:
            self.budget.release(stream_id)
            raise
        self.budget.settle(stream_id, session.cache.nbytes)
        with self._streams_lock:
            self.streams[stream_id] = HostedStream(session, Sampler(checked.fps))
        return {"stream": stream_id, "host": self.index, "generation": self.generation,
                "cap_bytes": checked.cap_bytes, "allocated_bytes": session.cache.nbytes, "policy": checked.policy,
                "fps": checked.fps, "kv_bits": checked.kv_bits, "model": self.adapter.name,
                "cap": session.describe_cap()}

    def push(self, stream_id: str, generation: str, times: list, images: list) -> dict:
        """Take a push of frames: `images` base64 JPEG/PNG, `times` their stream times in seconds."""
        def take(stream: HostedStream) -> dict:
            if len(times) != len(images):
                raise UserError(f"The push has {len(times)} times for {len(images)} images; give each frame its time.")
            checked = checked_times(times, stream.last_time_s)
            frames = [decode_image(image_bytes(text, index), index) for index, text in enumerate(images)]
            taken = skipped = 0
            for time_s, rgb in zip(checked, frames):
                stream.last_time_s = time_s
                stream.frames_pushed += 1
                if not stream.sampler.takes(time_s):
                    stream.frames_between_samples += 1
                    skipped += 1
                    continue
                stream.session.feed(rgb)
                stream.taken_time_s = time_s
                taken += 1
            return {"taken": taken, "between_samples": skipped, **self._counts(stream)}

        return self._with_stream(stream_id, generation, take)

    def ask(self, stream_id: str, generation: str, question: str, max_new_tokens: int | None = None) -> dict:
        """Answer from every frame pushed so far, with the stream time the answer refers to."""
        def answer(stream: HostedStream) -> dict:
            result = stream.session.ask(question, max_new_tokens=max_new_tokens)
            return {**result.as_dict(), "display": result.display, "stream_time_s": stream.taken_time_s,
                    "host": self.index}

        return self._with_stream(stream_id, generation, answer)

    def stats(self, stream_id: str, generation: str) -> dict:
        """The session's figures, as `watch --json` gives them, with where the stream lives."""
        def figures(stream: HostedStream) -> dict:
            import torch

            stats = stream.session.stats()
            cap = stats["cap_bytes"]
            # the figures `watch --json` adds to the session's own (app/watch.py's summary), under its names
            summary = {"mem_cap_bytes": cap, "threads": torch.get_num_threads(), "frames": stats["frames_seen"],
                       "video_seconds": stream.taken_time_s, "peak_cache_bytes": stats["peak_bytes"],
                       "allocated_cache_bytes": stats["allocated_bytes"],
                       "peak_under_cap": cap is None or (stats["peak_bytes"] <= cap and stats["allocated_bytes"] <= cap)}
            return {**stats, **summary, **self._counts(stream), "cap": stream.session.describe_cap()}

        return self._with_stream(stream_id, generation, figures)

    def close(self, stream_id: str, generation: str) -> dict:
        def close(stream: HostedStream) -> dict:
            self._drop(stream_id, stream)
            return {"stream": stream_id, "closed": True, **self._counts(stream)}

        reply = self._with_stream(stream_id, generation, close)
        if not replies.refusal_of(reply):
            self._tell_directory("forget", [stream_id], None)
        return reply

    def _counts(self, stream: HostedStream) -> dict:
        session = stream.session
        return {"host": self.index, "generation": self.generation, "frames_pushed": stream.frames_pushed,
                "frames_between_samples": stream.frames_between_samples, "frames_seen": session.frames_seen,
                "frames_ingested": session.frames_ingested, "stream_time_s": stream.taken_time_s}

    def _with_stream(self, stream_id: str, generation: str, work) -> dict:
        """Run `work(stream)` holding the stream's lock (waiting at most push_wait_s for it); a refusal for
        a stream of another generation (410), closed for idleness (410), unknown (404), busy (503), or
        for what `work` raises as the user's mistake (400, 413)."""
        if generation != self.generation:
            return replies.lost_stream(stream_id, f"its host {self.index} stopped and started again empty")
        with self._streams_lock:
            stream = self.streams.get(stream_id)
            gone = self.gone.get(stream_id)
        if stream is None:
            return replies.lost_stream(stream_id, gone) if gone else replies.unknown_stream(stream_id)
        if not stream.lock.acquire(timeout=self.config.push_wait_s):
            return replies.refused(replies.NO_ROOM, f"Stream '{stream_id}' is still taking its previous push or "
                                   f"question after {self.config.push_wait_s:g} s; send again shortly.",
                                   retry_after=max(int(self.config.push_wait_s // 10), 1))
        try:
            if stream_id not in self.streams:  # closed while this request waited
                return replies.lost_stream(stream_id, self.gone.get(stream_id, "it was closed meanwhile"))
            stream.last_used = time.monotonic()
            try:
                return work(stream)
            except TooLargeError as error:
                return replies.refused(replies.TOO_LARGE, str(error), **self._counts(stream))
            except UserError as error:
                return replies.refused(replies.BAD_INPUT, str(error), **self._counts(stream))
            finally:
                stream.last_used = time.monotonic()
        finally:
            stream.lock.release()

    def _drop(self, stream_id: str, stream: HostedStream, why: str | None = None) -> None:
        """Close the stream's session and give back its bytes (`why`: remembered, for a stream closed by the host)."""
        with self._streams_lock:
            self.streams.pop(stream_id, None)
            if why is not None:
                self.gone[stream_id] = why
                while len(self.gone) > GONE_KEPT:
                    self.gone.popitem(last=False)
        stream.session.close()
        self.budget.release(stream_id)

    # --- the idle reaper -------------------------------------------------------------------------------
    def _reap_idle(self) -> None:
        every = min(max(self.config.idle_s / 4, 0.05), 5.0)
        while not self._stop.wait(every):
            self.reap_idle()

    def reap_idle(self) -> list[str]:
        """Close every stream idle for idle_s (one that is taking a request is never idle); returns their ids."""
        now = time.monotonic()
        with self._streams_lock:
            idle = [(sid, s) for sid, s in self.streams.items() if now - s.last_used >= self.config.idle_s]
        reaped = []
        for stream_id, stream in idle:
            if not stream.lock.acquire(blocking=False):
                continue
            try:
                if time.monotonic() - stream.last_used < self.config.idle_s or stream_id not in self.streams:
                    continue
                self._drop(stream_id, stream, f"it was closed after {self.config.idle_s:g} s without a push, "
                                              "question or stats")
                reaped.append(stream_id)
            finally:
                stream.lock.release()
        if reaped:
            log.info("host %d closed %d idle streams (%s now free)", self.index, len(reaped),
                     format_bytes(self.budget.room()))
            self._tell_directory("forget", reaped, self.gone[reaped[0]])
        return reaped

    def overview(self) -> dict:
        """This host in figures: its streams, budget and room."""
        with self._streams_lock:
            count = len(self.streams)
        return {**self.holding(), "stream_count": count, "room": self.budget.room(),
                "model": self.config.model, "threads": self.config.host_threads()}
