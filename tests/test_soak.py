"""The soak in short (the full 20,000-frame run is `benchmarks/soak.py`): the cap after every frame, flat
RSS after warm-up, and no container in the session growing with the stream."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import pytest

from benchmarks.container_growth import ContainerWatch
from benchmarks.soak import run_soak
from potwatch.streaming.session import StreamSession


def test_a_short_soak_holds_the_cap_and_grows_nothing():
    result = run_soak(frames=1500, mem_cap="400kB", ask_every=100, warmup=0.2)
    print(result.report())
    assert result.cap_violations == 0, result.first_violation
    assert result.peak_cache_bytes <= result.cap_bytes and result.allocated_bytes <= result.cap_bytes
    assert result.compressions > 100 and result.answers == 15
    assert not result.growing, result.growing
    assert result.rss_flat, result.report()


def test_the_growth_check_finds_a_leak_and_spares_bounded_containers(demo_adapter):
    session = StreamSession(demo_adapter, mem_cap="400kB")
    session.leak = []  # grows with the stream: must be found
    session.ring = deque(maxlen=5)  # bounded by construction
    session.window = []  # changes with the content, but stays bounded
    watch = ContainerWatch(session)
    for step in range(40):
        session.leak.append(step)
        session.ring.append(step)
        session.window[:] = range(step % 7)
        watch.check(step / 40)
    growing = watch.growing()
    assert len(growing) == 1 and growing[0].startswith("StreamSession.leak:"), growing
    # a container bounded by the cap (like the frames held) passes while under its bound, not over it
    assert watch.__class__(session, watch.samples, bounds={"StreamSession.leak": 40}).growing() == []
    over = watch.__class__(session, watch.samples, bounds={"StreamSession.leak": 20}).growing()
    assert len(over) == 1 and "over its bound of 20" in over[0], over


def test_the_web_chat_keeps_its_latest_turns_only(demo_adapter, monkeypatch):
    pytest.importorskip("gradio")
    from potwatch.app.ui import chat as ui_chat, handlers as ui_handlers
    from potwatch.app.ui.sessions import SessionPool, TabSettings
    from tests.conftest import random_frames

    monkeypatch.setattr(ui_chat, "CHAT_MESSAGES", 10)
    pool = SessionPool(demo_adapter, max_sessions=1, settings=TabSettings(mem_cap="400kB"), max_new_tokens=2)
    handlers = ui_handlers.Handlers(pool)
    request = SimpleNamespace(session_hash="tab")
    handlers.load(request)
    pool.get("tab").session.feed(random_frames(2))  # before any frame a question gets a plain reply
    pool.get("tab").record()
    for step in range(8):
        chat = list(handlers.ask(f"question {step}?", request))[-1][0]
    assert len(chat) == 10 and chat[0] == {"role": "user", "content": "question 3?"}
    assert chat[-2]["content"] == "question 7?" and "meaningless" in chat[-1]["content"]
    pool.close_all()
