"""The web UI's event handlers, as plain methods: each finds its tab's session by the request's
session hash, so they run (and are tested) without a browser.

Type hints here must resolve at run time: Gradio reads them to know where to pass `gr.Request`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import numpy as np

from potwatch.errors import UserError
from potwatch.streaming.answer import Answer

from potwatch.app.ui_plots import memory_figure, retention_figure
from potwatch.app.ui_sessions import PoolFullError, SessionPool, TabSession, TabSettings
from potwatch.app.ui_status import answer_message, numbers_table, status_line
from potwatch.app.ui_uploads import MAX_UPLOAD_BYTES, MAX_UPLOAD_MB, delete_upload, is_upload

DEMO_VIDEO = Path(__file__).resolve().parents[1] / "assets" / "demo.mp4"
SKIP = gr.skip
CHAT_MESSAGES = 200  # messages the chat keeps (100 questions and answers); older ones scroll out


class Handlers:
    """Everything the page asks of the server. Outputs are tuples in the order `ui.py` wires them."""

    def __init__(self, pool: SessionPool, demo_video: Path | None = DEMO_VIDEO) -> None:
        self.pool = pool
        self.demo_video = demo_video if demo_video is not None and Path(demo_video).is_file() else None

    # --- the tab's session ---------------------------------------------------------------------
    def _tab(self, request: gr.Request) -> TabSession:
        """This tab's session, opened on first use; PoolFullError when the server is full."""
        return self.pool.open(request.session_hash)

    def cap_description(self, tab: TabSession) -> str:
        return f"The cap {tab.session.describe_cap()}."

    def _full_outputs(self, tab: TabSession) -> tuple:
        """Status, numbers, both plots and the current frame, rendered now."""
        tab.rendered.clear()
        return self._refresh(tab)

    def _refresh(self, tab: TabSession) -> tuple:
        """Like `tick`: only what changed since the page last got it; the rest is skipped."""
        stats = tab.stats
        memory_key = (len(tab.history), tab.history[-1] if tab.history else None, stats.get("cap_bytes"))
        retention_key = (id(tab.retention), stats.get("frames_seen"))
        parts = {
            "status": (status_line(tab), None),
            "numbers": (numbers_table(stats), None),
            "memory": (memory_key, lambda: memory_figure(tab.history, stats.get("cap_bytes"))),
            "retention": (retention_key, lambda: retention_figure(
                tab.retention, stats.get("frames_seen", 0), tab.session.adapter.frames_per_group)),
            "frame": ((id(tab.current_frame), stats.get("frames_seen")), lambda: tab.current_frame),
        }
        outputs = []
        for name, (key, render) in parts.items():
            if tab.rendered.get(name, object()) == key:
                outputs.append(SKIP())
                continue
            tab.rendered[name] = key
            outputs.append(key if render is None else render())
        return tuple(outputs)

    def _refused(self, error: UserError) -> tuple:
        return (f"⚠ {error}", SKIP(), SKIP(), SKIP(), SKIP())

    # --- page life -----------------------------------------------------------------------------
    def load(self, request: gr.Request) -> tuple:
        """Page opened: make its session. Returns the refresh outputs, then chat, the cap's description
        and the chosen video. (The settings fields start at the server's defaults, as a new session does.)"""
        try:
            tab = self._tab(request)
        except PoolFullError as error:
            return (*self._refused(error), [], "", "")
        return (*self._full_outputs(tab), list(tab.chat), self.cap_description(tab), self._video_words(tab))

    def unload(self, request: gr.Request) -> None:
        """Tab closed or reloaded: free its session, its cache and its uploaded video."""
        tab = self.pool.get(request.session_hash)
        self.pool.close(request.session_hash)
        if tab is not None and tab.video_path is not None:
            self._release(tab.video_path)

    def tick(self, request: gr.Request) -> tuple:
        """The page's timer: what changed since the last tick. A visitor who was refused a session
        gets one here as soon as a slot frees."""
        try:
            tab = self._tab(request)
        except PoolFullError as error:
            return self._refused(error)
        return self._refresh(tab)

    # --- webcam --------------------------------------------------------------------------------
    def webcam_frame(self, frame: np.ndarray | None, request: gr.Request) -> None:
        """A frame of the browser's camera stream (about two a second); never waits on the model."""
        if frame is None:
            return
        try:
            self._tab(request).offer_webcam(frame)
        except PoolFullError:
            return

    def toggle_webcam(self, request: gr.Request) -> tuple:
        """Pause or resume watching the webcam (the camera keeps streaming; frames are not fed)."""
        try:
            tab = self._tab(request)
        except PoolFullError as error:
            return (SKIP(), f"⚠ {error}")
        tab.set_webcam_paused(not tab.webcam_paused)
        return (gr.update(value="Resume watching" if tab.webcam_paused else "Pause watching"), status_line(tab))

    # --- file ----------------------------------------------------------------------------------
    def _video_words(self, tab: TabSession) -> str:
        if tab.video_path is None:
            return "No video chosen yet: upload one, or use the demo video."
        return f"Video: **{tab.video_name}**"

    def upload(self, path: str | None, request: gr.Request) -> tuple:
        """A file was uploaded: check it is a video and make it the one the file tab plays.
        Returns (video words, status)."""
        if not path:
            return (SKIP(), SKIP())
        path = Path(path)
        if path.is_file() and path.stat().st_size > MAX_UPLOAD_BYTES:  # Gradio refuses these first; belt and braces
            self._release(path)
            return (f"⚠ '{path.name}' is over {MAX_UPLOAD_MB} MB; upload a shorter or smaller video.", SKIP())
        words, status, chosen = self._choose(path, None, request)
        if not chosen:
            self._release(path)  # refused (not a video, broken): not kept on disk
        return (words, status)

    def use_demo_video(self, request: gr.Request) -> tuple:
        """Choose the shipped demo video. Returns (video words, status, upload field: emptied)."""
        if self.demo_video is None:
            return ("The demo video is not installed here; upload a video instead.", SKIP(), SKIP())
        words, status, chosen = self._choose(self.demo_video, "demo.mp4", request)
        return (words, status, None if chosen else SKIP())

    def _choose(self, path: Path, name: str | None, request: gr.Request) -> tuple[str, object, bool]:
        try:
            tab = self._tab(request)
            previous = tab.video_path
            tab.choose_video(path, name)
        except UserError as error:
            return (f"⚠ {error}", SKIP(), False)
        if previous is not None and previous != path:
            self._release(previous)
        return (self._video_words(tab), status_line(tab), True)

    def _release(self, path: Path) -> None:
        """Delete an uploaded video that no tab plays any more (see `ui_uploads`)."""
        if is_upload(path) and not any(tab.video_path == path for tab in self.pool.tabs()):
            delete_upload(path)

    def _control(self, action: str, request: gr.Request) -> str:
        try:
            tab = self._tab(request)
            getattr(tab, action)()
        except UserError as error:
            if isinstance(error, PoolFullError):
                return f"⚠ {error}"
            tab.notice = str(error)
        else:
            tab.notice = None
        return status_line(tab)

    def play(self, request: gr.Request) -> str:
        return self._control("play", request)

    def pause(self, request: gr.Request) -> str:
        return self._control("pause", request)

    def stop(self, request: gr.Request) -> str:
        return self._control("stop", request)

    # --- chat ----------------------------------------------------------------------------------
    def ask(self, question: str | None, request: gr.Request) -> Iterator[tuple]:
        """Stream the answer into the chat token by token; the stream keeps flowing meanwhile.
        Yields (chat messages, question box)."""
        question = (question or "").strip()
        if not question:
            yield (SKIP(), SKIP())
            return
        try:
            tab = self._tab(request)
        except PoolFullError as error:
            yield ([{"role": "assistant", "content": f"⚠ {error}"}], SKIP())
            return
        tab.chat.append({"role": "user", "content": question})
        reply = {"role": "assistant", "content": "…"}
        tab.chat.append(reply)
        del tab.chat[:-CHAT_MESSAGES]  # a chat open for days keeps its latest turns only
        yield (list(tab.chat), "")
        text = ""
        try:
            for piece in tab.ask(question):
                if isinstance(piece, Answer):
                    reply["content"] = answer_message(piece)
                else:
                    text += piece
                    reply["content"] = text + " …"
                yield (list(tab.chat), SKIP())
        except UserError as error:
            reply["content"] = f"⚠ {error}"
            yield (list(tab.chat), SKIP())

    # --- settings ------------------------------------------------------------------------------
    def apply_settings(self, mem_cap: str | None, policy: str | None, fps: float | None,
                       kv_bits: int | str | None, request: gr.Request) -> tuple:
        """Reset the tab's session with new settings. Returns the refresh outputs, then chat, the cap's
        description and the settings as applied; bad settings leave the session as it was and say what
        to fix."""
        try:
            tab = self._tab(request)
        except PoolFullError as error:
            return (*self._refused(error), *[SKIP()] * 6)
        try:
            tab.apply(TabSettings(mem_cap=mem_cap or "", policy=policy or "", fps=fps,
                                  kv_bits=tab.settings.kv_bits if kv_bits is None else kv_bits))
        except UserError as error:
            tab.notice = str(error)
            return (*self._full_outputs(tab), *[SKIP()] * 6)
        settings = tab.settings
        return (*self._full_outputs(tab), [], self.cap_description(tab), settings.mem_cap, settings.policy, settings.fps,
                settings.kv_bits)
