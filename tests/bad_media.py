"""Real media files, good and bad, written with PyAV's encoders: what users actually hand potwatch.

Every file is encoded for real (H.264, FFV1, ProRes 4444, AAC); the broken ones are made the way they
break in practice: a copy cut off part-way, a codec nobody here can decode, a text file renamed."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(path: Path, count: int = 8, rate: int = 4, size: tuple[int, int] = (64, 48),
                codec: str = "libx264", pix_fmt: str = "yuv420p", times_ms: list[int] | None = None,
                container_options: dict | None = None, rgba: bool = False) -> Path:
    """`count` noisy frames at `rate` fps (or shown at `times_ms`: variable frame rate), size (width, height)."""
    width, height = size
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if times_ms is not None:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i in range(count if times_ms is None else len(times_ms)):
            pixels = rng.integers(0, 256, (height, width, 4 if rgba else 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgba" if rgba else "rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_blank_8k(path: Path, count: int = 2) -> Path:
    """`count` black 7680x4320 H.264 frames at 2 fps (filled in YUV directly: converting 8K RGB is slow)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=2, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 7680, 4320, "yuv420p"
        for i in range(count):
            frame = av.VideoFrame(7680, 4320, "yuv420p")
            for plane, value in zip(frame.planes, (16, 128, 128)):
                plane.update(bytes([value]) * plane.buffer_size)
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio(path: Path, codec: str = "aac") -> Path:
    """A quarter second of silence, no video stream: a voice memo or a podcast."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=16000)
        fmt, dtype = ("s16", np.int16) if codec.startswith("pcm") else ("fltp", np.float32)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype), format=fmt, layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_cut_in_half(source: Path, path: Path) -> Path:
    """The first half of `source`'s bytes: a copy or recording that stopped part-way."""
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_unknown_codec(path: Path) -> Path:
    """An MP4 whose video is tagged with a codec FFmpeg does not know (as from a proprietary camera):
    a real H.264 file with its sample-description fourcc changed from 'avc1' to 'zzzz'."""
    write_video(path)
    data = bytearray(path.read_bytes())
    entry = data.index(b"avc1", data.index(b"stsd"))
    data[entry:entry + 4] = b"zzzz"
    path.write_bytes(bytes(data))
    return path


def write_damaged_data(path: Path) -> Path:
    """A real H.264 MP4 whose frame data (the `mdat` box) was overwritten with zeros, its index intact:
    what a failing disk or a bad transfer leaves."""
    write_video(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"mdat") + 4
    size = int.from_bytes(data[start - 8:start - 4], "big")
    data[start:start - 8 + size] = bytes(size - 8)
    path.write_bytes(bytes(data))
    return path


def write_all(folder: Path) -> Path:
    """Every file the bad-inputs table names, in `folder` (the names match docs/bad-inputs.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "videos").mkdir(exist_ok=True)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("Shopping list: eggs, milk, bread.\n" * 20)
    write_cut_in_half(write_video(folder / "complete.mp4", count=20), folder / "half.mp4")
    write_audio(folder / "sound.m4a")
    write_unknown_codec(folder / "unknown-codec.mp4")
    write_damaged_data(folder / "damaged.mp4")
    write_video(folder / "tiny.mkv", count=2, size=(1, 1), codec="ffv1", pix_fmt="bgr0")
    write_blank_8k(folder / "8k.mp4")
    write_video(folder / "gray.mkv", count=4, codec="ffv1", pix_fmt="gray")
    write_video(folder / "rgba.mov", count=4, codec="prores_ks", pix_fmt="yuva444p10le", rgba=True)
    write_video(folder / "odd.mkv", count=4, size=(101, 37), codec="ffv1", pix_fmt="bgr0")
    write_video(folder / "vfr.mp4", times_ms=[0, 100, 200, 300, 1000, 1050, 2500, 2600])
    (folder / "mlvu.json").write_text(  # multiple choice without free-text truths, as public sets are
        '[{"video": "complete", "question": "What moved?", "options": ["a ball", "a cat"], "answer": "A"}]')
    (folder / "notamodel").mkdir(exist_ok=True)
    (folder / "notamodel" / "README.md").write_text("my notes\n")
    for name, config in (("noweights", '{"model_type": "qwen2_vl"}'), ("bert", '{"model_type": "bert"}'),
                         ("badconfig", '{"model_type": "qwen2_vl",')):
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "config.json").write_text(config)
    return folder
