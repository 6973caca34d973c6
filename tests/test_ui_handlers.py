"""The web UI's event handlers, called as Gradio would call them but without a browser."""

from __future__ import annotations

from dataclasses import replace

import re
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

pytest.importorskip("gradio")
pytest.importorskip("matplotlib")

from potwatch.app.cli import main  # noqa: E402
from potwatch.app.ui.handlers import DEMO_VIDEO, REFRESH, Handlers, named  # noqa: E402
from potwatch.app.ui.player import PushSource  # noqa: E402
from potwatch.app.ui.plots import memory_figure, retention_figure  # noqa: E402
from potwatch.app.ui.sessions import HISTORY_SAMPLES, MemorySample, PoolFullError, SessionPool, TabSettings  # noqa: E402
from potwatch.errors import MemCapError, UserError  # noqa: E402
from potwatch.world.demo_scene import render_frames  # noqa: E402

SMALL_CAP = "400kB"


def tab_request(name: str = "tab-a") -> SimpleNamespace:
    """What the handlers read from a gr.Request: the browser tab's session hash."""
    return SimpleNamespace(session_hash=name)


def is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def wait_for(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def playing_demo(handlers, pool, frames: int):
    """A tab that loaded, chose the demo video and plays it, once `frames` frames are in: (request, tab)."""
    request = tab_request()
    handlers.load(request)
    handlers.use_demo_video(request)
    handlers.play(request)
    tab = pool.get(request.session_hash)
    wait_for(lambda: tab.stats["frames_seen"] >= frames, what=f"{frames} frames")
    return request, tab


@pytest.fixture
def pool(demo_adapter):
    pool = SessionPool(demo_adapter, max_sessions=2, settings=TabSettings(mem_cap=SMALL_CAP), max_new_tokens=6)
    yield pool
    pool.close_all()


@pytest.fixture
def handlers(pool):
    return Handlers(pool)


def write_clip(path: Path, seconds: float, fps: int = 10, size: tuple[int, int] = (320, 240)) -> Path:
    """A clip of the demo scene; `size` is (width, height)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for rgb in render_frames(seconds, size=size, fps=fps):
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


class Page:
    """What the browser shows of the refresh outputs: each update applied in the order it arrives (a
    skipped output leaves what was there)."""

    def __init__(self) -> None:
        self.shown: dict[str, object] = {}

    def receive(self, outputs: tuple) -> "Page":
        for name, value in named(outputs).items():
            if not is_skip(value):
                self.shown[name] = value
        return self

    def status(self) -> str:
        return self.shown["status"]

    def button(self, name: str) -> dict:
        return self.shown[name]


def gradio_call(app, handler: str, inputs: list, session: str = "tab-a") -> list:
    """Call one event of the built page the way Gradio's server does (its components' preprocessing
    included), for `handler`'s event; returns the outputs as the page gets them."""
    import asyncio

    import gradio as gr
    from gradio.state_holder import SessionState

    fn = next(f for f in app.fns.values() if getattr(f.fn, "__name__", "") == handler)
    request = gr.Request(session_hash=session)
    result = asyncio.run(app.process_api(block_fn=fn, inputs=inputs, state=SessionState(app), request=request,
                                         session_hash=session))
    return result["data"]


# --- the pool ------------------------------------------------------------------------------------
def test_each_tab_gets_its_own_session_and_the_pool_is_bounded(pool):
    first, second = pool.open("a"), pool.open("b")
    assert first.session is not second.session and pool.open("a") is first
    with pytest.raises(PoolFullError, match=r"already watches for as many tabs as it may \(2 tabs at once\)"):
        pool.open("c")
    assert pool.close("a") and len(pool) == 1
    assert pool.open("c").session is not first.session  # the freed slot is reused
    assert not pool.close("nobody")


def test_pool_refuses_settings_that_cannot_work(demo_adapter):
    with pytest.raises(UserError, match="max-sessions"):
        SessionPool(demo_adapter, max_sessions=0)
    with pytest.raises(MemCapError):
        SessionPool(demo_adapter, settings=TabSettings(mem_cap="lots"))
    with pytest.raises(UserError, match="Unknown policy"):
        SessionPool(demo_adapter, settings=TabSettings(policy="magic"))
    with pytest.raises(UserError, match="frame rate"):
        SessionPool(demo_adapter, settings=TabSettings(fps=0))
    with pytest.raises(MemCapError, match="raise --mem-cap"):
        SessionPool(demo_adapter, settings=TabSettings(mem_cap="10kB")).check()
    assert TabSettings(mem_cap=" none ").checked().mem_cap == "none"


