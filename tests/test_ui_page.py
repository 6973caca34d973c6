"""What a person reads on the web UI, through the real handlers without a browser: the starting cap
per model, one count of frames in cache everywhere, errors in the page's words, readable answers,
uploads named as the user named them, controls that show only when they apply, and the examples'
answers on the `tiny` model."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("gradio")
pytest.importorskip("matplotlib")

from potwatch.app.ui.chat import EXAMPLE_QUESTIONS  # noqa: E402
from potwatch.app.ui.defaults import LARGE_MODEL_CAP, default_mem_cap, nice_size  # noqa: E402
from potwatch.app.ui.handlers import DEMO_VIDEO, Handlers, named  # noqa: E402
from potwatch.app.ui.plots import retention_figure  # noqa: E402
from potwatch.app.ui.sessions import SessionPool, TabSettings  # noqa: E402
from potwatch.app.ui.settings import policy_choices  # noqa: E402
from potwatch.app.ui.status import cap_words  # noqa: E402
from potwatch.app.ui.words import readable, readable_answer, ui_words  # noqa: E402
from potwatch.compression.policies.base import policy_names  # noqa: E402
from potwatch.models.registry import load_model  # noqa: E402
from potwatch.streaming.sources import FileSource, Frame  # noqa: E402
from tests.conftest import random_frames  # noqa: E402
from tests.test_ui_handlers import is_skip, tab_request, wait_for  # noqa: E402

FPS = 2.0


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture
def tiny_pool(tiny):
    pool = SessionPool(tiny, max_sessions=2, settings=TabSettings(mem_cap=default_mem_cap(tiny, FPS, 48)),
                       max_new_tokens=48)
    yield pool
    pool.close_all()


def demo_frames():
    return list(FileSource(DEMO_VIDEO, fps=FPS, realtime=False))


def feed_demo(tab, frames) -> int | None:
    """Feed frames as the file source does; returns frames in cache just before the first compression."""
    before_first = None
    for frame in frames:
        covered = tab.session.frames_covered()
        had = tab.session.monitor.event_count
        tab.feed(frame)
        if before_first is None and tab.session.monitor.event_count > had:
            before_first = covered
    tab.record(retention=True)
    return before_first


def frames_on(cap_line: str) -> int:
    return int(re.search(r"\*\*([\d,]+) frames", cap_line).group(1).replace(",", ""))


# --- the starting cap ------------------------------------------------------------------------------
def test_a_small_model_starts_with_a_cap_it_fills_and_compresses_within_the_first_minute(tiny, tiny_pool):
    cap = tiny_pool.settings.mem_cap
    assert cap == "900kB"  # tiny at 2 fps: the least cap that holds a 48-token answer, about 26 s at full detail
    tab = tiny_pool.open("a")
    words = cap_words(tab.session)
    assert re.search(r"The cap 900\.00 kB holds [\d,]+ tokens.*\*\*\d+ frames of 320×240 at full detail, \d+ s of video at 2 fps",
                     words), words
    frames = demo_frames()
    before_first = feed_demo(tab, frames)
    assert tab.stats["compressions"] >= 1 and before_first is not None
    assert frames_on(words) == before_first < 60 * FPS  # the cap line's frames are what the cache held when it filled
    assert default_mem_cap(load_model("demo"), FPS, 48) == "900kB"


def test_a_large_model_starts_at_the_cap_a_device_would_give_it():
    adapter = load_model("demo-llava-0.5b")  # random weights, a real model's geometry
    assert default_mem_cap(adapter, FPS, 48) == LARGE_MODEL_CAP


def test_sizes_are_rounded_up_to_a_cap_a_person_would_type():
    assert [nice_size(n) for n in (865_480, 1_000_000, 1_000_001, 2_600_000, 95e9)] == ["900kB", "1MB", "1.2MB", "3MB", "100GB"]


# --- one count of frames in cache ------------------------------------------------------------------
def test_frames_in_cache_agree_in_the_answer_the_table_the_retention_title_and_the_cap_line(tiny_pool):
    handlers = Handlers(tiny_pool)
    request = tab_request()
    cap_line = handlers.load(request)[-1]
    tab = tiny_pool.get(request.session_hash)
    frames = demo_frames()
    before_first = feed_demo(tab, frames)
    assert before_first == frames_on(cap_line)  # the cap line's number, seen as the cache filled
    tab.feed(Frame(60, 30.0, random_frames(1)[0]))  # an odd count: the last
    # two-frame group is completed by repetition when a question comes
    answer = list(handlers.ask(EXAMPLE_QUESTIONS[0], request))[-1][0][-1]["content"]
    said = re.search(r"([\d,]+) of ([\d,]+) frames in cache", answer)
    covered, seen = int(said.group(1)), int(said.group(2))
    assert seen == 61 and 0 < covered <= seen
    shown = named(handlers.tick(request))
    assert "<th>frames in cache</th>" in shown["numbers"]
    cells = re.findall(r"<td>([^<]*)</td>", shown["numbers"])
    assert cells[0] == "61" and cells[1] == str(covered)  # frames seen, frames in cache
    title = shown["retention"].axes[0].get_title(loc="left")
    assert title == f"Retention: {covered} of 61 frames in cache"
    # the title counted from the retention snapshot alone agrees too
    alone = retention_figure(tab.retention, 61, tab.session.adapter.frames_per_group).axes[0]
    assert alone.get_title(loc="left") == title


# --- the examples ----------------------------------------------------------------------------------
def test_tiny_answers_the_examples_right_at_its_starting_cap(tiny_pool):
    handlers = Handlers(tiny_pool)
    request = tab_request()
    handlers.load(request)
    feed_demo(tiny_pool.get(request.session_hash), demo_frames())  # the demo video, as the example plays it
    answers = [list(handlers.ask(question, request))[-1][0][-1]["content"] for question in EXAMPLE_QUESTIONS]
    assert answers[0].startswith("Red.\n") and answers[1].startswith("One.\n")


def test_an_example_waits_for_the_demo_to_end_then_answers(tiny_pool, tmp_path):
    from tests.test_ui_handlers import write_clip

    clip = write_clip(tmp_path / "short-demo.mp4", 2.0)  # stands in for the demo: the flow, not the answer
    handlers = Handlers(tiny_pool, demo_video=clip)
    request = tab_request()
    handlers.load(request)
    tiny_pool.get(request.session_hash).settings = TabSettings(mem_cap="2MB")  # differs: the example resets
    updates = [(update[0][-1]["content"], update) for update in handlers.example(EXAMPLE_QUESTIONS[1], request)]
    (first_words, first), (_, last) = updates[0], updates[-1]
    assert first_words.startswith("Watching the demo video (2 s) first")
    assert first[2:6] == (tiny_pool.settings.mem_cap, "tar_van", 2.0, 16)  # the fields show what it runs with
    tab = tiny_pool.get(request.session_hash)
    assert tab.played_through(clip) and tab.stats["frames_seen"] == 4
    assert re.search(r"\d+ of 4 frames in cache", last[0][-1]["content"])
    again = list(handlers.example(EXAMPLE_QUESTIONS[0], request))  # watched already: asked at once
    assert len(again[-1][0]) == 4 and tab.stats["frames_seen"] == 4 and tab.stats["turns"] == 2


# --- words ---------------------------------------------------------------------------------------
def test_answers_never_show_undecodable_bytes(demo_adapter):
    pool = SessionPool(demo_adapter, max_sessions=1, settings=TabSettings(mem_cap="2MB"), max_new_tokens=12)
    try:
        handlers = Handlers(pool)
        request = tab_request()
        handlers.load(request)
        pool.get(request.session_hash).session.feed(random_frames(4))
        pool.get(request.session_hash).record()
        updates = list(handlers.ask("Hello?", request))
        raw = pool.get(request.session_hash).session  # the random-weight model writes bytes that are not text
        assert raw.turns == 1
        for chat, _, _ in updates:
            if not is_skip(chat):
                assert "\ufffd" not in chat[-1]["content"] and "\x06" not in chat[-1]["content"]
    finally:
        pool.close_all()
    assert readable("R\ufffded\x06.") == "Red." and readable_answer("\ufffd\ufffd").startswith("(no readable answer")


def test_errors_speak_the_page_s_words_not_the_command_line_s():
    assert ui_words("Memory cap 10.00 kB holds 4 tokens; raise --mem-cap to at least 75.89 kB.") == \
        "Memory cap 10.00 kB holds 4 tokens; raise the memory cap to at least 75.89 kB."
    assert ui_words("Policy 'adakv' needs --kv-bits 16: use --kv-bits 16.") == \
        "Policy 'adakv' needs 16 bits per key/value: use 16 bits per key/value."
    long = "/tmp/gradio/" + "a" * 64 + "/clip.mp4"
    assert ui_words(f"'{long}' has no video stream.", long, "clip.mp4") == "'clip.mp4' has no video stream."


def test_every_policy_has_a_one_line_description_in_the_dropdown():
    choices = policy_choices()
    assert [name for _, name in choices] == policy_names()
    for label, name in choices:
        assert label.startswith(f"{name}: ") and len(label) > len(name) + 20 and "\n" not in label


# --- uploads and controls ------------------------------------------------------------------------
def test_a_refused_upload_shows_the_user_s_file_name_is_cleared_and_its_warning_goes_once_a_video_plays(
        demo_adapter, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    folder = tmp_path / "uploads" / ("f" * 64)
    folder.mkdir(parents=True)
    broken = folder / "holiday.mp4"
    broken.write_bytes(b"\x00" * 4096)  # named like a video, but not one
    pool = SessionPool(demo_adapter, max_sessions=1, settings=TabSettings(mem_cap="800kB"))
    try:
        handlers = Handlers(pool)
        request = tab_request()
        handlers.load(request)
        handlers.use_demo_video(request)
        *refresh, upload_field = handlers.upload(str(broken), request)
        words = named(tuple(refresh))["video"]
        assert words.startswith("⚠") and "holiday.mp4" in words and "f" * 64 not in words and str(tmp_path) not in words
        assert upload_field is None and not broken.exists()  # the field is emptied and the file deleted
        assert is_skip(named(handlers.tick(request))["video"])  # the warning stays until something plays
        shown = named(handlers.play(request))  # the demo chosen before the refused upload
        assert "playing demo.mp4" in shown["status"] and shown["video"] == "Video: **demo.mp4**"
    finally:
        pool.close_all()


def test_controls_show_only_when_they_apply_and_the_status_follows_the_webcam_after_apply(demo_adapter):
    pool = SessionPool(demo_adapter, max_sessions=1, settings=TabSettings(mem_cap="800kB"))
    try:
        handlers = Handlers(pool)
        request = tab_request()

        state = {}

        def visible(outputs) -> dict:
            """Which buttons show after these outputs (a skipped update leaves a button as it was)."""
            for name, update in named(outputs).items():
                if name in ("webcam_pause", "play", "pause", "stop") and not is_skip(update):
                    state[name] = update["visible"]
            return dict(state)

        assert visible(handlers.load(request)[:-2]) == {"webcam_pause": False, "play": False, "pause": False, "stop": False}
        assert visible(handlers.use_demo_video(request)[:-1])["play"]
        shown = named(handlers.play(request))
        assert shown["play"]["visible"] is False and shown["pause"]["visible"] and shown["stop"]["visible"]
        shown = named(handlers.pause(request))
        assert shown["play"] == {"__type__": "update", "visible": True, "value": "Resume"}
        assert shown["pause"]["visible"] is False
        shown = named(handlers.stop(request))
        assert shown["play"]["value"] == "Start" and shown["stop"]["visible"] is False
        tab = pool.get(request.session_hash)
        for rgb in random_frames(2):
            handlers.webcam_frame(rgb, request)
        shown = named(handlers.tick(request))
        assert shown["webcam_pause"]["visible"] and "watching the webcam" in shown["status"]
        outputs = handlers.apply_settings("900kB", "tar_van", 2, 16, request)  # the browser still streams
        assert "watching the webcam" in outputs[0] and tab.source_kind == "webcam"
    finally:
        pool.close_all()


def test_watch_counts_frames_in_cache_as_the_page_does(capsys):
    """`potwatch watch` after an odd number of frames (the last group completed by repetition): the
    answer line never counts more frames in cache than were seen, as before this count was shared."""
    from potwatch.app.cli import main

    code = main(["watch", str(DEMO_VIDEO), "--model", "tiny", "--mem-cap", "none", "--max-frames", "7",
                 "--max-new-tokens", "4", "--ask", "How many objects came in?"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "7 of 7 frames in cache" in out  # was "8 of 7"
