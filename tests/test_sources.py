"""Frame sources: sampling by timestamps, clear errors, partial decodes, arrays and webcams."""

from __future__ import annotations

import logging
import math
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from potwatch.errors import SourceError
from potwatch.streaming import sources
from potwatch.streaming.sources import ArraySource, FileSource, Frame, WebcamSource, open_source
from tests.bad_media import write_audio


def write_video(path: Path, times_ms: list[int] | None = None, rate: int | None = None, count: int = 0,
                noisy: bool = False, size: tuple[int, int] = (64, 48)) -> Path:
    """H.264: `count` frames at a constant `rate`, or frames shown at `times_ms` (variable rate).
    Frame i has brightness 5*i (or is noise)."""
    width, height = size
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        for i in range(count if times_ms is None else len(times_ms)):
            if noisy:
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            else:
                pixels = np.full((height, width, 3), (5 * i) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def cfr_video(tmp_path_factory) -> Path:
    """5 s at 10 fps: frames at 0.0, 0.1, ..., 4.9 s."""
    return write_video(tmp_path_factory.mktemp("videos") / "cfr.mp4", rate=10, count=50)


@pytest.mark.parametrize("fps, count", [(2.0, 10), (1.0, 5), (4.0, 20), (30.0, 50)])
def test_constant_rate_sampling(cfr_video, fps, count):
    source = FileSource(cfr_video, fps=fps)
    frames = list(source)
    assert [f.index for f in frames] == list(range(count))
    # the first native frame (every 0.1 s) at or after each instant k/fps, each at most once
    firsts = {math.ceil(k / fps * 10 - 1e-9) / 10 for k in range(int(5 * fps))}
    expected = sorted(t for t in firsts if t <= 4.9)  # no frame after the last one at 4.9 s
    np.testing.assert_allclose([f.time_s for f in frames], expected, atol=1e-6)
    assert all(f.rgb.shape == (48, 64, 3) and f.rgb.dtype == np.uint8 for f in frames)
    assert source.expected_frames == count
    assert source.error is None
    assert source.native_fps == pytest.approx(10.0)
    assert source.duration_s == pytest.approx(5.0, abs=0.11)
    assert (source.height, source.width) == (48, 64)


def test_sampled_frames_are_the_right_ones(cfr_video):
    # frame i has brightness 5*i; at 2 fps the k-th sample is native frame 5k
    frames = list(FileSource(cfr_video, fps=2.0))
    brightness = [float(f.rgb.mean()) for f in frames]
    np.testing.assert_allclose(brightness, [25.0 * k for k in range(10)], atol=3.0)


def test_variable_frame_rate(tmp_path):
    times = [0, 100, 200, 300, 1000, 1050, 2500, 2600, 2700]
    path = write_video(tmp_path / "vfr.mp4", times)
    # fps 2: instants 0, .5, 1, 1.5, 2, 2.5 -> frames at 0, 1.0 (covers .5 and 1), 2.5 (covers 1.5, 2, 2.5)
    frames = list(FileSource(path, fps=2.0))
    np.testing.assert_allclose([f.time_s for f in frames], [0.0, 1.0, 2.5], atol=1e-6)
    assert [f.index for f in frames] == [0, 1, 2]
    # fps 10: 1.05 s falls between the instants 1.0 (taken by the 1.0 s frame) and 1.1, so it is skipped
    frames = list(FileSource(path, fps=10.0))
    np.testing.assert_allclose([f.time_s for f in frames], [0, .1, .2, .3, 1.0, 2.5, 2.6, 2.7], atol=1e-6)
    # fps 20: every native frame is the first at or after some instant
    frames = list(FileSource(path, fps=20.0))
    np.testing.assert_allclose([f.time_s for f in frames], [t / 1000 for t in times], atol=1e-6)
    # fps 1: instants 0, 1, 2 -> 0, 1.0, 2.5
    frames = list(FileSource(path, fps=1.0))
    np.testing.assert_allclose([f.time_s for f in frames], [0.0, 1.0, 2.5], atol=1e-6)


def test_max_frames_and_reiteration(cfr_video):
    source = FileSource(cfr_video, fps=2.0, max_frames=3)
    assert source.expected_frames == 3
    assert [f.index for f in source] == [0, 1, 2]
    assert [f.index for f in source] == [0, 1, 2]
    assert list(FileSource(cfr_video, max_frames=0)) == []
    for bad in (-1, 2.5, "3"):
        with pytest.raises(SourceError, match="frame limit"):
            FileSource(cfr_video, max_frames=bad)


def test_realtime_paces_to_the_wall_clock(tmp_path):
    path = write_video(tmp_path / "short.mp4", rate=10, count=6)  # 0.0 .. 0.5 s
    start = time.monotonic()
    frames = list(FileSource(path, fps=10.0, realtime=True))
    elapsed = time.monotonic() - start
    assert len(frames) == 6
    assert elapsed >= 0.45


def test_missing_file(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        FileSource(tmp_path / "nope.mp4")


def test_directory(tmp_path):
    with pytest.raises(SourceError, match="folder"):
        FileSource(tmp_path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.touch()
    with pytest.raises(SourceError, match="empty"):
        FileSource(path)


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(SourceError, match="not a video FFmpeg can read"):
        FileSource(path)


@pytest.mark.parametrize("name, codec", [("sound.wav", "pcm_s16le"), ("sound.m4a", "aac")])
def test_audio_only_file(tmp_path, name, codec):
    path = write_audio(tmp_path / name, codec)
    with pytest.raises(SourceError, match="no video stream"):
        FileSource(path)


@pytest.mark.parametrize("fps", [0, -1, float("nan"), "fast"])
def test_bad_rate(cfr_video, fps):
    with pytest.raises(SourceError):
        FileSource(cfr_video, fps=fps)


def test_decoding_error_part_way_keeps_earlier_frames(tmp_path, caplog):
    path = write_video(tmp_path / "good.mp4", rate=10, count=50, noisy=True)
    data = bytearray(path.read_bytes())
    third = len(data) // 3
    data[third:third + 2000] = bytes(2000)  # wipe part of the encoded frames, keep the index intact
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    source = FileSource(broken, fps=10.0)
    with caplog.at_level(logging.WARNING, logger="potwatch.streaming.sources"):
        frames = list(source)
    assert 0 < len(frames) < 50
    assert [f.index for f in frames] == list(range(len(frames)))
    assert source.error is not None and "part-way" in source.error
    assert any("part-way" in record.getMessage() for record in caplog.records)


def test_array_source_grayscale_and_timestamps():
    gray = np.arange(5 * 8 * 6, dtype=np.uint8).reshape(5, 8, 6)
    source = ArraySource(gray, fps=4.0)
    frames = list(source)
    assert len(source) == source.expected_frames == 5
    assert [f.time_s for f in frames] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(f.rgb.shape == (8, 6, 3) for f in frames)
    assert (source.height, source.width) == (8, 6)
    np.testing.assert_array_equal(frames[2].rgb[:, :, 1], gray[2])


def test_array_source_list_of_mixed_layouts():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgba = np.full((4, 4, 4), 9, np.uint8)
    frames = list(ArraySource([rgb, rgba, rgb[:, :, 0]], fps=2.0))
    assert [f.index for f in frames] == [0, 1, 2]
    assert frames[1].rgb.shape == (4, 4, 3) and int(frames[1].rgb.max()) == 9


@pytest.mark.parametrize(
    "frames",
    [[], np.zeros((0, 4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8), [np.zeros((4, 4, 3), np.float32)],
     [np.zeros((4, 4, 2), np.uint8)]],
    ids=["empty-list", "empty-array", "single-frame", "float", "2ch"],
)
def test_array_source_rejects(frames):
    with pytest.raises(SourceError):
        ArraySource(frames)


def test_missing_webcam():
    with pytest.raises(SourceError, match="webcam:0"):
        WebcamSource(99)
    with pytest.raises(SourceError):
        open_source("webcam:99")


class FakeCapture:
    """Stands in for cv2.VideoCapture: delivers `good` BGR frames at ~100 fps, then fails."""

    def __init__(self, device: int, good: int = 30) -> None:
        self.left = good
        self.released = False

    def isOpened(self) -> bool:
        return True

    def get(self, prop: int) -> float:
        return {sources.cv2.CAP_PROP_FPS: 100.0, sources.cv2.CAP_PROP_FRAME_WIDTH: 8.0,
                sources.cv2.CAP_PROP_FRAME_HEIGHT: 6.0}.get(prop, 0.0)

    def read(self):
        time.sleep(0.01)
        if self.left <= 0:
            return False, None
        self.left -= 1
        image = np.zeros((6, 8, 3), np.uint8)
        image[:, :, 0] = 255  # blue in BGR
        return True, image

    def release(self) -> None:
        self.released = True


def test_webcam_sampling_and_end_of_stream(monkeypatch, caplog):
    monkeypatch.setattr(sources.cv2, "VideoCapture", FakeCapture)
    source = WebcamSource(0, fps=20.0)
    with caplog.at_level(logging.WARNING, logger="potwatch.streaming.sources"):
        frames = list(source)
    # ~0.3 s of frames at 100 fps, sampled at 20 fps
    assert 3 <= len(frames) <= 10
    slots = [int(f.time_s * 20.0 + 1e-6) for f in frames]  # one frame per sampling interval at most
    assert slots == sorted(set(slots))
    assert frames[0].rgb[0, 0].tolist() == [0, 0, 255]  # converted to RGB
    assert (source.height, source.width, source.native_fps) == (6, 8, 100.0)
    assert source.error is not None and "stopped" in source.error
    assert any("stopped delivering" in record.getMessage() for record in caplog.records)


def test_webcam_max_frames(monkeypatch):
    monkeypatch.setattr(sources.cv2, "VideoCapture", FakeCapture)
    frames = list(open_source("webcam:0", fps=50.0, max_frames=2))
    assert [f.index for f in frames] == [0, 1]


def test_open_source_dispatch(cfr_video):
    assert isinstance(open_source(str(cfr_video), fps=1.0), FileSource)
    with pytest.raises(SourceError, match="webcam:N"):
        open_source("webcam:front")
    with pytest.raises(SourceError, match="does not exist"):
        open_source("no/such/video.mp4")


def test_frame_is_a_small_record():
    frame = Frame(3, 1.5, np.zeros((2, 2, 3), np.uint8))
    assert (frame.index, frame.time_s, frame.rgb.shape) == (3, 1.5, (2, 2, 3))
