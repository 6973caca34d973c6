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
    activations = Activations.of(GB, 300)
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
    activations = Activations.of(0, 0)
    capped = decide_cap(8 * GB, 0, activations, 1000, ceiling=2 * GB, ceiling_text="at most 25% of RAM")
    assert (capped.bound, capped.cap_bytes) == ("CPU share", 2 * GB) and "at most 25% of RAM" in capped.describe()
    hour = decide_cap(8 * GB, 0, activations, 1000, ceiling=2 * GB, horizon_tokens=5000, horizon_text="one hour")
    assert (hour.bound, hour.tokens, hour.cap_bytes) == ("one hour", 5000, 5_000_000)


def test_sessions_share_the_room_each_with_its_own_activations():
    activations = Activations.of(GB, 0)
    one = decide_cap(9 * GB, 0, activations, 1000, margin=0.0)
    two = decide_cap(9 * GB, 0, activations, 1000, margin=0.0, sessions=2)
    assert one.cap_bytes == 8 * GB and two.cap_bytes == int(3.5 * GB)


def test_nothing_fits_is_one_sentence():
    with pytest.raises(MemCapError, match=r"^--mem-cap auto found 1.00 GB free .*give a cap such as") as error:
        decide_cap(GB, GB, Activations.of(2 * GB, 0), 1000, where="free")
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
    (small_fixed, small_per_token), = estimate_activations(demo_adapter.model, 60, demo_adapter.dtype).phases
    (large_fixed, large_per_token), = estimate_activations(demo_adapter.model, 600, demo_adapter.dtype).phases
    assert small_per_token == 60 * heads * 4 + 2 * (heads + kv_heads) * head_dim * b
    assert small_fixed >= 60 * 60 * heads * 4 + text.vocab_size * (b + 4)
    assert large_fixed > small_fixed and large_per_token > small_per_token
    vision = demo_adapter.model.config.vision_config
    patches = 600 * vision.spatial_merge_size ** 2
    assert large_fixed >= patches * patches * vision.num_heads * 4  # the vision tower's scores


def test_the_compression_pass_is_a_phase_of_its_own(demo_adapter):
    geometry = demo_adapter.geometry()
    forward, compress = estimate_activations(demo_adapter.model, 60, demo_adapter.dtype, geometry).phases
    assert compress == (auto_cap.SCRATCH_BYTES, geometry.layers * geometry.kv_heads * auto_cap.PASS_BYTES
                        + geometry.bytes_per_token // auto_cap.COMPACT_SHARE)
    both = Activations((forward, compress))
    assert both.at(10**6) == max(forward[0] + forward[1] * 10**6, compress[0] + compress[1] * 10**6)
    # the cap must fit beside each phase: the tighter one decides
    choice = decide_cap(GB, 0, both, geometry.bytes_per_token)
    for fixed, per_token in both.phases:
        assert choice.cap_bytes + fixed + per_token * choice.tokens <= (1 - MARGIN) * GB


def _torch_peak(run) -> int:
    """The most bytes torch's CPU allocations held at once while `run` ran (torch's profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    changes = sorted((event.start_ns(), event.nbytes()) for event in prof.profiler.kineto_results.events()
                     if event.name() == "[memory]")
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return peak


@pytest.mark.skipif(TEST_DEVICE.type != "cpu", reason="measures CPU allocations; the CUDA test below measures the GPU's")
@pytest.mark.parametrize("policy", ["tar_van", "adakv", "keep_merge"])
def test_the_estimate_covers_the_measured_peak_on_cpu(policy):
    """A compression pass, a block and an answer, each measured on a full 60 MB cache of demo-2b: the
    estimate at that cache length covers every one (the policies with the largest working sets)."""
    from potwatch.world.demo_scene import render_frame

    session = StreamSession(load_test_model("demo-2b"), mem_cap="60MB", policy=policy, frame_size=(360, 640),
                            threads=None, max_new_tokens=3)
    frames = [render_frame(i / 2, (640, 360)) for i in range(200)]
    index = 0
    while session.stats()["compressions"] < 1:
        session.feed(frames[index % 200: index % 200 + 2])
        index += 2
    estimate = estimate_activations(session.adapter.model, session.block_tokens, session.adapter.dtype,
                                    session.geometry)
    monitor = session.monitor
    room = session.cache.capacity - session.cache.length + session.block_tokens
    compress = _torch_peak(lambda: monitor.make_room(room, headroom=0))
    block = _torch_peak(lambda: session.feed(frames[index % 200: index % 200 + 2]))
    answer = _torch_peak(lambda: session.ask("what?"))
    assert monitor.event_count >= 2  # the pass measured did compress
    bound = estimate.at(session.cache.capacity)
    assert max(compress, block, answer) <= bound, (compress, block, answer, bound)


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
    plain = auto_cap_for(demo_adapter, "window", 16, 2.0, (240, 320))
    # tar_van keeps a value norm per token (its per-token state costs bytes), window keeps nothing: more fit
    assert plain.cap_bytes // plain.tokens < per_token


def test_auto_too_small_for_a_block_says_so(demo_adapter, monkeypatch):
    session = StreamSession(demo_adapter, mem_cap="400kB", threads=None)
    per_token = session.geometry.bytes_per_token
    monkeypatch.setattr(auto_cap, "estimate_activations", lambda *args: Activations.of(0, 0))
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
    from potwatch.world.demo_scene import render_frame

    adapter = load_test_model("demo-2b")
    free, where = free_memory(adapter.device)
    total = torch.cuda.get_device_properties(adapter.device).total_memory
    assert 0 < free <= total and str(adapter.device) in where
    auto = StreamSession(adapter, mem_cap="auto", frame_size=(360, 640), threads=None)
    assert auto.cap_bytes + auto.auto_cap.activations <= free
    auto.close()
    session = StreamSession(adapter, mem_cap="60MB", policy="adakv", frame_size=(360, 640), threads=None,
                            max_new_tokens=3)
    frames = [render_frame(i / 2, (640, 360)) for i in range(200)]
    index = 0
    while session.stats()["compressions"] < 1:
        session.feed(frames[index % 200: index % 200 + 2])
        index += 2
    estimate = estimate_activations(adapter.model, session.block_tokens, adapter.dtype, session.geometry)
    room = session.cache.capacity - session.cache.length + session.block_tokens
    peaks = []
    for run in (lambda: session.monitor.make_room(room, headroom=0),
                lambda: session.feed(frames[index % 200: index % 200 + 2]), lambda: session.ask("what?")):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(adapter.device)
        torch.cuda.reset_peak_memory_stats(adapter.device)
        run()
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated(adapter.device) - before)
    assert max(peaks) <= estimate.at(session.cache.capacity), (peaks, estimate)
