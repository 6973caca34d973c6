"""`reset` frees the old cache before it allocates the new one, and a cache the device cannot hold ends in
one sentence and a session that goes on at its old cap.

A real out-of-memory error cannot be produced safely on a shared CPU machine, so `SmallDevice` stands
in for a device of a few hundred kB: it wraps the cache's real allocation (`allocate_storage`), counts
the bytes of the caches still alive, and raises the error an allocator raises when a new cache would
not fit beside them."""

from __future__ import annotations

import weakref

import pytest
import torch

from potwatch.compression import capped_cache
from potwatch.errors import DeviceMemoryError, UserError
from potwatch.streaming.session import StreamSession
from tests.conftest import random_frames

OLD_CAP = "400kB"
CPU_MESSAGE = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 2000000 bytes. Error code 12"


class SmallDevice:
    """A device that holds `limit` bytes of caches; past that, allocating one raises `error`."""

    def __init__(self, monkeypatch, limit: int, error=torch.OutOfMemoryError):
        self.limit, self.error = limit, error
        self.live: list[tuple[weakref.ref, int]] = []
        self.real = capped_cache.allocate_storage
        monkeypatch.setattr(capped_cache, "allocate_storage", self.allocate)

    def in_use(self) -> int:
        return sum(size for ref, size in self.live if ref() is not None)

    def allocate(self, geometry, layers, capacity, device):
        planned = self.real(geometry, layers, capacity, "meta")  # sizes only, no memory
        need = sum(t.numel() * t.element_size() for t in planned.values())
        if self.in_use() + need > self.limit:
            if self.error is torch.OutOfMemoryError:
                raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {need} bytes.")
            raise self.error(CPU_MESSAGE if self.error is RuntimeError else "out of memory")
        storage = self.real(geometry, layers, capacity, device)
        self.live.append((weakref.ref(storage["pos"]), need))
        return storage


def fed_session(adapter, **options) -> StreamSession:
    session = StreamSession(adapter, mem_cap=OLD_CAP, max_new_tokens=4, **options)
    session.feed(random_frames(6, seed=3))
    return session


def test_the_old_cache_is_freed_before_the_new_one_is_allocated(demo_adapter, monkeypatch):
    """A device with room for 1.5 old caches takes a new cap 1.25 times the old: only if the old is gone first."""
    device = SmallDevice(monkeypatch, limit=10**9)
    session = fed_session(demo_adapter)
    device.limit = int(1.5 * session.cache.nbytes)
    old = weakref.ref(session.cache)
    session.reset(mem_cap="500kB")
    assert old() is None and session.cap_bytes == 500_000
    session.feed(random_frames(4, seed=4))
    assert session.ask("What is there?").frames_seen == 4


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, RuntimeError, MemoryError])
def test_a_cap_the_device_cannot_hold_says_so_and_the_session_goes_on_at_its_old_cap(demo_adapter, monkeypatch, error):
    """CUDA's torch.OutOfMemoryError, the CPU allocator's RuntimeError and Python's MemoryError alike."""
    device = SmallDevice(monkeypatch, limit=10**9, error=error)
    session = fed_session(demo_adapter)
    device.limit = int(1.2 * session.cache.nbytes)
    with pytest.raises(DeviceMemoryError) as caught:
        session.reset(mem_cap="2MB", policy="window", fps=1)
    message = str(caught.value)
    assert message == ("Device cpu has no room for the new cache (2.00 MB), so the session starts afresh at its old "
                       "settings (400.00 kB cap); give a smaller --mem-cap.")
    assert (session.cap_bytes, session.policy_name, session.fps) == (400_000, "tar_van", 2.0)
    assert session.frames_seen == 0 and not session.closed  # afresh: the old stream went with its cache
    session.feed(random_frames(8, seed=5))
    answer = session.ask("What is there?")
    assert answer.frames_seen == 8 and session.cache.nbytes <= 400_000


def test_when_not_even_the_old_cap_fits_any_more_the_session_closes_saying_so(demo_adapter, monkeypatch):
    device = SmallDevice(monkeypatch, limit=10**9)
    session = fed_session(demo_adapter)
    device.limit = session.cache.nbytes // 2  # something else took the device meanwhile
    with pytest.raises(DeviceMemoryError, match=r"nor any longer for the old one \(400.00 kB\), so this session is closed"):
        session.reset(mem_cap="2MB")
    assert session.closed
    with pytest.raises(UserError, match="closed"):
        session.feed(random_frames(2))


def test_a_failure_that_is_no_lack_of_memory_is_raised_as_it_is(demo_adapter, monkeypatch):
    device = SmallDevice(monkeypatch, limit=10**9, error=ValueError)
    session = fed_session(demo_adapter)
    device.limit = int(1.2 * session.cache.nbytes)
    with pytest.raises(ValueError, match="out of memory"):  # a ValueError is no allocator's word for it
        session.reset(mem_cap="2MB")
    assert session.cap_bytes == 400_000 and session.ask("Still there?").frames_seen == 0


def test_apply_and_reset_in_the_ui_shows_the_sentence_and_the_tab_goes_on(demo_adapter, monkeypatch):
    pytest.importorskip("gradio")
    pytest.importorskip("matplotlib")
    from types import SimpleNamespace

    from potwatch.app.ui.handlers import Handlers
    from potwatch.app.ui.sessions import SessionPool, TabSettings
    from potwatch.app.ui.settings import SETTING_OUTPUTS

    device = SmallDevice(monkeypatch, limit=10**9)
    pool = SessionPool(demo_adapter, max_sessions=1, settings=TabSettings(mem_cap=OLD_CAP), max_new_tokens=4)
    handlers, request = Handlers(pool), SimpleNamespace(session_hash="tab-a")
    try:
        handlers.load(request)
        list(handlers.ask("Hello?", request))
        tab = pool.get(request.session_hash)
        device.limit = int(1.2 * tab.session.cache.nbytes)
        outputs = handlers.apply_settings("2MB", "window", 1, 16, request)
        shown = dict(zip(("chat", *SETTING_OUTPUTS), outputs[-len(SETTING_OUTPUTS) - 1:]))
        assert shown["mem_cap_error"].startswith("⚠ Device cpu has no room for the new cache (2.00 MB), so the session "
                                                 "starts afresh")
        assert shown["mem_cap"] == OLD_CAP  # the cap field shows the cap in force again
        assert shown["chat"] == []  # the chat is cleared, as the session's dialogue is
        assert tab.chat == [] and tab.settings.mem_cap == OLD_CAP and tab.session.cap_bytes == 400_000
        list(handlers.ask("Hello again?", request))
        assert tab.chat[-1]["content"] and "⚠" not in tab.chat[-1]["content"]
    finally:
        pool.close_all()