# --- page life -----------------------------------------------------------------------------------
def test_load_opens_a_session_and_unload_frees_it(handlers, pool):
    outputs = handlers.load(tab_request())
    shown, (chat, cap_words) = named(outputs), outputs[len(REFRESH):]
    assert shown["status"].startswith("**ready") and "of 400.00 kB" in shown["status"]
    assert "frames seen" in shown["numbers"] and "under the cap" in shown["numbers"]
    assert shown["memory"] is not None and shown["retention"] is not None and shown["frame"] is None
    assert chat == [] and "The cap 400.00 kB holds" in cap_words and "demo video" in shown["video"]
    assert len(pool) == 1
    handlers.unload(tab_request())
    assert len(pool) == 0


def test_a_visitor_over_the_limit_gets_a_clear_message_and_a_session_once_one_frees(handlers):
    handlers.load(tab_request("a"))
    handlers.load(tab_request("b"))
    refused = handlers.load(tab_request("c"))
    assert refused[0].startswith("⚠") and "(2 tabs at once)" in refused[0] and "--" not in refused[0]
    assert handlers.tick(tab_request("c"))[0] == refused[0]
    handlers.unload(tab_request("a"))
    assert handlers.tick(tab_request("c"))[0].startswith("**ready")


def test_tick_sends_only_what_changed(handlers):
    handlers.load(tab_request())
    assert all(is_skip(part) for part in handlers.tick(tab_request()))


# --- file playback -------------------------------------------------------------------------------
def test_demo_file_plays_in_real_time_pauses_resumes_and_stops(handlers, pool):
    request = tab_request()
    handlers.load(request)
    *refresh, upload_field = handlers.use_demo_video(request)
    assert "demo.mp4" in named(refresh)["video"] and upload_field is None
    started = time.monotonic()
    assert "playing demo.mp4" in handlers.play(request)[0]
    tab = pool.get(request.session_hash)
    wait_for(lambda: tab.stats["frames_seen"] >= 4, what="4 frames")
    elapsed = time.monotonic() - started
    assert tab.stats["frames_seen"] <= 2 * elapsed + 2  # real-time pace at 2 fps, not as fast as decoding
    shown = named(handlers.tick(request))
    assert "playing demo.mp4 at" in shown["status"] and shown["frame"].shape == (240, 320, 3)

    assert "paused demo.mp4" in handlers.pause(request)[0]
    time.sleep(0.3)
    paused_at = tab.stats["frames_seen"]
    time.sleep(1.2)
    assert tab.stats["frames_seen"] == paused_at  # paused: nothing is fed, nothing queues up
    handlers.play(request)
    wait_for(lambda: tab.stats["frames_seen"] >= paused_at + 2, what="frames after resuming")
    assert "stopped" in handlers.stop(request)[0]
    stopped_at = tab.stats["frames_seen"]
    time.sleep(0.8)
    assert tab.stats["frames_seen"] == stopped_at
    assert stopped_at < 60 and tab.stats["dropped_frames"] == 0


def test_a_short_file_plays_to_the_end(handlers, pool, tmp_path):
    request = tab_request()
    handlers.load(request)
    tab = pool.get(request.session_hash)
    tab.choose_video(write_clip(tmp_path / "clip.mp4", 1.5))
    handlers.play(request)
    wait_for(lambda: tab.runner is not None and tab.runner.finished, timeout=20, what="the clip to end")
    assert handlers.tick(request)[0].startswith("**finished clip.mp4**: 3 frames")


def test_only_video_files_are_accepted(handlers, tmp_path):
    request = tab_request()
    handlers.load(request)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "is not a video file" in named(handlers.upload(str(text), request))["video"]
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert "is empty" in named(handlers.upload(str(empty), request))["video"]
    assert "No video is chosen" in handlers.play(request)[0]
    shown = named(handlers.upload(str(DEMO_VIDEO), request))
    assert shown["video"] == "Video: **demo.mp4**" and "ready" in shown["status"]


def test_a_file_that_is_no_video_but_named_mp4_is_refused_in_plain_words(handlers, tmp_path):
    request = tab_request()
    handlers.load(request)
    renamed = tmp_path / "notes.mp4"
    renamed.write_text("a shopping list, not a video\n" * 20)
    words = named(handlers.upload(str(renamed), request))["video"]
    assert words == ("⚠ 'notes.mp4' is not a video this server can read (it may be another kind of file, or damaged); "
                     "upload an mp4, mkv or webm video.")
    assert "FFmpeg" not in words and "Invalid data" not in words


