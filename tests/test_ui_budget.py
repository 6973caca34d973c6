"""The server's memory budget and per-tab ceiling, through the real handlers and pool on the `demo` model:
a visitor cannot make the server allocate beyond its budget, and the page says why in plain words."""

from __future__ import annotations

import argparse
import random
import re
import threading
import time
import weakref

import pytest

pytest.importorskip("gradio")
pytest.importorskip("matplotlib")

from potwatch.app.cli import main  # noqa: E402
from potwatch.app.ui.budget import MemoryLimits  # noqa: E402
from potwatch.app.ui.handlers import Handlers  # noqa: E402
from potwatch.app.ui.serve import add_serve_arguments, limits_line, memory_limits  # noqa: E402
from potwatch.app.ui.sessions import BudgetFullError, SessionPool, TabSettings  # noqa: E402
from potwatch.compression.capped_cache import CappedKVCache  # noqa: E402
from potwatch.compression.mem_cap import format_bytes, parse_mem_cap  # noqa: E402
from potwatch.errors import UserError  # noqa: E402
from tests.test_concurrency import run_threads  # noqa: E402
from tests.test_ui_handlers import applied, tab_request, watch_a_little  # noqa: E402

START = "400kB"


def make_pool(adapter, budget=None, ceiling=None, allow_any_cap=False, max_sessions=4) -> SessionPool:
    return SessionPool(adapter, max_sessions=max_sessions, settings=TabSettings(mem_cap=START), max_new_tokens=6,
                       limits=MemoryLimits(budget=budget, ceiling=ceiling, allow_any_cap=allow_any_cap))


@pytest.fixture
def pools():
    made = []
    yield made
    for pool in made:
        pool.close_all()


# --- the per-tab ceiling -------------------------------------------------------------------------
def test_a_cap_above_the_ceiling_or_none_is_refused_beside_the_field_and_changes_nothing(demo_adapter, pools):
    pools.append(pool := make_pool(demo_adapter, budget=2_000_000, ceiling=600_000))
    handlers, request = Handlers(pool), tab_request()
    first = handlers.load(request)
    assert "at most 600.00 kB" in first[-1]  # the cap line says what this server allows, before anyone tries
    watch_a_little(pool, request)
    tab = pool.get(request.session_hash)
    cache, seen = tab.session.cache, tab.session.frames_seen
    for asked, words in (("1TB", "allows each tab a memory cap of at most 600.00 kB, not 1TB; type 600.00 kB or less"),
                         ("none", "does not run a tab without a memory cap; type a cap of at most 600.00 kB")):
        out = applied(handlers.apply_settings(asked, "tar_van", 2, 16, request))
        assert out["mem_cap_error"] == f"⚠ This server {words}."
        assert out["mem_cap"] == START and "--" not in out["mem_cap_error"]  # the field goes back
        assert tab.session.cache is cache and tab.session.frames_seen == seen  # nothing reset, nothing allocated
    out = applied(handlers.apply_settings("600kB", "tar_van", 2, 16, request))
    assert out["mem_cap_error"] == "" and tab.session.cap_bytes == 600_000


def test_the_operator_may_allow_any_cap_and_the_budget_still_holds_capped_caches(demo_adapter, pools):
    pools.append(pool := make_pool(demo_adapter, budget=1_000_000, allow_any_cap=True))
    handlers, first, second = Handlers(pool), tab_request("a"), tab_request("b")
    handlers.load(first)
    handlers.load(second)
    assert "any cap, or none" in handlers.load(first)[-1]
    out = applied(handlers.apply_settings("1TB", "tar_van", 2, 16, first))
    others = pool.get("b").session.cache.nbytes  # what is really allocated: a little under the 400 kB cap
    assert 390_000 < others <= 400_000
    assert out["mem_cap_error"] == (f"⚠ The other tabs' caches take {format_bytes(others)} of this server's 1.00 MB "
                                    f"memory budget, so this tab's cap can be at most {format_bytes(1_000_000 - others)} "
                                    "now; type a smaller cap, or try again when other tabs close.")
    assert out["mem_cap"] == START and pool.get("a").session.cap_bytes == 400_000
    out = applied(handlers.apply_settings("none", "tar_van", 2, 16, first))
    assert out["mem_cap_error"] == "" and pool.get("a").session.cap_bytes is None


