"""Server memory given back when web UI tabs close: RSS of an in-process `potwatch serve` page over
open/use/close cycles of a browser tab (Debian's Chromium, driven by Playwright, as tests/test_ui_browser.py).

Each cycle opens a tab, plays the demo video for a few seconds, asks a question, closes the tab and waits
until the server has freed its session. Prints the resident memory (RSS, MB) at start, after every
cycle, and the change from the first cycle to the last; exits 1 when that change is over --tolerance.
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ui_memory.py [--model tiny] [--cycles 20]"""

from __future__ import annotations

import argparse
import gc
import resource
import shutil
import socket
import sys
import time


def rss_mb() -> float:
    """This process's resident memory now (the server runs in it; the browser does not)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_text(page, selector: str, text: str, timeout_s: float = 60) -> None:
    page.wait_for_function(
        "([selector, text]) => (document.querySelector(selector)?.innerText || '').includes(text)",
        arg=[selector, text], timeout=timeout_s * 1000,
    )


def use_a_tab(browser, url: str, play_s: float) -> None:
    """One person's visit: the demo video played for `play_s`, a question asked and answered, tab closed."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(url, wait_until="load", timeout=60_000)
    wait_text(page, "#status", "ready: start")
    page.get_by_role("tab", name="File").click()
    page.locator("#use-demo").click()
    wait_text(page, "#video-words", "demo.mp4", 30)
    page.locator("#play").click()
    wait_text(page, "#status", "playing demo.mp4", 30)
    time.sleep(play_s)
    box = page.locator("#question textarea")
    box.fill("What colour was the box?")
    box.press("Enter")
    wait_text(page, "#chat", "frames in cache", 120)
    context.close()


def settle(pool, timeout_s: float = 60) -> None:
    """Wait until the closed tab's session is freed, then collect what is left."""
    deadline = time.monotonic() + timeout_s
    while len(pool):
        if time.monotonic() > deadline:
            raise SystemExit("a closed tab's session was never freed")
        time.sleep(0.2)
    time.sleep(1.0)  # the unload event's own clean-up (Gradio's state, uploads) runs right after
    gc.collect()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="the model served (default tiny)")
    parser.add_argument("--cycles", type=int, default=20, help="open/use/close cycles (default 20)")
    parser.add_argument("--play-s", type=float, default=6.0, help="seconds of the demo video each visit plays")
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed growth after the first cycle (0.05: 5%%)")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from potwatch.app.ui.defaults import default_mem_cap
    from potwatch.app.ui.page import build_app, launch_options
    from potwatch.app.ui.sessions import SessionPool, TabSettings
    from potwatch.models.registry import load_model

    adapter = load_model(args.model)
    pool = SessionPool(adapter, max_sessions=4, settings=TabSettings(mem_cap=default_mem_cap(adapter)),
                       max_new_tokens=48)
    app = build_app(pool)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    url = f"http://127.0.0.1:{port}/"
    figures = [("start", rss_mb())]
    print(f"RSS at start: {figures[0][1]:.0f} MB", flush=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                                 args=["--no-sandbox", "--disable-gpu"])
            try:
                for cycle in range(1, args.cycles + 1):
                    use_a_tab(browser, url, args.play_s)
                    settle(pool)
                    figures.append((f"cycle {cycle}", rss_mb()))
                    print(f"RSS after cycle {cycle:2d}: {figures[-1][1]:.0f} MB", flush=True)
            finally:
                browser.close()
    finally:
        app.close()
        pool.close_all()
    first, last = figures[1][1], figures[-1][1]
    growth = (last - first) / first
    print(f"RSS {figures[0][1]:.0f} MB at start, {first:.0f} MB after the first cycle, {last:.0f} MB after "
          f"{args.cycles}: {growth:+.1%} since the first cycle (allowed {args.tolerance:+.0%})")
    return 0 if growth <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
