"""The web UI end to end in a real headless Chromium (Debian's, driven by Playwright for Python).

The webcam test feeds the browser a fake camera (a .y4m file rendered from the demo scene) into an
in-process server; the file test starts `potwatch serve --model demo` as a user would, and plays the
demo ingesting only what changed; the tiny test
clicks the one-click examples on the `tiny` model, then lays the page out at phone width. All save
screenshots under tests/artifacts/; the tiny test also writes the README's assets/ui.png and
docs/ui-phone.png.

Without chromium or playwright these tests skip, except under CI=true, where they fail: a CI run
must never pass by skipping them."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import pytest

from potwatch.world.demo_scene import render_frames

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
README_SCREENSHOT = ROOT / "assets" / "ui.png"
DEMO_VIDEO = ROOT / "assets" / "demo.mp4"
CAMERA_SECONDS = 20  # the fake camera loops this much of the demo scene
VIEWPORT = {"width": 1400, "height": 1000}
PHONE = {"width": 360, "height": 740}
DOCS = ROOT / "docs"
PHONE_SCREENSHOT = DOCS / "ui-phone.png"
QUESTION = "What happened in the kitchen?"


def _browser_tooling() -> str:
    """Chromium's path, after checking playwright imports; skip (or fail under CI) when either is missing."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright for Python (pip install playwright)")
    try:
        import gradio  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError:
        missing.append("the ui extra (pip install -e '.[ui]')")
    chromium = shutil.which("chromium")
    if chromium is None:
        missing.append("Debian's chromium (apt-get install chromium)")
    if missing:
        reason = "browser tests need " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI must run them, not skip them")
        pytest.skip(reason)
    return chromium


@pytest.fixture(scope="module")
def chromium_path() -> str:
    return _browser_tooling()


@pytest.fixture(scope="module")
def fake_camera(tmp_path_factory) -> Path:
    """The demo scene as a .y4m file, which Chromium plays (in a loop) as its camera."""
    path = tmp_path_factory.mktemp("camera") / "demo.y4m"
    with path.open("wb") as out:
        out.write(b"YUV4MPEG2 W320 H240 F10:1 Ip A1:1 C420jpeg\n")
        for rgb in render_frames(CAMERA_SECONDS, size=(320, 240), fps=10):
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


@pytest.fixture(scope="module")
def tiny_adapter():
    from potwatch.models.registry import load_model

    return load_model("tiny")


@pytest.fixture
def browser(chromium_path, fake_camera):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path, headless=True,
            args=["--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                  f"--use-file-for-fake-video-capture={fake_camera}", "--disable-background-networking",
                  "--disable-component-update", "--disable-gpu"],
        )
        try:
            yield browser
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def new_page(browser, url: str):
    context = browser.new_context(permissions=["camera"], viewport=VIEWPORT)
    page = context.new_page()
    page.goto(url, wait_until="load", timeout=60_000)
    return page


def wait_text(page, selector: str, text: str, timeout_s: float = 60) -> None:
    page.wait_for_function(
        "([selector, text]) => (document.querySelector(selector)?.innerText || '').includes(text)",
        arg=[selector, text], timeout=timeout_s * 1000,
    )


def status(page) -> str:
    return page.locator("#status").inner_text()


def frames_shown(page) -> int:
    match = re.search(r"(\d+) frames?\b", status(page))
    return int(match.group(1)) if match else 0