# --- the budget ----------------------------------------------------------------------------------
def test_a_tab_beyond_the_budget_waits_with_the_words_and_gets_a_session_once_memory_frees(demo_adapter, pools):
    pools.append(pool := make_pool(demo_adapter, budget=1_000_000))
    handlers = Handlers(pool)
    handlers.load(tab_request("a"))
    handlers.load(tab_request("b"))
    refused = handlers.load(tab_request("c"))[0]
    left = 1_000_000 - sum(tab.session.cache.nbytes for tab in pool.tabs())
    assert refused == (f"⚠ This server's memory budget (1.00 MB for all tabs' caches) has {format_bytes(left)} left, too little "
                       "for another tab's 400.00 kB cache; this page waits and gets its own session by itself as soon "
                       "as other tabs free memory (close or lower their caps).")
    assert handlers.tick(tab_request("c"))[0] == refused and len(pool) == 2
    with pytest.raises(BudgetFullError):
        pool.open("c")
    # a tab lowering its cap frees room: the waiting page gets its session on its next tick
    assert applied(handlers.apply_settings("200kB", "tar_van", 2, 16, tab_request("a")))["mem_cap_error"] == ""
    assert handlers.tick(tab_request("c"))[0].startswith("**ready")
    # now a tab cannot raise its cap past what the others leave
    out = applied(handlers.apply_settings("600kB", "tar_van", 2, 16, tab_request("a")))
    assert "this tab's cap can be at most" in out["mem_cap_error"] and out["mem_cap"] == "200kB"
    handlers.unload(tab_request("b"))
    assert applied(handlers.apply_settings("600kB", "tar_van", 2, 16, tab_request("a")))["mem_cap_error"] == ""
    assert pool.budget.used() == sum(tab.session.cache.nbytes for tab in pool.tabs()) <= 1_000_000


def test_an_example_without_room_for_the_starting_cap_says_so_in_the_chat(demo_adapter, pools):
    pools.append(pool := make_pool(demo_adapter, budget=1_000_000))
    handlers = Handlers(pool)
    handlers.load(tab_request("a"))
    handlers.apply_settings("200kB", "tar_van", 2, 16, tab_request("a"))
    handlers.load(tab_request("b"))
    assert applied(handlers.apply_settings("700kB", "tar_van", 2, 16, tab_request("b")))["mem_cap_error"] == ""
    chat = list(handlers.example("What colour was the box?", tab_request("a")))[-1][0]
    assert chat[-1]["content"].startswith("⚠ The other tabs' caches take") and pool.get("a").session.cap_bytes == 200_000