# --- webcam --------------------------------------------------------------------------------------
def test_push_source_samples_browser_frames_at_the_session_rate():
    source = PushSource(fps=2.0, queue_frames=3)
    frame = np.zeros((240, 320, 3), np.uint8)
    taken = [source.offer(frame, now=100.0 + 0.1 * step) for step in range(21)]  # 10 frames/s for 2 s
    assert sum(taken) == 3 and source.dropped == 2  # instants 0, 0.5, 1.0 queued; 1.5 and 2.0 over the queue


def test_push_source_counts_the_instants_a_slow_camera_sent_no_frame_for():
    source = PushSource(fps=2.0, queue_frames=100)
    frame = np.zeros((240, 320, 3), np.uint8)
    for step in range(15):  # 1.43 frames a second for 10 s: instants 0, 1, 2, 4, 5, 7, 8, 9, 11, ...
        source.offer(frame, now=100.0 + 0.7 * step)
    assert source.missed == 5 and source.dropped == 0  # instants 0 to 19 (9.8 s), 15 of them taken
    assert source.position_s == pytest.approx(9.8)
    source.offer(frame, now=100.0 + 30.0)  # the camera was stopped for 20 s: not frames lost
    assert source.missed == 5


def test_a_webcam_that_sends_too_few_frames_shows_them_as_dropped_with_why_and_the_stream_time(handlers, pool):
    request = tab_request()
    handlers.load(request)
    frames = list(render_frames(4.0, size=(320, 240), fps=10))[::7]  # about 1.4 frames a second
    for rgb in frames:
        handlers.webcam_frame(rgb, request)
        time.sleep(0.7)
    tab = pool.get(request.session_hash)
    wait_for(lambda: tab.stats.get("dropped_frames"), what="missed camera frames counted")
    status = handlers.tick(request)[0]
    assert re.search(r"\*\*watching the webcam at 0:0[2-4]\*\*", status), status
    assert re.search(r", (\d+) dropped \(the camera sent fewer than 2 frames a second\)", status), status
    assert "model was behind" not in status and tab.missed_frames() >= 1


def test_webcam_frames_are_fed_without_waiting_on_the_model(handlers, pool):
    request = tab_request()
    handlers.load(request)
    frames = list(render_frames(3.0, size=(320, 240), fps=10))
    for rgb in frames:
        started = time.monotonic()
        handlers.webcam_frame(rgb, request)
        assert time.monotonic() - started < 0.5
        time.sleep(0.1)
    tab = pool.get(request.session_hash)
    wait_for(lambda: tab.stats["frames_seen"] >= 5, what="webcam frames")
    assert 5 <= tab.stats["frames_seen"] <= 8  # about 2 a second of the 10 offered
    assert "watching the webcam" in handlers.tick(request)[0]
    time.sleep(3.2)
    assert "webcam stopped" in handlers.tick(request)[0]  # the browser sent nothing for a while
    shown = named(handlers.toggle_webcam(request))
    assert shown["webcam_pause"]["value"] == "Resume watching" and "webcam paused" in shown["status"]
    seen = tab.stats["frames_seen"]
    handlers.webcam_frame(frames[0], request)
    time.sleep(0.3)
    assert tab.stats["frames_seen"] == seen


# --- chat ----------------------------------------------------------------------------------------
def test_a_question_is_answered_while_the_file_plays(handlers, pool):
    request, tab = playing_demo(handlers, pool, 4)
    updates = list(handlers.ask("  What is moving?  ", request))
    assert updates[0][1] == ""  # the question box is cleared at once
    chat = updates[-1][0]
    assert chat[0] == {"role": "user", "content": "What is moving?"}
    answer = chat[1]["content"]
    assert "[demo model with random weights: this answer is meaningless]" in answer
    assert " s (first token " in answer and "frames in cache" in answer
    assert len(updates) >= 3  # the answer streamed in pieces
    seen = tab.stats["frames_seen"]
    wait_for(lambda: tab.stats["frames_seen"] >= seen + 2, what="the stream to keep flowing")
    assert tab.stats["turns"] == 1


def test_an_empty_question_gets_a_hint_beside_the_box_and_a_question_before_any_frame_a_plain_reply(handlers, pool):
    request = tab_request()
    handlers.load(request)
    chat, box, hint = next(handlers.ask("   ", request))
    assert is_skip(chat) and is_skip(box) and hint.startswith("Type a question first")
    updates = list(handlers.ask("What colour was the box?", request))
    assert updates[0][1:] == ("", "")  # the box and the hint are cleared at once
    assert updates[-1][0][-1]["content"].startswith("I have not seen anything yet")
    assert pool.get(request.session_hash).stats["turns"] == 0  # the model was not asked