def wait_frames(page, at_least: int, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if frames_shown(page) >= at_least:
            return frames_shown(page)
        time.sleep(0.25)
    raise AssertionError(f"the status never showed {at_least} frames; it shows: {status(page)!r}")


def ask(page, question: str, timeout_s: float = 60, wait_for: str = "frames in cache") -> str:
    """Type a question into the chat, press Enter, and return the chat once the answer is complete."""
    box = page.locator("#question textarea")
    box.fill(question)
    box.press("Enter")
    wait_text(page, "#chat", wait_for, timeout_s)
    return page.locator("#chat").inner_text()


def plot_image(page, selector: str) -> str:
    image = page.locator(f"{selector} img").first
    image.wait_for(state="visible", timeout=30_000)
    return image.get_attribute("src") or ""


def save_screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_webcam_stream_chat_and_memory_plot(browser, demo_adapter, capfd):
    from potwatch.app.ui.page import build_app, launch_options
    from potwatch.app.ui.sessions import SessionPool, TabSettings

    started = time.monotonic()
    pool = SessionPool(demo_adapter, max_sessions=1, settings=TabSettings(mem_cap="2MB"), max_new_tokens=8)
    app = build_app(pool)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    url = f"http://127.0.0.1:{port}/"
    try:
        page = new_page(browser, url)
        wait_text(page, "#status", "ready: start")
        assert "of 2.00 MB" in status(page)
        assert not page.locator("#webcam-pause").is_visible()  # no camera yet: nothing to pause

        # an empty question gets a hint beside the box; a question before any frame a plain reply
        page.locator("#ask").click()
        wait_text(page, "#question-hint", "Type a question first", 15)
        chat_before = ask(page, "What do you see?", wait_for="I have not seen anything yet")
        assert "frames in cache" not in chat_before
        assert page.locator("#question-hint").inner_text().strip() == ""

        # a cap too small: the reason beside the field, in the page's words, and the field back at the cap in force
        page.locator("#mem-cap textarea").fill("10kB")
        page.locator("#apply").click()
        wait_text(page, "#mem-cap-error", "A memory cap of 10kB is too small for this model", 15)
        assert "--" not in page.locator("#mem-cap-error").inner_text() and "⚠" not in status(page)
        assert page.locator("#mem-cap textarea").input_value() == "2MB" and pool.tabs()[0].session.cap_bytes == 2_000_000

        # frames per second out of range: potwatch's words beside the field, the value in force back, the old
        # cap error gone; no Gradio toast, no error pill, no traceback in the server's log
        for typed in ("0", "-1", "31"):
            page.locator("#fps input").fill(typed)
            page.locator("#apply").click()
            wait_text(page, "#fps-error", "Frames per second must be a number above 0 and at most 30", 15)
            page.wait_for_function("() => document.querySelector('#fps input').value === '2'", timeout=10_000)
            assert page.locator("#mem-cap-error").inner_text().strip() == ""
        time.sleep(1.0)
        assert page.locator(".toast-body").count() == 0 and "Error" not in page.locator("#chat").inner_text()
        assert "Traceback" not in capfd.readouterr().err

        # the policy list says what each policy does
        page.locator("#policy input").click()
        assert page.get_by_role("option", name=re.compile(r"^window: keeps only the newest frames")).count() == 1
        page.keyboard.press("Escape")

        # a small cap, typed into the settings, makes the tiny demo model compress within seconds
        # and 8-bit keys and values, picked in the dropdown, fit more tokens into it
        page.locator("#mem-cap textarea").fill("400kB")
        page.locator("#kv-bits input").click()
        page.get_by_role("option", name="8", exact=True).click()
        page.locator("#apply").click()
        wait_text(page, "#status", "of 400.00 kB")
        wait_text(page, "#cap-words", "in 8 bits")
        assert page.locator("#mem-cap-error").inner_text().strip() == ""

        page.get_by_role("button", name="Click to Access Webcam").click(force=True)
        page.get_by_role("button", name="capture photo").click(timeout=30_000)
        wait_text(page, "#status", "watching the webcam", 30)
        page.locator("#webcam-pause").wait_for(state="visible", timeout=10_000)
        tab = next(iter(pool._tabs.values()))
        # Apply resets while the browser still streams: the status says so at once, never "ready"
        monitor = tab.session.monitor
        page.locator("#apply").click()
        deadline = time.monotonic() + 10
        while tab.session.monitor is monitor:  # a reset makes a new one
            assert time.monotonic() < deadline, "Apply did not reset the session"
            time.sleep(0.05)
        # (a tick computed before the click may show the old count for a moment: no exact count is waited for)
        wait_text(page, "#status", "watching the webcam at 0:0", 10)
        for _ in range(8):
            assert "ready" not in status(page), status(page)
            time.sleep(0.25)
        deadline = time.monotonic() + 90
        while not (tab.stats["frames_seen"] >= 24 and tab.stats["compressions"] >= 2):
            assert time.monotonic() < deadline, f"the webcam stream stalled: {tab.stats['frames_seen']} frames"
            time.sleep(0.25)

        chat = ask(page, QUESTION)
        assert QUESTION in chat and "this answer is meaningless" in chat
        assert re.search(r"\d+\.\d\d s \(first token \d+\.\d\d s\) · \d+ of \d+ frames in cache", chat)
        at_answer = frames_shown(page)
        wait_frames(page, at_answer + 2, 30)  # the stream kept flowing

        assert plot_image(page, "#memory-plot").startswith("data:image/png")
        assert plot_image(page, "#retention-plot").startswith("data:image/png")
        numbers = page.locator("#numbers").inner_text()
        assert "of 400.00 kB" in numbers and "under the cap" in numbers
        history = list(tab.history)
        assert len(history) >= 24 and all(s.cap_bytes == 400_000 for s in history) and tab.session.kv_bits == 8
        assert all(s.cache_bytes <= s.cap_bytes for s in history)
        assert history[-1].compressions >= 2 and tab.stats["peak_bytes"] <= 400_000

        time.sleep(1.5)  # one more refresh, so the plots include the answer
        save_screenshot(page, "webcam.png")

        # a second tab is over --max-sessions 1: it is told so, and gets a session once the first closes
        second = new_page(browser, url)
        wait_text(second, "#status", "already watches for as many tabs as it may (1 tab at once)")
        time.sleep(1.5)  # a tick or two: the waiting page stays without anything to click
        for control in ("#apply", "#ask", "#question", "#mem-cap", "#example-0", "#chat"):
            assert not second.locator(control).is_visible(), control
        save_screenshot(second, "webcam-refused.png")
        page.context.close()
        wait_text(second, "#status", "ready: start", 30)
        wait_text(second, "#cap-words", "The cap 2.00 MB holds", 10)  # admitted: its cap line too
        assert second.locator("#apply").is_visible() and second.locator("#ask").is_visible()
        assert len(pool) == 1 and tab.session._closed
        second.context.close()
        deadline = time.monotonic() + 30
        while len(pool):
            assert time.monotonic() < deadline, "closing the tab did not free its session"
            time.sleep(0.2)
    finally:
        app.close()
        pool.close_all()
    print(f"webcam browser test: {time.monotonic() - started:.1f} s")


def test_demo_file_plays_through_the_file_tab_of_potwatch_serve(browser, tmp_path):
    started = time.monotonic()
    port = free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "potwatch.app.cli", "serve", "--model", "demo", "--port", str(port),
             "--mem-cap", "400kB", "--max-new-tokens", "8"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"potwatch serve exited: {log_path.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"potwatch serve did not answer: {log_path.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)

        page = new_page(browser, url)
        wait_text(page, "#status", "ready: start")
        page.get_by_role("tab", name="File").click()

        assert not page.locator("#play").is_visible()  # nothing chosen yet: nothing to start
        upload = tmp_path / "kitchen.mp4"
        shutil.copyfile(DEMO_VIDEO, upload)
        page.locator("#upload input[type=file]").set_input_files(str(upload))
        wait_text(page, "#video-words", "kitchen.mp4", 30)
        page.locator("#use-demo").click()
        wait_text(page, "#video-words", "demo.mp4", 30)

        # ingest only what changed, picked in the settings; a threshold out of range first: the reason beside
        # its field, both fields back at the values in force, nothing changed
        page.locator("#ingest input").click()
        page.get_by_role("option", name="only what changed").click()
        page.locator("#change-threshold input").fill("-1")
        page.locator("#apply").click()
        wait_text(page, "#change-threshold-error", "The change threshold must be a number from 0 to 10; try 0.15", 15)
        page.wait_for_function("() => document.querySelector('#change-threshold input').value === '0.15'",
                               timeout=10_000)
        assert page.locator("#ingest input").input_value() == "every token"
        page.locator("#ingest input").click()
        page.get_by_role("option", name="only what changed").click()
        page.locator("#apply").click()
        page.wait_for_function("() => document.querySelector('#change-threshold-error').innerText.trim() === ''",
                               timeout=15_000)
        assert page.locator("#ingest input").input_value() == "only what changed"

        # a file that is not a video: refused by the name the user gave it, and taken off the field
        broken = tmp_path / "holiday.mp4"
        broken.write_bytes(b"\x00" * 4096)
        page.locator("#upload input[type=file]").set_input_files(str(broken))
        wait_text(page, "#video-words", "⚠ 'holiday.mp4' is not a video", 30)
        words = page.locator("#video-words").inner_text()  # may carry Gradio's "queue: 1/1" while it works
        assert "/holiday.mp4" not in words and "potwatch-serve-" not in words  # the name, not the server's path
        page.wait_for_function("() => !(document.querySelector('#upload')?.innerText || '').includes('holiday.mp4')",
                               timeout=10_000)
        page.locator("#play").click()  # the demo chosen before: the warning goes once it plays
        wait_text(page, "#status", "playing demo.mp4", 30)
        wait_text(page, "#video-words", "Video: demo.mp4", 10)
        assert page.locator("#pause").is_visible() and page.locator("#stop").is_visible()
        assert not page.locator("#play").is_visible()
        wait_frames(page, 8, 60)
        assert plot_image(page, "#current-frame")
        # the demo's kitchen barely moves: the status says how few of its visual tokens reached the model
        wait_text(page, "#status", "visual tokens (only what changed)", 30)
        sent, made = (int(n.replace(",", "")) for n in re.search(r"sent ([\d,]+) of ([\d,]+) visual tokens",
                                                                    status(page)).groups())
        assert 0 < sent < made, status(page)

        chat = ask(page, "Is anything red?")
        assert "this answer is meaningless" in chat
        assert "playing demo.mp4" in status(page)
        wait_frames(page, frames_shown(page) + 2, 30)  # playback went on while answering

        page.locator("#pause").click()
        wait_text(page, "#status", "paused demo.mp4", 15)
        time.sleep(1.5)
        paused_at = frames_shown(page)
        time.sleep(2.5)
        assert frames_shown(page) == paused_at, "frames kept coming while paused"
        assert page.locator("#play").inner_text() == "Resume"
        page.locator("#play").click()
        wait_text(page, "#status", "playing demo.mp4", 15)
        wait_frames(page, paused_at + 2, 30)
        save_screenshot(page, "file.png")
        page.locator("#stop").click()
        wait_text(page, "#status", "stopped", 15)
        numbers = page.locator("#numbers").inner_text()
        assert "under the cap" in numbers and "of 400.00 kB" in numbers
        page.context.close()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
    print(f"file browser test: {time.monotonic() - started:.1f} s")


def test_tiny_answers_the_one_click_examples_and_the_page_fits_a_phone(browser, tiny_adapter):
    """The README's screenshot: the `tiny` model at its starting cap, after the examples' answers.
    Then the same page at phone width: chat and question first, plots stacked, numbers as lines."""
    from potwatch.app.ui.page import build_app, launch_options
    from potwatch.app.ui.defaults import default_mem_cap
    from potwatch.app.ui.plots import retention_figure
    from potwatch.app.ui.sessions import SessionPool, TabSettings

    started = time.monotonic()
    cap = default_mem_cap(tiny_adapter, 2.0, 48)
    pool = SessionPool(tiny_adapter, max_sessions=1, settings=TabSettings(mem_cap=cap), max_new_tokens=48)
    app = build_app(pool)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    try:
        page = new_page(browser, f"http://127.0.0.1:{port}/")
        wait_text(page, "#status", "ready: start")
        cap_line = page.locator("#cap-words").inner_text()
        match = re.search(r"The cap [\d.]+ [kM]B holds [\d,]+ tokens .*: (\d+) frames of 320×240 at full detail, (\d+) s of video "
                          r"at 2 fps", cap_line)
        assert match and int(match.group(2)) < 60, cap_line  # the cache fills (and compresses) within a minute
        full_detail = int(match.group(1))

        page.locator("#example-0").click()
        wait_text(page, "#chat", "Watching the demo video (30 s) first", 15)
        wait_text(page, "#status", "playing demo.mp4", 15)
        assert page.locator("#current-frame").is_visible()  # the example opened the File tab
        wait_text(page, "#chat", "frames in cache", 90)
        chat = page.locator("#chat").inner_text()
        answer = re.search(r"What colour was the box\?\s+Red\.\s+asked at 0:29 · \d+\.\d\d s \(first token \d+\.\d\d s\) · "
                           r"(\d+) of 60 frames in cache", chat)
        assert answer, chat
        page.locator("#example-1").click()
        wait_text(page, "#chat", "One.", 30)
        chat = page.locator("#chat").inner_text()
        assert re.search(r"How many objects came in\?\s+One\.\s+", chat) and "\ufffd" not in chat

        # one count of frames in cache: the answer line, the table, the retention plot's title, the cap line
        tab = pool.tabs()[0]
        in_cache = int(answer.group(1))
        wait_text(page, "#status", "finished demo.mp4", 10)
        time.sleep(1.5)
        header = [cell.inner_text() for cell in page.locator("#numbers th").all()]
        cells = [cell.inner_text() for cell in page.locator("#numbers td").all()]
        assert cells[header.index("frames seen")] == "60" and cells[header.index("frames in cache")] == str(in_cache)
        title = retention_figure(tab.retention, 60, tiny_adapter.frames_per_group).axes[0].get_title(loc="left")
        assert title == f"Retention: {in_cache} of 60 frames in cache"
        assert tab.stats["compressions"] >= 1 and full_detail < 60  # the cap held fewer at full detail
        wait_text(page, "#memory-note", "Full, compressing", 10)
        shot = save_screenshot(page, "tiny-examples.png")
        README_SCREENSHOT.write_bytes(shot.read_bytes())

        # the same page on a phone
        page.set_viewport_size(PHONE)
        time.sleep(1.0)

        def box(selector):
            found = page.locator(selector).first.bounding_box()
            assert found, f"{selector} is not laid out"
            return found

        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # nothing off the side
        chat_box, question_box, ask_box = box("#chat"), box("#question"), box("#ask")
        assert chat_box["y"] < box("#watch-column")["y"] and chat_box["y"] < 600  # the chat comes first
        assert question_box["x"] >= 0 and ask_box["x"] + ask_box["width"] <= PHONE["width"]
        assert question_box["width"] >= 200
        memory, retention = box("#memory-plot"), box("#retention-plot")
        assert retention["y"] >= memory["y"] + memory["height"] - 1 and memory["width"] >= 280  # stacked
        assert not page.locator("#numbers table").is_visible()
        lines = page.locator("#numbers .numbers-line").all()
        assert len(lines) == 4 and all(line.bounding_box()["height"] < 60 for line in lines)
        assert "Frames 60 seen · " + str(in_cache) + " in cache" in page.locator("#numbers").inner_text()
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(PHONE_SCREENSHOT), full_page=True)
        page.context.close()
    finally:
        app.close()
        pool.close_all()
    print(f"tiny examples and phone browser test: {time.monotonic() - started:.1f} s")


