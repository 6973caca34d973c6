"""Frame sources: a video file (PyAV), a webcam (OpenCV) or frames already in memory.

Each yields `Frame`s sampled at a fixed rate `fps`, numbered from 0, so everything downstream sees
one frame rate whatever the source delivers. Problems a user can fix raise `SourceError` up front;
a stream that breaks part-way ends cleanly with a warning and keeps what was already yielded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import av
import cv2
import numpy as np

from potwatch.assets import packaged_or_given
from potwatch.errors import SourceError
from potwatch.models.frame_preprocessing import to_rgb_uint8
from potwatch.streaming.mp4_index import is_incomplete_mp4

log = logging.getLogger(__name__)

# Timestamps are rationals rounded to floats; this much slack keeps k/fps instants from being missed.
_TIME_EPS = 1e-6
# A webcam may drop a few reads (e.g. while warming up); this many failures in a row end the stream.
_WEBCAM_MAX_READ_FAILURES = 5
# A file whose last decoded frame comes this much before the end its header gives was cut off.
_TRUNCATED_MIN_GAP_S = 1.0


@dataclass(frozen=True)
class Frame:
    """One sampled frame: its number in the sampled stream, its time in the video, its RGB pixels."""

    index: int
    time_s: float
    rgb: np.ndarray  # HxWx3 uint8


class FrameSource(Protocol):
    """What the ingester needs from any source."""

    fps: float
    error: str | None

    @property
    def expected_frames(self) -> int | None: ...

    def __iter__(self) -> Iterator[Frame]: ...


def check_rate(fps: float) -> float:
    """`fps` as a positive finite float, or a SourceError saying how to write it."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        shown = f"{value:g}" if not math.isnan(value) and not isinstance(fps, str) else repr(fps)
        raise SourceError(f"The sampling rate {shown} is not a positive number; give frames per second, e.g. 2.")
    return value


def _check_max_frames(max_frames: int | None) -> int | None:
    if max_frames is None:
        return None
    if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 0:
        raise SourceError(
            f"The frame limit {max_frames!r} is not a whole number >= 0; "
            "give a number of frames, e.g. --max-frames 100."
        )
    return int(max_frames)


def _next_instant(time_s: float, fps: float) -> float:
    """The first sampling instant k/fps strictly after a frame taken at time_s."""
    return (math.floor(time_s * fps + _TIME_EPS) + 1) / fps