def test_the_caches_allocated_never_sum_past_the_budget_while_tabs_apply_at_once(demo_adapter, pools, monkeypatch):
    """Every cache the sessions allocate is watched (a weak set of the live ones) while three tabs apply caps
    at random, many too large for what the others leave: the live caches never sum past the budget."""
    made: list[weakref.ref] = []

    class WatchedCache(CappedKVCache):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(weakref.ref(self))

    def live() -> list[CappedKVCache]:
        return [cache for cache in (ref() for ref in list(made)) if cache is not None]

    monkeypatch.setattr("potwatch.streaming.session.CappedKVCache", WatchedCache)
    budget = 1_300_000
    pools.append(pool := make_pool(demo_adapter, budget=budget, ceiling=900_000, max_sessions=3))
    handlers = Handlers(pool)
    names = ("a", "b", "c")
    for name in names:
        handlers.load(tab_request(name))
    sums, outcomes, done = [], {"applied": 0, "refused": 0}, threading.Event()

    def sample():
        while not done.is_set():
            sums.append(sum(cache.nbytes for cache in live()))
            time.sleep(0.0002)

    def visitor(name):
        def run():
            chooser = random.Random(name)
            for _ in range(12):
                cap = chooser.choice(("200kB", "300kB", "500kB", "700kB", "900kB"))
                error = applied(handlers.apply_settings(cap, "tar_van", 2, 16, tab_request(name)))["mem_cap_error"]
                outcomes["refused" if error else "applied"] += 1
                assert not error or "can be at most" in error, error
        return run

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    errors = run_threads(*(visitor(name) for name in names))
    done.set()
    sampler.join(10)
    assert not errors, errors
    assert len(sums) > 20 and max(sums) <= budget, (len(sums), max(sums))
    assert outcomes["applied"] >= 6 and outcomes["refused"] >= 3, outcomes  # the budget was pressed, and held
    assert pool.budget.used() == sum(tab.session.cache.nbytes for tab in pool.tabs()) == sum(c.nbytes for c in live())


# --- the operator's options ----------------------------------------------------------------------
def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_budget_defaults_to_the_starting_cap_times_the_tabs_and_is_printed():
    limits = memory_limits(serve_args("--max-sessions", "3"), "900kB")
    assert limits == MemoryLimits(budget=2_700_000, ceiling=2_700_000, allow_any_cap=False)  # the ceiling: the budget
    assert limits_line(limits, "900kB", 3) == (
        "memory budget 2.70 MB for all tabs' KV caches together, room for 3 tabs at the starting cap (--mem-budget sets "
        "it); each tab's cap "
        "at most 2.70 MB (the whole budget), never none (--max-session-cap sets it)")
    limits = memory_limits(serve_args("--mem-budget", "4MB", "--max-session-cap", "2MB"), "1MB")
    assert limits == MemoryLimits(budget=4_000_000, ceiling=2_000_000)
    limits = memory_limits(serve_args("--allow-any-cap"), "none")
    assert limits == MemoryLimits(budget=None, ceiling=None, allow_any_cap=True)
    assert limits_line(limits, "none", 4).startswith("no memory budget (--mem-budget sets one); visitors may give")


@pytest.mark.parametrize("args, message", [
    (["--mem-budget", "lots"], "--mem-budget 'lots' is not a size; write it like 2GB"),
    (["--max-session-cap", "0"], "--max-session-cap '0' is zero"),
    (["--mem-cap", "1MB", "--mem-budget", "500kB"],
     "--mem-budget 500.00 kB is smaller than one tab's starting cap 1.00 MB; give at least 1.00 MB, e.g. 4.00 MB"),
    (["--mem-cap", "1MB", "--max-session-cap", "500kB"], "--max-session-cap 500.00 kB is below the starting cap 1.00 MB"),
    (["--mem-cap", "1MB", "--max-sessions", "1", "--max-session-cap", "2MB"],
     "--max-session-cap 2.00 MB is above --mem-budget 1.00 MB"),
    (["--mem-cap", "none"], "--mem-cap none lets every tab's cache grow without bound"),
    (["--max-session-cap", "2MB", "--allow-any-cap"], "--max-session-cap and --allow-any-cap contradict each other"),
])
def test_serve_refuses_memory_limits_that_cannot_work_with_one_sentence(capsys, args, message):
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("potwatch: error: ") and message in err and "\n" not in err
    assert "loading model" not in err  # refused before the model loads


def test_a_pool_without_limits_lets_any_cap_through(demo_adapter, pools):
    """What programs and older tests that make their own pool get: no ceiling, no budget."""
    pools.append(pool := SessionPool(demo_adapter, max_sessions=2, settings=TabSettings(mem_cap=START)))
    tab = pool.open("a")
    tab.apply(TabSettings(mem_cap="none"))
    assert tab.session.cap_bytes is None
    with pytest.raises(UserError, match="A memory cap of 10B is too small for this model"):
        tab.apply(TabSettings(mem_cap="10B"))