def applied(outputs: tuple) -> dict:
    """apply_settings' outputs after the refresh, by name."""
    from potwatch.app.ui.settings import SETTING_OUTPUTS

    assert len(outputs) == len(REFRESH) + 1 + len(SETTING_OUTPUTS)
    return {**named(outputs), **dict(zip(("chat", *SETTING_OUTPUTS), outputs[len(REFRESH):]))}


def watch_a_little(pool, request, frames: int = 4) -> None:
    """Feed a few frames straight into the tab's session, as its source would."""
    from tests.conftest import random_frames

    tab = pool.get(request.session_hash)
    tab.session.feed(random_frames(frames))
    tab.record(retention=True)


def tab_with_a_turn(handlers, pool):
    """A loaded tab that has watched a few frames and answered one question: (its request, the tab)."""
    request = tab_request()
    handlers.load(request)
    watch_a_little(pool, request)
    list(handlers.ask("Hello?", request))
    return request, pool.get(request.session_hash)


# --- settings ------------------------------------------------------------------------------------
def test_settings_apply_on_reset_and_bad_ones_change_nothing(handlers, pool):
    request, tab = tab_with_a_turn(handlers, pool)
    assert tab.stats["turns"] == 1
    out = applied(handlers.apply_settings("10kB", "tar_van", 2, 16, request))
    # the error sits beside the field it concerns, in the page's words, and the field shows the cap in force
    assert out["mem_cap_error"].startswith("⚠ A memory cap of 10kB is too small") and "--" not in out["mem_cap_error"]
    assert "at least 150.10 kB; type 200kB or more" in out["mem_cap_error"]  # a block of frames and an answer counted
    assert out["mem_cap"] == SMALL_CAP and out["policy_error"] == out["fps_error"] == out["kv_bits_error"] == ""
    assert "⚠" not in (out["status"] if not is_skip(out["status"]) else "")
    assert tab.session.cap_bytes == 400_000 and tab.chat  # unchanged
    out = applied(handlers.apply_settings("1MB", "window", -1, 16, request))
    assert "Frames per second" in out["fps_error"] and out["fps"] == 2.0 and out["mem_cap"] == SMALL_CAP
    assert applied(handlers.apply_settings("lots", "window", 1, 16, request))["mem_cap_error"].startswith(
        "⚠ Memory cap 'lots' is not a size")
    out = applied(handlers.apply_settings("1MB", "window", 1, 16, request))
    assert "of 1.00 MB" in out["status"] and "⚠" not in out["status"] and out["mem_cap_error"] == ""
    assert out["chat"] == [] and "The cap 1.00 MB holds" in out["cap_words"]
    assert (out["mem_cap"], out["policy"], out["fps"], out["kv_bits"]) == ("1MB", "window", 1.0, 16)
    assert tab.session.policy_name == "window" and tab.session.fps == 1.0 and tab.stats["turns"] == 0
    # quantised K/V: the same cap holds more tokens, and the words say so
    out = applied(handlers.apply_settings("1MB", "window", 1, "8", request))
    assert out["kv_bits"] == 8 and "in 8 bits" in out["cap_words"] and tab.session.cache.quantized
    assert tab.session.cache.capacity > replace(tab.session.geometry, kv_bits=16).tokens_for(1_000_000)
    out = applied(handlers.apply_settings("1MB", "window", 1, 5, request))
    assert "Pick 16, 8 or 4 bits per key/value" in out["kv_bits_error"] and out["kv_bits"] == 8
    assert tab.session.kv_bits == 8  # a bad width changes nothing
    out = applied(handlers.apply_settings("none", "window", 1, 8, request))
    assert "need a memory cap" in out["kv_bits_error"] and out["mem_cap"] == "1MB"


SENT_WORDS = re.compile(r"sent ([\d,]+) of ([\d,]+) visual tokens \(only what changed\)")


