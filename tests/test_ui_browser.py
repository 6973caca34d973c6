"""The web UI end to end in a real headless Chromium (Debian's, driven by Playwright for Python).

The webcam test feeds the browser a fake camera (a .y4m file rendered from the demo scene) into an
in-process server; the file test starts `potwatch serve --model demo` as a user would. Both save
screenshots under tests/artifacts/; the webcam test also writes the README's assets/ui.png.

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

from potwatch.streaming.synthetic_scene import render_frames

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
README_SCREENSHOT = ROOT / "assets" / "ui.png"
DEMO_VIDEO = ROOT / "assets" / "demo.mp4"
CAMERA_SECONDS = 20  # the fake camera loops this much of the demo scene
VIEWPORT = {"width": 1400, "height": 1000}
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


def ask(page, question: str, timeout_s: float = 60) -> str:
    """Type a question into the chat, press Enter, and return the chat once the answer is complete."""
    box = page.locator("#question textarea")
    box.fill(question)
    box.press("Enter")
    wait_text(page, "#chat", "frames in cache", timeout_s)
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


def test_webcam_stream_chat_and_memory_plot(browser, demo_adapter):
    from potwatch.app.ui import build_app, launch_options
    from potwatch.app.ui_sessions import SessionPool, TabSettings

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

        # a small cap, typed into the settings, makes the tiny demo model compress within seconds
        # and 8-bit keys and values, picked in the dropdown, fit more tokens into it
        page.locator("#mem-cap textarea").fill("400kB")
        page.locator("#kv-bits input").click()
        page.get_by_role("option", name="8", exact=True).click()
        page.locator("#apply").click()
        wait_text(page, "#status", "of 400.00 kB")
        wait_text(page, "#cap-words", "in 8 bits")

        page.get_by_role("button", name="Click to Access Webcam").click(force=True)
        page.get_by_role("button", name="capture photo").click(timeout=30_000)
        wait_text(page, "#status", "watching the webcam", 30)
        tab = next(iter(pool._tabs.values()))
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
        shot = save_screenshot(page, "webcam.png")
        README_SCREENSHOT.write_bytes(shot.read_bytes())

        # a second tab is over --max-sessions 1: it is told so, and gets a session once the first closes
        second = new_page(browser, url)
        wait_text(second, "#status", "already runs as many sessions as it may (1 session")
        save_screenshot(second, "webcam-refused.png")
        page.context.close()
        wait_text(second, "#status", "ready: start", 30)
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

        upload = tmp_path / "kitchen.mp4"
        shutil.copyfile(DEMO_VIDEO, upload)
        page.locator("#upload input[type=file]").set_input_files(str(upload))
        wait_text(page, "#video-words", "kitchen.mp4", 30)
        page.locator("#use-demo").click()
        wait_text(page, "#video-words", "demo.mp4", 30)

        page.locator("#play").click()
        wait_text(page, "#status", "playing demo.mp4", 30)
        wait_frames(page, 8, 60)
        assert plot_image(page, "#current-frame")

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