def test_serve_mem_cap_auto_shares_what_fits_among_the_tabs_and_says_so(demo_adapter, capsys):
    """--mem-cap auto in serve: each tab's starting cap is its share of what fits beside the model, never
    rounded up past it, and the budget (cap × tabs) stays inside the memory auto measured."""
    from potwatch.app.ui.serve import _auto_settings
    from potwatch.compression.auto_cap import auto_cap_for
    from potwatch.compression.mem_cap import parse_mem_cap

    start = TabSettings(mem_cap="1GB").checked()
    alone = auto_cap_for(demo_adapter, start.policy, start.kv_bits, start.fps, sessions=1)
    shared = auto_cap_for(demo_adapter, start.policy, start.kv_bits, start.fps, sessions=3)
    settings = _auto_settings(demo_adapter, start, max_sessions=3)
    cap = parse_mem_cap(settings.mem_cap)
    assert 0.99 * shared.cap_bytes <= cap <= shared.cap_bytes <= alone.cap_bytes
    limits = memory_limits(serve_args("--max-sessions", "3"), settings.mem_cap)
    assert limits.budget == 3 * cap <= shared.free
    err = capsys.readouterr().err
    assert f"each tab starts with a {settings.mem_cap} cap, auto: " in err and "(shared by 3 tabs)" in err


# --- a cap a person can really change, on the model people use -----------------------------------
@pytest.fixture(scope="module")
def tiny():
    from potwatch.models.registry import load_model

    return load_model("tiny")


def test_on_tiny_a_tab_can_raise_its_cap_the_hint_offers_caps_that_work_and_the_first_refusal_names_the_true_least(
        tiny, pools):
    """`potwatch serve --model tiny` as started by default: the per-tab ceiling comes from the budget, not the
    starting cap, so the cap can be raised; the caps the hint offers are accepted; and the least cap named
    by the first refusal (before any frame) is the one that works, so no second refusal names another."""
    from potwatch.app.ui.defaults import default_mem_cap

    start = default_mem_cap(tiny, 2.0, 48)
    limits = memory_limits(serve_args("--max-sessions", "4"), start)
    pools.append(pool := SessionPool(tiny, max_sessions=4, settings=TabSettings(mem_cap=start), max_new_tokens=48,
                                     limits=limits))
    handlers, request = Handlers(pool), tab_request()
    handlers.load(request)
    examples = re.findall(r"\d+(?:\.\d+)?[kMG]B", handlers.cap_hint)
    assert handlers.cap_hint.startswith("a size such as ") and len(examples) == 2 and "none" not in handlers.cap_hint
    for cap in examples:
        assert applied(handlers.apply_settings(cap, "tar_van", 2, 16, request))["mem_cap_error"] == "", cap
    assert pool.get(request.session_hash).session.cap_bytes == parse_mem_cap(examples[-1]) > parse_mem_cap(start)
    error = applied(handlers.apply_settings("50kB", "tar_van", 2, 16, request))["mem_cap_error"]
    least, typed = re.search(r"at least ([\d.]+ [kMG]B); type (\S+) or more", error).groups()
    below = str(parse_mem_cap(least.replace(" ", "")) - 1000)  # bytes
    assert f"at least {least};" in applied(handlers.apply_settings(below, "tar_van", 2, 16, request))["mem_cap_error"]
    for cap in (typed, least.replace(" ", "")):
        assert applied(handlers.apply_settings(cap, "tar_van", 2, 16, request))["mem_cap_error"] == "", cap
    watch_a_little(pool, request, frames=4)  # and a stream's frames fit in the least cap
    assert pool.get(request.session_hash).session.frames_seen == 4
