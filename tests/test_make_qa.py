"""`potwatch make-qa` as a user runs it: videos that decode to exactly the frames the questions are about,
a questions.json that `bench --accuracy` loads, the same bytes from the same command, and one sentence
with exit code 2 for input it cannot use."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from potwatch.bench.accuracy import load_questions
from potwatch.app.cli import main
from potwatch.bench.make_qa import make_qa, qa_stream
from potwatch.streaming.sources import FileSource
from potwatch.world.stream import random_stream
from potwatch.world.render import render_sampled

ROOT = Path(__file__).resolve().parents[1]
SEED, STREAMS, SECONDS = 0, 2, 6.0


def potwatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "potwatch.app.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def qa_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qa") / "set"
    run = potwatch("make-qa", "--seed", str(SEED), "--streams", str(STREAMS), "--seconds", str(SECONDS), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "wrote 2 videos" in run.stdout
    return out


def test_questions_load_and_describe_the_set(qa_set):
    document = json.loads((qa_set / "questions.json").read_text())
    assert {key: document[key] for key in ("seed", "streams", "seconds")} == {
        "seed": SEED, "streams": STREAMS, "seconds": SECONDS}
    assert document["ages"]["at_least_s"] == 2.0 and document["ages"]["said_on"][0] == {"below_s": 20.0, "step_s": 1.0}
    items = load_questions(qa_set / "questions.json")
    assert len(items) == len(document["questions"]) > 0
    assert {item.video for item in items} == {"stream_000.mp4", "stream_001.mp4"}
    for entry, item in zip(document["questions"], items):
        assert item.answer == entry["answer"] and item.early == entry["early"]
        assert entry["free_answer"] and entry["truth"]["kind"] == item.task
    expected = [q.mc_entry("stream_000.mp4", f"000-{j:02d}") for j, q in enumerate(qa_stream(SEED, 0, SECONDS)[1])]
    assert document["questions"][: len(expected)] == expected


def test_videos_decode_to_the_sampled_frames(qa_set):
    for index in range(STREAMS):
        stream, _ = qa_stream(SEED, index, SECONDS)
        decoded = list(FileSource(qa_set / f"stream_{index:03d}.mp4", fps=2.0))
        assert [f.time_s for f in decoded] == stream.frame_times  # 4 fps written, 2 fps sampled: exact instants
        assert decoded[0].rgb.shape == (240, 320, 3)
        rendered = render_sampled(stream)
        error = np.mean([np.abs(a.rgb.astype(int) - b).mean() for a, b in zip(decoded, rendered)])
        assert error < 8, error  # H.264 at crf 28 changes pixels a little, never the scene


def test_same_command_same_bytes(qa_set, tmp_path):
    make_qa(SEED, STREAMS, SECONDS, tmp_path)
    for name in ("questions.json", "stream_000.mp4", "stream_001.mp4"):
        assert (tmp_path / name).read_bytes() == (qa_set / name).read_bytes(), name


def test_held_out_streams_come_from_string_seeds():
    stream, _ = qa_stream(3, 1, 20.0)
    assert stream == random_stream(random.Random("potwatch-qa:3:1"), seconds=20.0)
    assert stream != random_stream(random.Random(1), seconds=20.0)  # training seeds are integers


BAD_INPUTS = [
    (["--streams", "0"], "--streams 0 makes no video; give 1 or more, e.g. --streams 40."),
    (["--seconds", "2"], "--seconds 2 is too short for objects to come and go; give at least 4, e.g. --seconds 80."),
    (["--out", "{file}/qa"], "Cannot write the question set to '{file}/qa' (Not a directory); "
                             "give --out a folder you can write to."),
]


def _bad_call(args: list[str], message: str, folder: Path) -> tuple[list[str], str]:
    """The argv and the expected sentence, with {file} a plain file in `folder` (no folder can go under it)."""
    file = folder / "notes.txt"
    file.write_text("not a folder\n")
    args = [arg.replace("{file}", str(file)) for arg in args]
    if "--out" not in args:
        args += ["--out", str(folder / "qa")]
    return ["make-qa", *args], message.replace("{file}", str(file))


@pytest.mark.parametrize("args, message", BAD_INPUTS)
def test_bad_input_is_one_sentence_and_exit_2(args, message, tmp_path, capsys):
    argv, sentence = _bad_call(args, message, tmp_path)
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"potwatch: error: {sentence}"]
    assert not (tmp_path / "qa").exists()  # refused before anything was written


def test_bad_input_from_the_shell(tmp_path):
    argv, sentence = _bad_call(*BAD_INPUTS[1], tmp_path)
    run = potwatch(*argv)
    assert run.returncode == 2 and run.stderr.splitlines() == [f"potwatch: error: {sentence}"]
