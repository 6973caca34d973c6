"""`--mem-cap auto`: the decision from given figures, the figures read from the machine and the model,
and `auto` through the session, the CLI and the refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from potwatch.compression import auto_cap
from potwatch.compression.auto_cap import (MARGIN, Activations, decide_cap, estimate_activations, free_memory,
                                           mem_available)
from potwatch.compression.mem_cap import is_auto, parse_optional_mem_cap
from potwatch.errors import MemCapError
from potwatch.streaming.session import StreamSession
from tests.conftest import random_frames
from tests.device import ON_CUDA, TEST_DEVICE, load_test_model

ROOT = Path(__file__).resolve().parents[1]
DEMO_VIDEO = ROOT / "assets" / "demo.mp4"
GB = 10**9


# --- the decision, every figure given -----------------------------------------------------------------
def test_the_cap_is_the_largest_that_fits_with_the_margin():
    activations = Activations(fixed=GB, per_token=300)
    choice = decide_cap(free=10 * GB, weights=4 * GB, activations=activations, bytes_per_token=1000, where="free")
    room = (1 - MARGIN) * 10 * GB
    assert choice.bound == "fits" and choice.cap_bytes == choice.tokens * 1000
    assert choice.cap_bytes + activations.at(choice.tokens) <= room
    one_more = choice.tokens + 1
    assert one_more * 1000 + activations.at(one_more) > room  # the largest: one more token breaks it
    assert choice.activations == activations.at(choice.tokens)
    text = choice.describe()
    assert text.startswith("auto: 10.00 GB free after weights 4.00 GB and activations ")
    assert f"→ cap {choice.cap_bytes / GB:.2f} GB ≈ {choice.tokens:,} tokens" in text


def test_the_ceiling_and_the_hour_cut_the_cap_and_say_so():
    activations = Activations(fixed=0, per_token=0)
    capped = decide_cap(8 * GB, 0, activations, 1000, ceiling=2 * GB, ceiling_text="at most 25% of RAM")
    assert (capped.bound, capped.cap_bytes) == ("CPU share", 2 * GB) and "at most 25% of RAM" in capped.describe()
    hour = decide_cap(8 * GB, 0, activations, 1000, ceiling=2 * GB, horizon_tokens=5000, horizon_text="one hour")
    assert (hour.bound, hour.tokens, hour.cap_bytes) == ("one hour", 5000, 5_000_000)


def test_sessions_share_the_room_each_with_its_own_activations():
    activations = Activations(fixed=GB, per_token=0)
    one = decide_cap(9 * GB, 0, activations, 1000, margin=0.0)
    two = decide_cap(9 * GB, 0, activations, 1000, margin=0.0, sessions=2)
    assert one.cap_bytes == 8 * GB and two.cap_bytes == int(3.5 * GB)


def test_nothing_fits_is_one_sentence():
    with pytest.raises(MemCapError, match=r"^--mem-cap auto found 1.00 GB free .*give a cap such as") as error:
        decide_cap(GB, GB, Activations(fixed=2 * GB, per_token=0), 1000, where="free")
    assert "\n" not in str(error.value)


def test_mem_available_from_meminfo_text():
    text = "MemTotal:       24683568 kB\nMemFree:  100 kB\nMemAvailable:   23238612 kB\n"
    assert mem_available(text) == 23238612 * 1024
    assert mem_available("MemTotal: 5 kB\n") is None


def test_a_cgroup_limit_below_available_ram_wins(monkeypatch):
    monkeypatch.setattr(auto_cap, "memory_room", lambda: 500_000_000)
    assert free_memory("cpu") == (500_000_000, "free under the cgroup memory limit")
    monkeypatch.setattr(auto_cap, "memory_room", lambda: 10**18)
    free, where = free_memory("cpu")
    assert free == mem_available() and where == "of RAM available"


# --- the figures from a real model ---------------------------------------------------------------------
def test_activations_count_scores_cache_reads_and_logits(demo_adapter):
    text = demo_adapter.model.config.get_text_config()
    b = demo_adapter.dtype.itemsize
    heads, kv_heads = text.num_attention_heads, text.num_key_value_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    small = estimate_activations(demo_adapter.model, 60, demo_adapter.dtype)
    large = estimate_activations(demo_adapter.model, 600, demo_adapter.dtype)
    assert small.per_token == 60 * heads * 4 + 2 * (heads + kv_heads) * head_dim * b
    assert small.fixed >= 60 * 60 * heads * 4 + text.vocab_size * (b + 4)
    assert large.fixed > small.fixed and large.per_token > small.per_token
    vision = demo_adapter.model.config.vision_config
    patches = 600 * vision.spatial_merge_size ** 2
    assert large.fixed >= patches * patches * vision.num_heads * 4  # the vision tower's scores


# --- auto through the session -----------------------------------------------------------------------------
def test_session_with_auto_cap_streams_under_it():
    adapter = load_test_model("tiny")
    session = StreamSession(adapter, mem_cap="auto", frame_size=(240, 320), max_new_tokens=4, threads=None)
    chosen = session.auto_cap
    assert session.cap_bytes == chosen.cap_bytes and session.cache.capacity == chosen.tokens
    assert chosen.describe().startswith("auto: ") and "→ cap" in chosen.describe()
    free, _ = free_memory(adapter.device)
    assert chosen.cap_bytes + chosen.activations <= free
    if TEST_DEVICE.type == "cpu":
        assert chosen.cap_bytes <= auto_cap.CPU_SHARE * free
    # one hour at 2 fps is far less than this machine's memory for the tiny model
    per_group = adapter.tokens_per_group(240, 320)
    assert chosen.bound == "one hour" and chosen.tokens == 3600 * 2 // adapter.frames_per_group * per_group
    session.feed(random_frames(6, size=(240, 320)))
    session.ask("what?")
    assert session.stats()["peak_bytes"] <= session.cap_bytes


def test_reset_to_auto_and_back(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap="400kB", threads=None)
    assert session.auto_cap is None
    session.reset(mem_cap="auto", kv_bits=4)
    assert session.auto_cap is not None and session.cap_bytes == session.auto_cap.cap_bytes
    assert session.kv_bits == 4 and session.cache.capacity == session.auto_cap.tokens
    session.reset(mem_cap="400kB")
    assert session.auto_cap is None and session.cap_bytes == 400_000


def test_serve_gets_each_sessions_share(demo_adapter, monkeypatch):
    from potwatch.compression.auto_cap import auto_cap_for

    monkeypatch.setattr(auto_cap, "HORIZON_S", 1e12)  # no hour bound: the memory alone decides
    monkeypatch.setattr(auto_cap, "free_memory", lambda device: (8 * GB, "free"))
    one = auto_cap_for(demo_adapter, "tar_van", 16, 2.0, (240, 320))
    four = auto_cap_for(demo_adapter, "tar_van", 16, 2.0, (240, 320), sessions=4)
    per_token = one.cap_bytes // one.tokens
    assert 0.8 * one.cap_bytes / 4 <= four.cap_bytes <= one.cap_bytes / 4 + per_token
    scored = auto_cap_for(demo_adapter, "global_score", 16, 2.0, (240, 320))
    assert scored.cap_bytes // scored.tokens > per_token  # a per-token score costs bytes: fewer tokens fit


def test_auto_too_small_for_a_block_says_so(demo_adapter, monkeypatch):
    session = StreamSession(demo_adapter, mem_cap="400kB", threads=None)
    per_token = session.geometry.bytes_per_token
    monkeypatch.setattr(auto_cap, "estimate_activations", lambda *args: Activations(0, 0))
    monkeypatch.setattr(auto_cap, "free_memory", lambda device: (int(20 * per_token / (1 - MARGIN)) + 1, "free"))
    with pytest.raises(MemCapError, match=r"^--mem-cap auto found room for \d+ tokens \(auto: .*close other programs"):
        StreamSession(demo_adapter, mem_cap="auto", frame_size=(240, 320), threads=None)


def test_auto_is_refused_where_a_size_is_needed(capsys):
    assert is_auto(" AUTO ") and not is_auto("1GB") and not is_auto(None)
    with pytest.raises(MemCapError, match="'auto' is not taken here; give a size such as 1GB"):
        parse_optional_mem_cap("auto")
    from potwatch.app.cli import main

    assert main(["bench", "--mem-cap", "auto", "--quick"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("potwatch: error: ") and "one fixed cap" in last


def test_watch_with_auto_cap_prints_what_it_chose():
    run = subprocess.run(
        [sys.executable, "-m", "potwatch.app.cli", "watch", str(DEMO_VIDEO), "--model", "tiny", "--mem-cap", "auto",
         "--max-frames", "6", "--ask", "what happened?", "--max-new-tokens", "4"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    line = next(line for line in run.stderr.splitlines() if line.startswith("potwatch: mem-cap auto: "))
    assert " after weights " in line and " and activations " in line and " → cap " in line and " tokens" in line
    assert "under the cap" in run.stdout
    run = subprocess.run(
        [sys.executable, "-m", "potwatch.app.cli", "watch", str(DEMO_VIDEO), "--model", "tiny", "--mem-cap", "auto",
         "--max-frames", "4", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    summary = json.loads(run.stdout)
    assert summary["mem_cap_auto"].startswith("auto: ") and summary["peak_under_cap"]
    assert f"{summary['capacity_tokens']:,} tokens" in summary["mem_cap_auto"]


# --- CUDA: free device memory, and the estimate against the measured peak ------------------------------------
@pytest.mark.skipif(not ON_CUDA, reason="needs POTWATCH_TEST_DEVICE=cuda and a GPU")
def test_cuda_free_memory_and_the_estimate_covers_the_measured_peak():
    adapter = load_test_model("demo-2b")
    free, where = free_memory(adapter.device)
    total = torch.cuda.get_device_properties(adapter.device).total_memory
    assert 0 < free <= total and "cuda" in where
    session = StreamSession(adapter, mem_cap="auto", frame_size=(360, 640), threads=None)
    assert session.auto_cap.bound in ("fits", "one hour")
    session.feed(random_frames(8, size=(360, 640)))
    estimate = estimate_activations(adapter.model, session.block_tokens, adapter.dtype)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(adapter.device)
    torch.cuda.reset_peak_memory_stats(adapter.device)
    session.feed(random_frames(2, size=(360, 640), seed=9))
    session.ask("what?")
    peak = torch.cuda.max_memory_allocated(adapter.device) - before
    assert peak <= estimate.at(session.cache.length + session.block_tokens), (peak, estimate)
