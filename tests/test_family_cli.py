"""Every family's demo model end to end: the `potwatch` command on the shipped demo video, the Python
API, `potwatch models`, and the from_pretrained path of a saved demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from potwatch import StreamSession, load_model
from potwatch.app.cli import main
from potwatch.models.family import smallest_checkpoints
from potwatch.models.registry import save_demo
from potwatch.streaming.sources import FileSource
from tests.conftest import random_frames
from tests.device import load_test_model
from tests.families import FAMILY_DEMOS, family_adapter

DEMO_VIDEO = Path(__file__).resolve().parents[1] / "assets" / "demo.mp4"
CLI_CAP = {"demo-llava": "180kB", "demo-smolvlm": "300kB", "demo-qwen3": "320kB"}  # compress within 20 frames


@pytest.mark.parametrize("name", FAMILY_DEMOS)
def test_watch_json_under_a_small_cap(name, capsys):
    code = main([
        "watch", str(DEMO_VIDEO), "--model", name, "--mem-cap", CLI_CAP[name], "--json", "--max-frames", "20",
        "--ask-at", "5s", "What is moving?", "--ask", "What happened?", "--max-new-tokens", "4",
    ])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == name and summary["frames"] == 20
    assert summary["peak_cache_bytes"] <= summary["mem_cap_bytes"] and summary["peak_under_cap"] is True
    assert summary["allocated_cache_bytes"] <= summary["mem_cap_bytes"]
    assert summary["compressions"] > 0
    assert summary["positions"] == ("keep" if name == "demo-qwen3" else "compact")
    assert [a["question"] for a in summary["answers"]] == ["What is moving?", "What happened?"]
    assert summary["answers"][0]["frames_seen"] == 10  # asked when the video reached 5 s
    assert all(a["meaningless"] and "meaningless" in a["notice"] for a in summary["answers"])


@pytest.mark.parametrize("name", FAMILY_DEMOS)
def test_a_cap_too_small_names_the_minimum(name, capsys):
    assert main(["watch", str(DEMO_VIDEO), "--model", name, "--mem-cap", "30kB"]) == 2
    assert "raise --mem-cap to at least" in capsys.readouterr().err


@pytest.mark.parametrize("name", FAMILY_DEMOS)
def test_the_python_api_end_to_end(name):
    model = load_test_model(name)
    session = StreamSession(model, mem_cap=CLI_CAP[name], policy="tar_van", fps=2, max_new_tokens=4)
    for frame in FileSource(str(DEMO_VIDEO), fps=2, max_frames=16):
        session.feed(frame)
    pieces = list(session.ask_stream("What happened?"))
    answer = pieces[-1]
    assert answer.meaningless and answer.frames_seen == 16
    assert answer.text.startswith("".join(pieces[:-1]).strip())  # an unfinished UTF-8 tail is held back
    stats = session.stats()
    assert stats["model"] == name and stats["demo_model"] and stats["peak_bytes"] <= session.cap_bytes
    session.close()


def test_models_lists_families_demos_and_bytes_per_token(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for line in (
        "llava-hf/llava-onevision-qwen2-0.5b-ov-hf: 24 layers x 2 KV heads x 64 = 12,288 B/token K+V",
        "HuggingFaceTB/SmolVLM2-256M-Video-Instruct: 30 layers x 3 KV heads x 64 = 23,040 B/token K+V",
        "Qwen/Qwen2-VL-2B-Instruct: 28 layers x 2 KV heads x 128 = 28,672 B/token K+V",
        "Qwen/Qwen3-VL-2B-Instruct: 28 layers x 8 KV heads x 128 = 114,688 B/token K+V",
    ):
        assert line in out
    for name in ("demo", "demo-2b", "demo-qwen2.5", "demo-llava", "demo-llava-0.5b", "demo-smolvlm", "demo-smolvlm-256m",
                 "demo-qwen3", "demo-qwen3-2b"):
        assert f"  {name} " in out


@pytest.mark.parametrize("name, family", [
    ("demo-2b", "qwen2_vl"), ("demo-llava-0.5b", "llava_onevision"), ("demo-smolvlm-256m", "smolvlm"),
    ("demo-qwen3-2b", "qwen3_vl"),
])
def test_real_geometry_demos_cost_what_the_real_checkpoints_cost(name, family):
    checkpoint = next(c for c in smallest_checkpoints() if c.family == family)
    adapter = load_model(name, dtype="bfloat16")
    assert adapter.geometry() == checkpoint.geometry(torch.bfloat16)
    per_frame = {"llava_onevision": 196, "smolvlm": 64}.get(family)  # image tokens a frame, as the real model
    if per_frame:
        assert adapter.grid_side**2 == per_frame


@pytest.mark.parametrize("name", FAMILY_DEMOS)
def test_a_saved_demo_loads_through_from_pretrained_and_answers_the_same(name, tmp_path):
    demo = family_adapter(name)
    loaded = load_test_model(str(save_demo(name, tmp_path / name)))
    assert loaded.is_demo and loaded.family == demo.family and type(loaded) is type(demo)
    assert loaded.processor == demo.processor and loaded.geometry() == demo.geometry()
    for key, tensor in demo.model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[key]), key
    answers = []
    for adapter in (demo, loaded):
        session = StreamSession(adapter, mem_cap="1MB", max_new_tokens=5)
        session.feed(random_frames(3, seed=9))
        answers.append(session.ask("what?").text)
    assert answers[0] == answers[1]
