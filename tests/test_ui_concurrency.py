"""Several browser tabs at once, through the real Gradio handlers and session pool (no browser): each
tab streams and answers under its own cap, and `--max-sessions` bounds them even under a rush."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("gradio")

from potwatch.app.ui.handlers import Handlers  # noqa: E402
from potwatch.app.ui.sessions import PoolFullError, SessionPool, TabClosedError, TabSettings  # noqa: E402
from potwatch.world.demo_scene import render_frames  # noqa: E402
from tests.cache_invariants import cache_problems  # noqa: E402
from tests.test_concurrency import run_threads  # noqa: E402

CAPS = {"tab-a": ("400kB", 400_000), "tab-b": ("520kB", 520_000), "tab-c": ("700kB", 700_000)}


def request(name: str) -> SimpleNamespace:
    return SimpleNamespace(session_hash=name)


@pytest.fixture
def pool(demo_adapter):
    pool = SessionPool(demo_adapter, max_sessions=3, settings=TabSettings(mem_cap="400kB"), max_new_tokens=4)
    yield pool
    pool.close_all()


def test_a_rush_of_tabs_never_opens_more_than_max_sessions(pool):
    opened, refused = [], []

    def open_tab(key):
        def run():
            try:
                opened.append(pool.open(key))
            except PoolFullError:
                refused.append(key)
        return run

    errors = run_threads(*(open_tab(f"tab-{index}") for index in range(12)))
    assert not errors and len(opened) == 3 and len(refused) == 9 and len(pool) == 3
    pool.close_all()
    same = []
    errors = run_threads(*(lambda: same.append(pool.open("one-tab")) for _ in range(6)))
    assert not errors and len({id(tab) for tab in same}) == 1 and len(pool) == 1  # one session per tab


def test_tabs_stream_and_answer_at_once_each_under_its_own_cap(pool):
    handlers = Handlers(pool)
    for name, (cap, _) in CAPS.items():
        handlers.load(request(name))
        outputs = handlers.apply_settings(cap, "tar_van", 20, 16, request(name))  # 20 fps: many frames quickly
        assert "⚠" not in outputs[0], outputs[0]
    refused = handlers.load(request("tab-d"))[0]
    assert refused.startswith("⚠") and "(3 tabs at once)" in refused
    frames = list(render_frames(2.0, size=(320, 240), fps=10))
    problems: list[str] = []
    finished: list[str] = []

    def camera(name):  # the browser sends frames; the tab's runner feeds them on its own thread
        def run():
            tab = pool.get(name)
            deadline = time.monotonic() + 4.0
            index = 0
            try:
                while time.monotonic() < deadline:
                    handlers.webcam_frame(frames[index % len(frames)], request(name))
                    problems.extend(f"{name}: {p}" for p in cache_problems(tab.session))
                    index += 1
                    time.sleep(0.02)
                tab.set_webcam_paused(True)  # stops the runner so the checks below see a still cache
            finally:
                finished.append(name)
        return run

    def chatter(name):
        def run():
            tab = pool.get(name)
            try:
                deadline = time.monotonic() + 10
                while not tab.stats.get("frames_seen"):  # before any frame a question gets a plain reply
                    assert time.monotonic() < deadline, f"{name}: no frame was fed"
                    time.sleep(0.02)
                for step in range(12):
                    updates = list(handlers.ask(f"{name} question {step}?", request(name)))
                    assert "meaningless" in updates[-1][0][-1]["content"], updates[-1]
                    problems.extend(f"{name}: {p}" for p in cache_problems(tab.session))
            finally:
                finished.append(name)
        return run

    def visitor():  # a fourth tab keeps knocking meanwhile and keeps being told the server is full
        while len(finished) < 2 * len(CAPS):
            assert handlers.tick(request("tab-d"))[0].startswith("⚠")
            time.sleep(0.05)

    errors = run_threads(*(camera(name) for name in CAPS), *(chatter(name) for name in CAPS), visitor)
    assert not errors, errors
    assert not problems, problems[:5]
    for name, (_, cap) in CAPS.items():
        tab = pool.get(name)
        stats = tab.session.stats()
        assert tab.session.cap_bytes == cap and stats["cap_bytes"] == cap
        assert stats["peak_bytes"] <= cap and tab.session.cache.nbytes <= cap
        assert stats["frames_seen"] >= 20 and stats["turns"] == 12
        assert len(tab.chat) == 24
    assert pool.get("tab-a").session.stats()["compressions"] > 0  # the smallest cap was reached
    assert len({id(pool.get(name).session.cache) for name in CAPS}) == 3  # one cache per tab
    handlers.unload(request("tab-b"))
    assert handlers.tick(request("tab-d"))[0].startswith("**")  # the freed slot goes to the waiting tab
    assert len(pool) == 3



def test_a_tab_closed_while_its_session_is_made_frees_its_slot(demo_adapter):
    made, release = [], threading.Event()

    class SlowPool(SessionPool):
        def new_session(self, settings):  # as on a big GPU cache: making the session takes a while
            release.wait(30)
            made.append(super().new_session(settings))
            return made[-1]

    pool = SlowPool(demo_adapter, max_sessions=1, settings=TabSettings(mem_cap="400kB"))
    outcome = []

    def load():
        try:
            outcome.append(pool.open("tab"))
        except TabClosedError as error:
            outcome.append(error)

    loading = threading.Thread(target=load, daemon=True)
    loading.start()
    waiting = threading.Thread(target=load, daemon=True)  # the same page's second event
    deadline = time.monotonic() + 10
    while "tab" not in pool._opening:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    waiting.start()
    assert not pool.close("tab")  # the page unloads before its session exists
    release.set()
    loading.join(30)
    waiting.join(30)
    assert len(outcome) == 2 and all(isinstance(item, TabClosedError) for item in outcome), outcome
    assert len(pool) == 0 and len(made) == 1 and made[0]._closed  # made once, and freed at once
    assert pool.open("next-tab") is not None  # the slot is free again
    pool.close_all()