def test_ingest_only_what_changed_applies_on_reset_and_the_status_says_what_was_sent(handlers, pool):
    request = tab_request()
    handlers.load(request)
    tab = pool.get(request.session_hash)
    assert tab.session.stats()["ingest"]["mode"] == "all" and applied(
        handlers.apply_settings(SMALL_CAP, "tar_van", 2, 16, request))["ingest"] == "all"  # left out: as in force
    out = applied(handlers.apply_settings(SMALL_CAP, "tar_van", 2, 16, request, "changed", 0.2))
    assert (out["ingest"], out["change_threshold"]) == ("changed", 0.2)
    assert all(out[f"{field}_error"] == "" for field in ("mem_cap", "policy", "kv_bits", "fps", "ingest",
                                                          "change_threshold"))
    ingest = tab.session.stats()["ingest"]
    assert (ingest["mode"], ingest["change_threshold"], ingest["visual_tokens"]) == ("changed", 0.2, 0)
    assert "visual tokens" not in out["status"]  # nothing through the tower yet: nothing to say
    _, tab = playing_demo(handlers, pool, 8)  # a new video keeps the tab's settings
    wait_for(lambda: (tab.stats["ingest"]["visual_tokens"] or 0) > tab.stats["ingest"]["sent_tokens"],
             what="a group with unchanged tokens left out")
    status = handlers.tick(request)[0]
    match = SENT_WORDS.search(status)
    assert match, status
    sent, made = (int(number.replace(",", "")) for number in match.groups())
    assert 0 < sent < made  # the demo's kitchen barely moves: most of its tokens never reach the model
    handlers.stop(request)
    out = applied(handlers.apply_settings(SMALL_CAP, "tar_van", 2, 16, request, "all"))
    assert out["ingest"] == "all" and tab.session.stats()["ingest"]["mode"] == "all"
    assert "visual tokens" not in out["status"]


def test_a_bad_ingest_or_threshold_is_answered_beside_its_field_and_changes_nothing(handlers, pool):
    request, tab = tab_with_a_turn(handlers, pool)
    cache, seen, chat = tab.session.cache, tab.stats["frames_seen"], list(tab.chat)
    out = applied(handlers.apply_settings(SMALL_CAP, "tar_van", 2, 16, request, "sometimes", 0.15))
    assert out["ingest_error"] == ("⚠ Pick what to ingest from the list: every token or only what changed "
                                   "(not 'sometimes').")
    assert out["ingest"] == "all" and out["mem_cap_error"] == out["change_threshold_error"] == ""
    for typed in (-1, 11, "lots"):
        out = applied(handlers.apply_settings(SMALL_CAP, "tar_van", 2, 16, request, "changed", typed))
        assert out["change_threshold_error"] == ("⚠ The change threshold must be a number from 0 to 10; try 0.15 "
                                                 "(lower sends more tokens)."), typed
        assert (out["ingest"], out["change_threshold"], out["ingest_error"]) == ("all", 0.15, ""), typed
        assert "--" not in out["change_threshold_error"] and is_skip(out["chat"])
    assert tab.session.cache is cache and tab.stats["frames_seen"] == seen and tab.chat == chat  # nothing reset
    assert tab.session.stats()["ingest"]["mode"] == "all" and tab.settings.ingest == "all"


def test_the_ingest_fields_reach_the_session_through_gradio_s_own_event_processing(pool):
    """The request sits between the first four fields and the ingest ones (so older callers keep working):
    Gradio passes it by its type hint, and the page's six inputs land where they belong."""
    from potwatch.app.ui.page import build_app

    app = build_app(pool)
    gradio_call(app, "load", [])
    out = applied(tuple(gradio_call(app, "apply_settings", ["500kB", "window", 1, 16, "changed", 0.3])))
    assert (out["mem_cap"], out["policy"], out["fps"], out["ingest"], out["change_threshold"]) == (
        "500kB", "window", 1.0, "changed", 0.3)
    settings = pool.get("tab-a").session.settings
    assert (settings.cap_bytes, settings.ingest, settings.change_threshold) == (500_000, "changed", 0.3)


def test_a_waiting_tab_s_apply_and_examples_give_as_many_outputs_as_the_page_wires(pool):
    """Gradio refuses a reply with fewer outputs than the event has, and the page then never updates."""
    from potwatch.app.ui.page import build_app

    handlers = Handlers(pool, demo_video=None)
    wired = {getattr(f.fn, "__name__", ""): len(f.outputs) for f in build_app(pool).fns.values()}
    handlers.load(tab_request("a"))
    handlers.load(tab_request("b"))
    refused = handlers.apply_settings(SMALL_CAP, "tar_van", 2, 16, tab_request("c"))
    assert refused[0].startswith("⚠") and len(refused) == wired["apply_settings"]
    assert len(next(handlers.example("What is there?", tab_request("a")))) == wired["run"]  # no demo video here
    assert len(next(handlers.example("What is there?", tab_request("c")))) == wired["run"]