def _smallest_text_pt(figure) -> float:
    from matplotlib.text import Text

    return min(text.get_fontsize() for text in figure.findobj(Text) if text.get_text().strip())


def test_controls_are_whole_and_plots_readable_on_a_desktop_and_a_phone(browser, demo_adapter):
    """At 1400×1000 and 360×740: the upload's icon clear of its label, no label over the chat's messages,
    the policy and ingest menus' arrows clear of their text; on the phone the plots are drawn for its width, with no
    text under 10 px as shown."""
    from potwatch.app.ui.page import build_app, launch_options
    from potwatch.app.ui.plots import DPI, memory_figure, retention_figure
    from potwatch.app.ui.sessions import SessionPool, TabSettings

    pool = SessionPool(demo_adapter, max_sessions=2, settings=TabSettings(mem_cap="400kB"), max_new_tokens=6)
    app = build_app(pool)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    smallest_pt = min(_smallest_text_pt(memory_figure([], 400_000, narrow=True)),
                      _smallest_text_pt(retention_figure({0: 1.0}, 2, 2, narrow=True)))
    try:
        for viewport in (VIEWPORT, PHONE):
            context = browser.new_context(viewport=viewport)
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load", timeout=60_000)
            wait_text(page, "#status", "ready: start")
            page.get_by_role("tab", name="File").click()
            page.locator("#upload [data-testid=upload-icon]").wait_for(state="visible", timeout=10_000)
            where = page.evaluate("""() => {
                const box = s => document.querySelector(s).getBoundingClientRect();
                const textEnd = s => { const input = document.querySelector(s + ' input');
                    return input.getBoundingClientRect().right - parseFloat(getComputedStyle(input).paddingRight); };
                return {icon: box('#upload [data-testid=upload-icon]'), label: box('#upload [data-testid=block-label]'),
                        drop: box('#upload button'), text_end: textEnd('#policy'), arrow: box('#policy .icon-wrap'),
                        ingest_text_end: textEnd('#ingest'), ingest_arrow: box('#ingest .icon-wrap'),
                        ingest_cut: (i => i.scrollWidth > i.clientWidth)(document.querySelector('#ingest input')),
                        chat_labels: document.querySelectorAll('#chat [data-testid=block-label]').length};
            }""")
            size = f"{viewport['width']}×{viewport['height']}"
            assert where["icon"]["top"] >= where["label"]["bottom"], (size, where)  # not under the label
            assert where["icon"]["bottom"] <= where["drop"]["bottom"], (size, where)  # nor cut off
            assert where["text_end"] <= where["arrow"]["left"] + 1, (size, where)
            assert where["ingest_text_end"] <= where["ingest_arrow"]["left"] + 1, (size, where)
            assert not where["ingest_cut"], (size, where)  # "every token" whole, not cut short
            assert where["chat_labels"] == 0, size  # nothing floats over the messages as they scroll
            if viewport is PHONE:
                page.wait_for_function("() => { const i = document.querySelector('#memory-plot img');"
                                       " return i && i.naturalWidth && i.naturalWidth < 2 * i.clientWidth; }",
                                       timeout=15_000)
                for plot in ("#memory-plot", "#retention-plot"):
                    natural, shown = page.evaluate(
                        f"() => {{ const i = document.querySelector('{plot} img'); return [i.naturalWidth, i.clientWidth]; }}")
                    smallest_px = smallest_pt * DPI / 72 * shown / natural
                    assert smallest_px >= 10, (plot, natural, shown, smallest_px)
                save_screenshot(page, "phone-360.png")
            context.close()
    finally:
        app.close()
        pool.close_all()
