"""The `potwatch` command end to end, as a user runs it: real decoding of the shipped demo video."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_VIDEO = ROOT / "assets" / "demo.mp4"


def potwatch(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "potwatch.app.cli", *args], capture_output=True, text=True, cwd=ROOT,
        input=stdin, timeout=300,
    )


def test_watch_demo_video_json_under_a_small_cap():
    run = potwatch(
        "watch", str(DEMO_VIDEO), "--model", "demo", "--mem-cap", "400kB", "--json",
        "--ask-at", "10s", "What is moving?", "--ask", "What happened?", "--max-new-tokens", "6",
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["frames"] == 60  # 30 s at the default 2 fps
    assert summary["mem_cap_bytes"] == 400_000
    assert summary["peak_cache_bytes"] <= 400_000 and summary["allocated_cache_bytes"] <= 400_000
    assert summary["peak_under_cap"] is True
    assert summary["compressions"] > 0
    assert [a["question"] for a in summary["answers"]] == ["What is moving?", "What happened?"]
    assert summary["answers"][0]["frames_seen"] == 20  # asked when the video reached 10 s
    assert all(a["meaningless"] and "meaningless" in a["notice"] for a in summary["answers"])
    assert summary["ms_per_frame"] > 0


def test_watch_text_output_shows_answers_and_summary():
    run = potwatch("watch", str(DEMO_VIDEO), "--mem-cap", "400kB", "--max-frames", "12", "--ask", "What?",
                   "--max-new-tokens", "4")
    assert run.returncode == 0, run.stderr
    assert "Q: What?" in run.stdout and "meaningless" in run.stdout
    assert "summary: 12 frames" in run.stdout and "under the cap" in run.stdout
    assert "holds about" in run.stderr  # the cap in tokens and frames


def test_interactive_questions_from_stdin():
    run = potwatch("watch", str(DEMO_VIDEO), "--max-frames", "6", "--interactive", "--json",
                   "--max-new-tokens", "3", stdin="first?\nsecond?\n")
    assert run.returncode == 0, run.stderr
    assert [a["question"] for a in json.loads(run.stdout)["answers"]] == ["first?", "second?"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["watch", "missing.mp4"], "does not exist"),
        (["watch", str(DEMO_VIDEO), "--mem-cap", "lots"], "write it like 2GB"),
        (["watch", str(DEMO_VIDEO), "--mem-cap", "0"], "zero"),
        (["watch", str(DEMO_VIDEO), "--mem-cap=-1GB"], "negative"),
        (["watch", str(DEMO_VIDEO), "--mem-cap", "100kB"], "raise --mem-cap to at least"),
        (["watch", str(DEMO_VIDEO), "--policy", "nope"], "pick one of"),
        (["watch", str(DEMO_VIDEO), "--model", "no-such-model-here"], "Cannot load model"),
        (["watch", str(DEMO_VIDEO), "--ask-at", "soon", "q"], "not a stream time"),
    ],
)
def test_user_errors_exit_2_with_one_sentence(args, message, capsys):
    from potwatch.app.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert message in last and last.startswith("potwatch: error: ")


def test_a_user_error_in_a_real_process_has_no_traceback():
    run = potwatch("watch", str(DEMO_VIDEO), "--mem-cap", "100kB")
    assert run.returncode == 2
    assert "raise --mem-cap to at least" in run.stderr and "Traceback" not in run.stderr


def test_uncapped_run_reports_no_cap():
    run = potwatch("watch", str(DEMO_VIDEO), "--mem-cap", "none", "--policy", "none", "--max-frames", "8", "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["mem_cap_bytes"] is None and summary["compressions"] == 0 and summary["frames_covered"] == 8


def test_watch_with_quantised_kv_holds_more_frames_under_the_same_cap():
    runs = {}
    for bits in ("16", "4"):
        run = potwatch("watch", str(DEMO_VIDEO), "--model", "demo", "--mem-cap", "400kB", "--kv-bits", bits,
                       "--max-frames", "40", "--ask", "what happened?", "--json")
        assert run.returncode == 0, run.stderr
        runs[bits] = json.loads(run.stdout)
        assert runs[bits]["kv_bits"] == int(bits) and runs[bits]["peak_under_cap"]
    assert runs["4"]["capacity_tokens"] > runs["16"]["capacity_tokens"]
    assert runs["4"]["compressions"] < runs["16"]["compressions"]


@pytest.mark.parametrize("policy", ["expected_attention", "global_score", "keep_merge", "adakv"])
def test_watch_with_an_attention_or_slot_count_policy_stays_under_the_cap(policy):
    run = potwatch("watch", str(DEMO_VIDEO), "--model", "demo", "--policy", policy, "--mem-cap", "400kB",
                   "--ask", "What happened?", "--max-new-tokens", "4", "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["policy"] == policy and summary["compressions"] > 0
    assert summary["peak_cache_bytes"] <= 400_000 and summary["allocated_cache_bytes"] <= 400_000