def test_serve_ingest_is_each_new_tab_s_starting_ingest(demo_adapter):
    from potwatch.app.cli import build_parser
    from potwatch.app.ui.serve import starting_settings

    args = build_parser().parse_args(["serve", "--ingest", "changed", "--change-threshold", "0.25"])
    settings = starting_settings(args, SMALL_CAP)
    assert (settings.ingest, settings.change_threshold) == ("changed", 0.25)
    assert starting_settings(build_parser().parse_args(["serve"]), SMALL_CAP).ingest == "all"  # the default
    pool = SessionPool(demo_adapter, max_sessions=1, settings=settings, max_new_tokens=6)
    try:
        handlers = Handlers(pool)
        handlers.load(tab_request())
        ingest = pool.get("tab-a").session.stats()["ingest"]
        assert (ingest["mode"], ingest["change_threshold"]) == ("changed", 0.25)
        assert handlers.settings_outputs(pool.get("tab-a"))[-2:] == ("changed", 0.25)  # the page's fields show it
    finally:
        pool.close_all()


@pytest.mark.parametrize("policy", ["keep_merge", "adakv"])
def test_the_slot_count_policies_apply_from_the_ui_beside_a_tab_of_another(handlers, pool, policy):
    """The model is shared: one tab on a policy with slot counts, another on tar_van, both answer."""
    from potwatch.app.ui.settings import policy_choices

    assert policy in [name for _, name in policy_choices()]  # what the policy dropdown lists
    first, second = tab_request("tab-a"), tab_request("tab-b")
    handlers.load(first)
    handlers.load(second)
    out = applied(handlers.apply_settings("1MB", policy, 2, 8, first))  # per-head slots: 16 bits
    assert f"The policy {policy} needs 16 bits per key/value" in out["kv_bits_error"] and out["kv_bits"] == 16
    outputs = handlers.apply_settings("1MB", policy, 2, 16, first)
    assert "⚠" not in outputs[0]
    for request in (first, second):
        watch_a_little(pool, request)
    for request in (first, second):
        list(handlers.ask("Hello?", request))
    assert pool.get(first.session_hash).session.policy_name == policy
    assert pool.get(second.session_hash).session.policy_name == "tar_van"
    assert pool.get(first.session_hash).stats["turns"] == 1 and pool.get(second.session_hash).stats["turns"] == 1


def test_frames_per_second_out_of_range_is_answered_beside_the_field_by_potwatch_not_by_gradio(pool):
    """Through Gradio's own event processing (its components' checks included): 0, -1 and 31 reach
    potwatch's check, which answers beside the field, puts the value in force back, clears an older
    error, and raises nothing (no toast, no error pill, no traceback in the server log)."""
    from potwatch.app.ui.page import build_app

    app = build_app(pool)
    gradio_call(app, "load", [])
    outputs = gradio_call(app, "apply_settings", ["lots", "tar_van", 2, 16, "all", 0.15])  # an older cap error on screen
    assert outputs[len(REFRESH) + 6].startswith("⚠ Memory cap 'lots' is not a size")
    for fps in (0, -1, 31):
        out = applied(tuple(gradio_call(app, "apply_settings", [SMALL_CAP, "tar_van", fps, 16, "all", 0.15])))
        assert out["fps_error"] == "⚠ Frames per second must be a number above 0 and at most 30; try 2.", fps
        assert out["fps"] == 2.0 and out["mem_cap"] == SMALL_CAP and out["mem_cap_error"] == ""
        assert is_skip(out["chat"]) and "⚠" not in (out["status"] if isinstance(out["status"], str) else "")
    assert pool.get("tab-a").session.fps == 2.0


def test_a_refused_cap_leaves_the_playing_video_playing(handlers, pool):
    request, tab = playing_demo(handlers, pool, 2)
    runner, cache = tab.runner, tab.session.cache
    out = applied(handlers.apply_settings("10kB", "tar_van", 2, 16, request))
    assert out["mem_cap_error"].startswith("⚠") and "at least" in out["mem_cap_error"]
    assert tab.runner is runner and runner.running and tab.session.cache is cache  # nothing stopped, nothing reset
    seen = tab.stats["frames_seen"]
    wait_for(lambda: tab.stats["frames_seen"] >= seen + 2, what="the video to play on")
    assert "playing demo.mp4" in handlers.tick(request)[0]


def test_pause_is_what_the_page_shows_even_when_a_tick_computed_before_it_arrives_after(handlers, pool):
    """A tick computed while the video played may reach the page after the Pause click's answer; the
    ticks after a click send the status and buttons again, so the page never stays on 'playing'."""
    request = tab_request()
    page = Page().receive(handlers.load(request)[:len(REFRESH)])
    page.receive(handlers.use_demo_video(request)[:len(REFRESH)])
    page.receive(handlers.play(request))
    tab = pool.get(request.session_hash)
    wait_for(lambda: tab.stats["frames_seen"] >= 2, what="2 frames")
    late_tick = handlers.tick(request)  # computed before the click ...
    page.receive(handlers.pause(request))
    page.receive(late_tick)  # ... arrives after its answer
    assert "playing demo.mp4" in page.status()  # what people saw
    page.receive(handlers.tick(request))  # the next tick puts it right
    assert "paused demo.mp4" in page.status() and page.button("play")["value"] == "Resume"
    assert page.button("pause")["visible"] is False