class FileSource:
    """A video file decoded with PyAV, sampled by timestamps: for each instant k/fps the first frame
    at or after it (variable frame rate works; a frame covering several instants is yielded once)."""

    def __init__(self, path: str | os.PathLike, fps: float = 2.0, realtime: bool = False,
                 max_frames: int | None = None) -> None:
        self.path = packaged_or_given(path)  # `assets/demo.mp4` works outside the checkout too
        self.fps = check_rate(fps)
        self.realtime = realtime
        self.max_frames = _check_max_frames(max_frames)
        self.error: str | None = None
        self._check_file()
        container = self._open()
        try:
            stream = self._video_stream(container)
            self.width: int = stream.codec_context.width
            self.height: int = stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate
            self.native_fps: float | None = float(rate) if rate else None
            self.duration_s: float | None = self._duration(container, stream)
            self._stream_frames: int = stream.frames
        finally:
            container.close()

    def __repr__(self) -> str:
        return f"FileSource({str(self.path)!r}, fps={self.fps})"

    def _check_file(self) -> None:
        if not self.path.exists():
            raise SourceError(f"The video file '{self.path}' does not exist; check the path.")
        if self.path.is_dir():
            raise SourceError(f"'{self.path}' is a folder, not a video file; give the path of a video file.")
        if self.path.stat().st_size == 0:
            raise SourceError(f"The video file '{self.path}' is empty (0 bytes); give a complete video file.")

    def _open(self) -> av.container.InputContainer:
        try:
            return av.open(str(self.path))
        except (av.FFmpegError, OSError) as exc:
            if is_incomplete_mp4(self.path):
                raise SourceError(
                    f"'{self.path}' is an incomplete MP4 file: its index (the 'moov' box) is missing, most likely "
                    "because it was cut off while copying or recording; copy or export it again."
                ) from None
            reason = getattr(exc, "strerror", None) or str(exc)
            raise SourceError(
                f"'{self.path}' is not a video FFmpeg can read ({reason}); give a video file such as mp4, mkv or webm."
            ) from None

    def _video_stream(self, container: av.container.InputContainer) -> av.VideoStream:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
            raise SourceError(f"'{self.path}' has no video stream (it holds {kinds}); give a file with video.")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # FFmpeg has no decoder for this codec
            raise SourceError(self._undecodable())
        return stream

    def _undecodable(self) -> str:
        return (f"'{self.path}' holds video in a codec potwatch's FFmpeg cannot decode; "
                "convert it to H.264 or VP9 and try again.")

    @staticmethod
    def _duration(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        if container.duration:
            return container.duration / av.time_base
        return None

    @property
    def expected_frames(self) -> int | None:
        """About how many frames iteration yields (for a progress bar), or None if unknown."""
        estimate = None
        if self.duration_s is not None:
            last_frame_s = self.duration_s - (1.0 / self.native_fps if self.native_fps else 0.0)
            estimate = math.floor(max(last_frame_s, 0.0) * self.fps + _TIME_EPS) + 1
            if self._stream_frames:
                estimate = min(estimate, self._stream_frames)
        elif self._stream_frames and self.native_fps:
            estimate = math.ceil(self._stream_frames * self.fps / self.native_fps)
        if self.max_frames is not None:
            estimate = self.max_frames if estimate is None else min(estimate, self.max_frames)
        return estimate

    def _decode(self, container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
        """Decoded frames in order; a decoding error ends them and leaves its reason in `_failure`."""
        self._failure = None
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except (av.FFmpegError, OSError) as exc:
                self._failure = getattr(exc, "strerror", None) or str(exc)
                return
            yield frame

    def __iter__(self) -> Iterator[Frame]:
        self.error = None
        self._check_file()
        container = self._open()
        try:
            stream = self._video_stream(container)
            stream.thread_type = "AUTO"
            video_end_s = self._video_end(container, stream)
            origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else None
            wall_start = time.monotonic()
            next_instant = 0.0
            index = 0
            last_s = None  # time of the last frame decoded, sampled or not
            if self.max_frames == 0:
                return
            for decoded, frame in enumerate(self._decode(container, stream)):
                if frame.time is not None:
                    stamp = float(frame.time)
                else:  # no timestamp: count frames at the native rate
                    stamp = decoded / (self.native_fps or self.fps)
                if origin is None:
                    origin = stamp
                time_s = stamp - origin
                last_s = time_s
                if time_s < -_TIME_EPS or time_s + _TIME_EPS < next_instant:
                    continue
                time_s = max(time_s, 0.0)
                if self.realtime:
                    delay = wall_start + time_s - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                yield Frame(index, time_s, frame.to_ndarray(format="rgb24"))
                index += 1
                if self.max_frames is not None and index >= self.max_frames:
                    return
                next_instant = _next_instant(time_s, self.fps)
            self._note_early_end(last_s, video_end_s)
        finally:
            container.close()

    def _video_end(self, container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
        """How long the header says the video track runs (not the audio), or None if it does not say."""
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        if container.duration and len(container.streams) == 1:
            return container.duration / av.time_base
        return None

    def _note_early_end(self, last_s: float | None, video_end_s: float | None) -> None:
        """After the last frame: say why the video ended early, if it did; if nothing decoded, refuse it."""
        if last_s is None and self._failure is not None:
            raise SourceError(
                f"'{self.path}' has no frame potwatch's FFmpeg can decode ({self._failure}); its video data is "
                "damaged or in a codec FFmpeg does not know, so export it again, e.g. as H.264."
            )
        if last_s is None:
            return
        if self._failure is not None:
            self.error = f"decoding '{self.path}' stopped part-way, after {last_s:.1f} s: {self._failure}"
        elif video_end_s is not None:
            frame_s = 1.0 / self.native_fps if self.native_fps else 0.0
            if video_end_s - last_s > max(_TRUNCATED_MIN_GAP_S, 3 * frame_s):
                self.error = (f"'{self.path}' ends after {last_s:.1f} s of the {video_end_s:.1f} s its header gives; "
                              "the file was probably cut off")
        if self.error is not None:
            log.warning("%s; keeping the frames read so far", self.error)


class WebcamSource:
    """An OpenCV camera, sampled by the wall clock: the newest frame at or after each instant k/fps."""

    def __init__(self, device: int = 0, fps: float = 2.0, max_frames: int | None = None) -> None:
        self.device = int(device)
        self.fps = check_rate(fps)
        self.max_frames = _check_max_frames(max_frames)
        self.error: str | None = None
        self.duration_s: float | None = None
        self._capture = self._open()
        camera_fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.native_fps: float | None = float(camera_fps) if camera_fps and camera_fps > 0 else None
        # What the driver reports; None where it reports nothing (frames then tell).
        self.width: int | None = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH)) or None
        self.height: int | None = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) or None

    def __repr__(self) -> str:
        return f"WebcamSource({self.device}, fps={self.fps})"

    def _open(self) -> cv2.VideoCapture:
        with _quiet_opencv():  # a missing camera makes OpenCV log warnings; the SourceError says it all
            capture = cv2.VideoCapture(self.device)
        if not capture.isOpened():
            capture.release()
            raise SourceError(
                f"Webcam {self.device} cannot be opened; check the device index (webcam:0, webcam:1, ...) "
                "and that this user may use the camera."
            )
        return capture

    @property
    def expected_frames(self) -> int | None:
        return self.max_frames

    def close(self) -> None:
        """Release the camera now rather than when iteration ends."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def __iter__(self) -> Iterator[Frame]:
        self.error = None
        capture = self._capture if self._capture is not None else self._open()
        self._capture = capture
        try:
            start = time.monotonic()
            next_instant = 0.0
            index = 0
            failures = 0
            while self.max_frames is None or index < self.max_frames:
                try:
                    ok, image = capture.read()
                except cv2.error:  # some drivers raise rather than return False when the camera goes
                    ok, image = False, None
                time_s = time.monotonic() - start
                if not ok or image is None:
                    failures += 1
                    if failures >= _WEBCAM_MAX_READ_FAILURES:
                        self.error = f"webcam {self.device} stopped delivering frames"
                        log.warning("%s; ending the stream after %d frames", self.error, index)
                        return
                    time.sleep(0.05)
                    continue
                failures = 0
                if time_s + _TIME_EPS < next_instant:
                    continue  # reading on keeps the camera's buffer fresh
                if image.ndim == 3 and image.shape[2] == 3:
                    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
                elif image.ndim == 3 and image.shape[2] == 4:
                    rgb = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
                else:
                    rgb = to_rgb_uint8(image)
                yield Frame(index, time_s, rgb)
                index += 1
                next_instant = _next_instant(time_s, self.fps)
        finally:
            self.close()


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV's own log down to errors while a camera is opened."""
    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_api is None:
        yield
        return
    level = logging_api.getLogLevel()
    logging_api.setLogLevel(logging_api.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        logging_api.setLogLevel(level)


class ArraySource:
    """Frames already in memory (a list, or an array [N,H,W,3], [N,H,W] or [N,H,W,4] of uint8),
    stamped index/fps; grayscale and RGBA become RGB."""

    def __init__(self, frames: Sequence[np.ndarray] | np.ndarray, fps: float = 2.0) -> None:
        self.fps = check_rate(fps)
        self.error: str | None = None
        if isinstance(frames, np.ndarray):
            if frames.ndim not in (3, 4):
                raise SourceError(
                    f"A frame array of shape {frames.shape} is not [N,H,W] or [N,H,W,C]; stack frames along axis 0."
                )
            if frames.ndim == 3 and frames.shape[2] in (3, 4):
                raise SourceError(
                    f"An array of shape {frames.shape} looks like one colour frame; "
                    "pass a list [frame] or stack frames to [N,H,W,C]."
                )
        self._frames = frames
        if len(frames) == 0:
            raise SourceError("The frame list is empty; give at least one frame.")
        for frame in frames:
            to_rgb_uint8(frame)  # validate every frame now, not half-way through a stream
        self.height, self.width = np.asarray(frames[0]).shape[:2]
        self.native_fps: float | None = self.fps
        self.duration_s: float | None = len(frames) / self.fps

    def __repr__(self) -> str:
        return f"ArraySource({len(self)} frames, fps={self.fps})"

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def expected_frames(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[Frame]:
        for index, frame in enumerate(self._frames):
            yield Frame(index, index / self.fps, to_rgb_uint8(frame))


def open_source(spec: str, fps: float = 2.0, realtime: bool = False,
                max_frames: int | None = None) -> FileSource | WebcamSource:
    """`webcam:N` (or `webcam`) opens camera N; anything else is a video file path."""
    text = str(spec)
    if text == "webcam" or text.startswith("webcam:"):
        index = text.partition(":")[2] or "0"
        if not index.isdigit():
            raise SourceError(f"'{text}' names no camera; write webcam:N with N a device number, e.g. webcam:0.")
        return WebcamSource(int(index), fps=fps, max_frames=max_frames)
    return FileSource(text, fps=fps, realtime=realtime, max_frames=max_frames)
