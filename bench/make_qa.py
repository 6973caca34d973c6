"""`potwatch make-qa`: a held-out question set from the synthetic world — N short mp4 videos and one
`questions.json` that `potwatch bench --accuracy` reads (and, with `--lmms-task`, the same set as a local
lmms-eval task: bench/lmms_task.py).

Stream i of seed S is drawn from `random.Random("potwatch-qa:S:i")`: training draws its streams from
integer seeds, so no held-out stream can be one the model trained on. Videos are written at twice the
sampling rate (4 fps), so sampling at 2 fps lands exactly on written frames, and the facts the questions
rest on (computed from the sampled frames) are what a session is shown. The same command writes the
same bytes (see ENCODER_OPTIONS)."""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

from potwatch.errors import UserError

MIN_SECONDS = 4.0
VIDEO_SIZE = (320, 240)  # width, height
WRITE_FPS_FACTOR = 2  # frames written per sampled frame
# One thread, fixed options, and x264's plain C code: its SIMD paths read uninitialised padding during
# lookahead, which changed the bytes from run to run (measured with PyAV 18 at every preset but ultrafast).
ENCODER_OPTIONS = {"crf": "28", "preset": "veryfast", "threads": "1", "x264-params": "asm=0"}


def add_make_qa_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0,
                        help="which held-out set (default 0); training never uses these streams")
    parser.add_argument("--streams", type=int, default=40, help="how many videos (default 40)")
    parser.add_argument("--seconds", type=float, default=80.0,
                        help=f"length of every video in seconds (default 80, at least {MIN_SECONDS:g})")
    parser.add_argument("--out", required=True, help="folder for the videos and questions.json (made if missing)")
    parser.add_argument("--lmms-task", action="store_true",
                        help="also write the set as a local lmms-eval task (JSONL, task YAMLs, utils.py; "
                             "see docs/lmms-eval.md)")


def run_make_qa(args) -> int:
    summary = make_qa(args.seed, args.streams, args.seconds, args.out, progress=True, lmms_task=args.lmms_task)
    print(f"wrote {summary['streams']} videos ({summary['video_bytes'] / 1e6:.1f} MB) and "
          f"{summary['questions']} questions ({summary['early']} early) to {Path(args.out) / 'questions.json'}")
    if summary.get("lmms_tasks"):
        print(f"wrote the lmms-eval tasks {', '.join(summary['lmms_tasks'])}: lmms-eval --include_path {args.out} "
              f"--tasks {summary['lmms_tasks'][-1]} --model potwatch --model_args model=tiny,mem_cap=none")
    return 0


def qa_stream(seed: int, index: int, seconds: float):
    """Stream `index` of held-out set `seed` and its questions (a string seed: never a training seed): every
    question asked at the end but "now", asked when its moment comes (something in view half the time)."""
    from potwatch.world.questions import now_question, questions_for
    from potwatch.world.stream import random_stream

    rng = random.Random(f"potwatch-qa:{seed}:{index}")
    stream = random_stream(rng, seconds=seconds)
    questions = [q for q in questions_for(stream, rng) if q.kind != "now"]
    now = now_question(stream, random.Random(f"potwatch-qa-now:{seed}:{index}"))
    return stream, questions + ([now[1]] if now else [])


def make_qa(seed: int, streams: int, seconds: float, out: str | Path, progress: bool = False,
            lmms_task: bool = False) -> dict:
    """Write the videos and questions.json into `out` (and the lmms-eval task, `lmms_task`); returns counts
    for the report."""
    from potwatch.streaming.age_phrases import GRID, MIN_TOLERANCE_S
    from potwatch.world.stream import SAMPLE_FPS

    _check(streams, seconds)
    folder = _writable_folder(Path(out))
    entries, videos, video_bytes = [], [], 0
    for index in _progress(range(streams), progress):
        stream, questions = qa_stream(seed, index, seconds)
        name = f"stream_{index:03d}.mp4"
        video_bytes += write_stream_video(stream, folder / name).stat().st_size
        videos.append({"video": name, "scene": stream.scene, "events": [asdict(e) for e in stream.events]})
        entries += [q.mc_entry(name, f"{index:03d}-{j:02d}") for j, q in enumerate(questions)]
    age_grid = [{"below_s": below, "step_s": step} for below, step, _, _ in GRID]
    document = {"seed": seed, "streams": streams, "seconds": seconds, "sample_fps": SAMPLE_FPS,
                "ages": {"said_on": age_grid, "right_within": "one step of the grid", "at_least_s": MIN_TOLERANCE_S},
                "videos": videos, "questions": entries}
    (folder / "questions.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    summary = {"streams": streams, "questions": len(entries), "early": sum(e["early"] for e in entries),
               "video_bytes": video_bytes}
    if lmms_task:
        from potwatch.bench.lmms_task import write_lmms_task

        summary["lmms_tasks"] = write_lmms_task(folder, entries)
    return summary


def write_stream_video(stream, path: Path) -> Path:
    """H.264 at WRITE_FPS_FACTOR x the sampling rate, exactly as many frames as the sampled ones need."""
    import av

    from potwatch.world.stream import SAMPLE_FPS
    from potwatch.world.render import render

    rate = WRITE_FPS_FACTOR * SAMPLE_FPS
    count = WRITE_FPS_FACTOR * len(stream.frame_times)  # the last sampled frame is the last-but-one written
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=Fraction(rate).limit_denominator(1000))
        video.width, video.height = VIDEO_SIZE
        video.pix_fmt = "yuv420p"
        video.options = dict(ENCODER_OPTIONS)
        for j in range(count):
            frame = av.VideoFrame.from_ndarray(render(stream, j / rate, VIDEO_SIZE), format="rgb24")
            frame.pts, frame.time_base = j, Fraction(1, int(rate))  # explicit timestamps, none left to the encoder
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    return path


def _check(streams: int, seconds: float) -> None:
    if streams < 1:
        raise UserError(f"--streams {streams} makes no video; give 1 or more, e.g. --streams 40.")
    if not math.isfinite(seconds) or seconds < MIN_SECONDS:
        raise UserError(f"--seconds {seconds:g} is too short for objects to come and go; "
                        f"give at least {MIN_SECONDS:g}, e.g. --seconds 80.")


def _writable_folder(folder: Path) -> Path:
    """`folder`, made if missing, or a UserError before any work when it cannot be written."""
    probe = folder / ".potwatch-write-test"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        raise UserError(
            f"Cannot write the question set to '{folder}' ({reason}); give --out a folder you can write to."
        ) from None
    return folder


def _progress(items, show: bool):
    if not show:
        return items
    import sys

    from tqdm import tqdm

    return tqdm(items, desc="make-qa", unit="video", file=sys.stderr, disable=None, leave=False)