def test_a_new_video_or_start_after_stop_starts_a_fresh_memory_with_the_settings_kept(handlers, pool, tmp_path):
    request = tab_request()
    handlers.load(request)
    assert applied(handlers.apply_settings("600kB", "window", 2, 16, request))["mem_cap_error"] == ""
    handlers.use_demo_video(request)
    handlers.play(request)
    tab = pool.get(request.session_hash)
    wait_for(lambda: tab.stats["frames_seen"] >= 4, what="4 frames")
    handlers.stop(request)
    assert tab.stats["frames_seen"] >= 4
    started = time.monotonic()
    assert "playing demo.mp4" in handlers.play(request)[0]  # Start after Stop: from the start, afresh
    wait_for(lambda: tab.stats["frames_seen"] >= 1, what="a frame")
    assert tab.stats["frames_seen"] <= 2 * (time.monotonic() - started) + 2  # counted from this start, not on
    assert len(tab.history) <= tab.stats["frames_seen"] + 1  # the memory plot shows this run only
    clip = write_clip(tmp_path / "clip.mp4", 1.5)
    shown = named(handlers.upload(str(clip), request))  # a new video: ready, nothing of the last one
    assert shown["status"].startswith("**ready") and ": 0 frames" in shown["status"], shown["status"]
    assert tab.runner is None and tab.session.frames_seen == 0 and len(tab.history) == 1
    assert (tab.session.cap_bytes, tab.session.policy_name, tab.settings.mem_cap) == (600_000, "window", "600kB")
    handlers.play(request)
    wait_for(lambda: tab.runner is not None and tab.runner.finished, timeout=20, what="the clip to end")
    assert handlers.tick(request)[0].startswith("**finished clip.mp4**: 3 frames")  # its own frames only


def test_answers_say_when_they_were_asked_in_stream_time(handlers, pool):
    request = tab_request()
    handlers.load(request)
    watch_a_little(pool, request, frames=4)  # frames at 0, 0.5, 1.0 and 1.5 s
    answer = list(handlers.ask("What is there?", request))[-1][0][-1]["content"]
    assert "_asked at 0:01 · " in answer, answer


def test_the_timer_never_reads_a_cache_a_reset_is_swapping(handlers, pool, caplog):
    """Ticks race resets (each reset frees the cache, then allocates the new one) on frames seen and not
    yet compressed, when the page's words read how many frames the cap holds: no error, nothing logged."""
    import threading

    request = tab_request()
    handlers.load(request)
    failures, done = [], threading.Event()

    def ticking():
        while not done.is_set():
            try:
                handlers.tick(request)
            except Exception as error:  # noqa: BLE001 - what the test looks for
                failures.append(error)

    ticker = threading.Thread(target=ticking, daemon=True)
    ticker.start()
    try:
        for step in range(25):
            watch_a_little(pool, request, frames=2)
            handlers.apply_settings(("500kB", SMALL_CAP)[step % 2], "tar_van", 2, 16, request)
            handlers.apply_settings("10kB", "tar_van", 2, 16, request)  # refused
    finally:
        done.set()
        ticker.join(10)
    assert not failures, failures[:3]
    assert not [record for record in caplog.records if record.levelname in ("ERROR", "CRITICAL")]


def test_the_cap_line_counts_frames_of_the_video_s_own_size_as_the_memory_note_does(handlers, pool, tmp_path):
    request = tab_request()
    handlers.load(request)
    handlers.tick(request)
    clip = write_clip(tmp_path / "odd.mp4", 2.0, size=(334, 202))
    handlers.upload(str(clip), request)
    cap_line = handlers.tick(request)[-1]
    assert "frames of 334×202 at full detail" in cap_line, cap_line
    frames = int(re.search(r"\*\*([\d,]+) frames of", cap_line).group(1))
    handlers.play(request)
    tab = pool.get(request.session_hash)
    wait_for(lambda: tab.stats["frames_seen"] >= 1, what="a frame")
    note = named(handlers.tick(request))["memory_note"]
    assert f"after about {frames:,} frames" in note, (note, cap_line)


