"""Generate the demo video deterministically (see `potwatch.world.demo_scene`).

    python assets/make_demo_video.py [--out assets/demo.mp4] [--seconds 30] [--size 320x240]

H.264 (libx264, yuv420p) at 10 fps; the 30 s default stays far below a megabyte.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av

from potwatch.world.demo_scene import DEMO_FPS, DEMO_SECONDS, event_window, render_frames


def parse_size(text: str) -> tuple[int, int]:
    """'320x240' -> (320, 240); even sides, as yuv420p needs."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size '{text}' is not WIDTHxHEIGHT, e.g. 320x240") from None
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"size '{text}' needs even sides of at least 16 pixels")
    return width, height


def write_demo(out: Path, seconds: float, size: tuple[int, int], fps: float = DEMO_FPS) -> Path:
    """Encode the scene to `out` and return it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        # One thread and fixed options keep the bytes identical from run to run.
        stream.options = {"crf": "28", "preset": "slow", "threads": "1"}
        for rgb in render_frames(seconds, size, fps):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "demo.mp4")
    parser.add_argument("--seconds", type=float, default=DEMO_SECONDS)
    parser.add_argument("--size", type=parse_size, default=(320, 240), help="WIDTHxHEIGHT, default 320x240")
    parser.add_argument("--fps", type=float, default=DEMO_FPS, help=f"frames per second written, default {DEMO_FPS:g}")
    args = parser.parse_args()
    if args.seconds <= 0 or args.fps <= 0:
        parser.error("--seconds and --fps must be positive")
    out = write_demo(args.out, args.seconds, args.size, args.fps)
    start, end = event_window(args.seconds)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {args.seconds:g} s, "
          f"{args.size[0]}x{args.size[1]}, red box from {start:g} s to {end:g} s)")


if __name__ == "__main__":
    main()