def test_a_waiting_tab_shows_nothing_to_click_and_gets_its_cap_line_once_admitted(handlers):
    handlers.load(tab_request("a"))
    handlers.load(tab_request("b"))
    refused = handlers.load(tab_request("c"))
    shown = named(refused)
    assert shown["status"].startswith("⚠") and shown["workspace"] == {"__type__": "update", "visible": False}
    assert named(handlers.tick(tab_request("c")))["workspace"]["visible"] is False
    handlers.unload(tab_request("a"))
    admitted = handlers.tick(tab_request("c"))
    assert named(admitted)["workspace"] == {"__type__": "update", "visible": True}
    assert admitted[-1].startswith("The cap 400.00 kB holds")  # the cap line, which its load could not give


def test_a_closed_tab_leaves_no_page_state_behind(pool):
    """Gradio keeps each page's copy of the components and their last values (plots, frame, chat) for
    up to 10,000 pages; closing the tab drops its copy, with its session (see benchmarks/ui_memory.py)."""
    from gradio.routes import App

    from potwatch.app.ui.page import build_app

    app = build_app(pool)
    App.create_app(app)  # what `launch` does: the page gets Gradio's per-page state holder
    gradio_call(app, "load", [], session="tab-a")
    gradio_call(app, "load", [], session="tab-b")
    app.state_holder["tab-a"], app.state_holder["tab-b"]  # as Gradio makes them for each page's events
    gradio_call(app, "unload", [], session="tab-a")
    assert "tab-a" not in app.state_holder.session_data and "tab-b" in app.state_holder.session_data
    assert pool.get("tab-a") is None and pool.get("tab-b") is not None


# --- plots ---------------------------------------------------------------------------------------
def test_memory_plot_draws_use_cap_and_compressions_as_few_artists():
    """Hundreds of compressions are one collection of ticks, not one artist each, so a full history
    redraws in a fixed number of artists (the speed itself is not timed here)."""
    history = [MemorySample(i, 10_000 + 3_000 * (i % 7), 40_000, i // 7) for i in range(HISTORY_SAMPLES)]
    figure = memory_figure(history, 40_000)
    figure.savefig(__import__("io").BytesIO(), format="png")
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert labels == ["cache in use", f"compression ({(HISTORY_SAMPLES - 1) // 7})", "cap 40.00 kB"]
    axes = figure.axes[0]
    assert len(axes.collections) == 2 and len(axes.lines) == 2  # fill + ticks; step line + cap line
    assert len(axes.collections[1].get_segments()) == (HISTORY_SAMPLES - 1) // 7
    empty = memory_figure([], None)
    assert empty.axes[0].texts[0].get_text() == "no frames yet"


def test_retention_plot_shows_every_frame_seen():
    retention = {0: 0.25, 2: 0.0625, 6: 1.0}
    figure = retention_figure(retention, frames_seen=9, frames_per_group=2)
    axes = figure.axes[0]
    assert axes.get_title(loc="left") == "Retention: 6 of 9 frames in cache"
    assert axes.get_xlim() == (0.0, 10.0)
    # frame 6's group was completed by repeating it (a question came): it holds one frame seen, not two
    odd = retention_figure(retention, frames_seen=7, frames_per_group=2).axes[0]
    assert odd.get_title(loc="left") == "Retention: 5 of 7 frames in cache"


def test_history_is_bounded(pool):
    tab = pool.open("a")
    for index in range(HISTORY_SAMPLES + 50):
        tab.history.append(MemorySample(index, 1, 2, 0))
    assert len(tab.history) == HISTORY_SAMPLES


# --- the command ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--mem-cap", "lots"], "Memory cap 'lots' is not a size"),
    (["--policy", "magic"], "Unknown policy 'magic'"),
    (["--ingest", "sometimes"], "Unknown ingest mode 'sometimes'; use all (every visual token) or changed"),
    (["--ingest", "changed", "--change-threshold", "-1"], "The change threshold -1 is not a number from 0 to 10"),
    (["--max-sessions", "0"], "--max-sessions 0 allows no session"),
    (["--port", "70000"], "--port 70000 is not a port number"),
])
def test_serve_refuses_bad_settings_with_one_sentence(capsys, args, message):
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("potwatch: error: ") and message in err and "\n" not in err


def test_serve_says_when_the_port_is_taken(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("potwatch: error: ") and f"Port {port} on 127.0.0.1 is taken" in err and "\n" not in err


def test_gradio_can_see_where_to_pass_the_request(handlers):
    """Gradio passes gr.Request by type hint; a hint that does not resolve would silently drop it."""
    import typing

    import gradio as gr

    for name in ("load", "unload", "tick", "page_tick", "webcam_frame", "toggle_webcam", "upload", "use_demo_video",
                 "play", "pause", "stop", "ask", "apply_settings"):
        assert typing.get_type_hints(getattr(handlers, name))["request"] is gr.Request, name
