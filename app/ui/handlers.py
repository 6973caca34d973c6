"""The web UI's event handlers, as plain methods: each finds its tab's session by the request's
session hash, so they run (and are tested) without a browser.

Every handler that changes what runs returns the page's refresh outputs (`REFRESH`, in that order),
so the status, the controls shown and the numbers always match what is running.

Type hints here must resolve at run time: Gradio reads them to know where to pass `gr.Request`."""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property
from pathlib import Path

import gradio as gr
import numpy as np

from potwatch.assets import demo_video as packaged_demo_video
from potwatch.errors import DeviceMemoryError, UserError
from potwatch.streaming.session import StreamSession

from potwatch.app.ui.caps import cap_examples, least_cap_bytes
from potwatch.app.ui.chat import ChatHandlers
from potwatch.app.ui.defaults import TYPICAL_FRAME
from potwatch.app.ui.plots import memory_figure, retention_figure
from potwatch.app.ui.sessions import PoolFullError, SessionPool, TabSession, give_memory_back
from potwatch.app.ui.settings import FIELDS, SETTING_OUTPUTS, SettingError, check_fields, reset_error
from potwatch.app.ui.status import memory_note, numbers_table, status_line
from potwatch.app.ui.style import PHONE_PX
from potwatch.app.ui.uploads import MAX_UPLOAD_BYTES, MAX_UPLOAD_MB, delete_upload, is_upload
from potwatch.app.ui.words import ui_words

DEMO_VIDEO = packaged_demo_video()  # package data: found wherever potwatch is installed
SKIP = gr.skip
# What the page's timer and the source controls update, in this order.
REFRESH = ("status", "numbers", "memory", "retention", "frame", "memory_note", "video",
           "webcam_pause", "play", "pause", "stop", "workspace")
CONTROLS = ("webcam_pause", "play", "pause", "stop")
# A tick may be computed before a click's outputs and reach the page after them; the ticks after a click
# send the status and the buttons even unchanged, so a late tick cannot leave them stale.
RESEND_TICKS = 2


def named(outputs: tuple, names: tuple[str, ...] = REFRESH) -> dict:
    """Refresh outputs by name (for tests and readers)."""
    return dict(zip(names, outputs))


class Handlers(ChatHandlers):
    """Everything the page asks of the server. Outputs are tuples in the order `ui.py` wires them."""

    def __init__(self, pool: SessionPool, demo_video: Path | None = DEMO_VIDEO) -> None:
        self.pool = pool
        self.demo_video = Path(demo_video) if demo_video is not None and Path(demo_video).is_file() else None
        self.blocks: gr.Blocks | None = None  # the page, once built (`page.build_app` sets it)

    @cached_property
    def cap_hint(self) -> str:
        """Caps to suggest, worked out once for the model in use: 'a size such as 900kB or 2MB, or none'
        (the least cap that works at the starting settings, rounded up, and about twice it, within what this
        server allows)."""
        pool = self.pool
        settings = pool.settings.for_session(pool.max_new_tokens)
        # a probe for the prompt's length: no cap (allocates little), so 16 bits (a quantised cache needs a cap)
        probe = StreamSession(pool.adapter, settings=replace(settings, cap_bytes=None, kv_bits=16))
        try:
            least = least_cap_bytes(probe, settings, TYPICAL_FRAME)
        finally:
            probe.close()
        limits = pool.budget.limits
        uncapped = (limits.allow_any_cap or limits.ceiling is None) and settings.kv_bits == 16  # quantised: capped
        none = ", or none" if uncapped else ""
        return f"a size such as {' or '.join(cap_examples(least, limits.ceiling))}{none}"

    # --- the tab's session ---------------------------------------------------------------------
    def _tab(self, request: gr.Request) -> TabSession:
        """This tab's session, opened on first use; PoolFullError when the server is full."""
        return self.pool.open(request.session_hash)

    def cap_description(self, tab: TabSession) -> str:
        """What the tab's cap holds (a snapshot: never the cache a reset is swapping), then what caps this
        server allows (when it limits them). Noted as sent: the timer sends it again only once it changes."""
        text = self._cap_text(tab)
        tab.rendered["cap"] = text
        return text

    def _cap_text(self, tab: TabSession) -> str:
        limits = self.pool.budget.limits
        allowed = "" if limits.budget is None and limits.ceiling is None else f" {limits.describe()}"
        return tab.cap_line + allowed

    def settings_outputs(self, tab: TabSession, error: SettingError | None = None) -> tuple:
        """The settings fields as in force, the cap's description, and each field's error (one at most), in
        the order of `SETTING_OUTPUTS`."""
        settings = tab.settings
        errors = tuple(f"⚠ {error}" if error is not None and error.field == field else "" for field in FIELDS)
        return (settings.mem_cap, settings.policy, settings.fps, settings.kv_bits, self.cap_description(tab), *errors,
                settings.ingest, settings.change_threshold)

    def _full_outputs(self, tab: TabSession, clicked: bool = True) -> tuple:
        """The refresh outputs, all rendered now."""
        tab.rendered.clear()
        return self._refresh(tab, clicked)

    def _controls(self, tab: TabSession) -> dict:
        """Which source buttons apply now, and their labels: (visible, label) per button."""
        runner = tab.runner
        file_on = runner is not None and runner.kind == "file" and not runner.finished
        paused = file_on and runner.source.paused
        watching = tab.webcam_paused or tab.source_kind == "webcam"
        return {
            "webcam_pause": (watching, "Resume watching" if tab.webcam_paused else "Pause watching"),
            "play": (tab.video_path is not None and (not file_on or paused), "Resume" if paused else "Start"),
            "pause": (file_on and not paused, "Pause"),
            "stop": (file_on, "Stop"),
        }

    def _refresh(self, tab: TabSession, clicked: bool = True) -> tuple:
        """Like `tick`: only what changed since the page last got it; the rest is skipped. After a click the
        next RESEND_TICKS ticks send the status and buttons again (see RESEND_TICKS). One refresh of a tab
        at a time, so what is noted as sent is what was sent."""
        with tab.render_lock:
            if clicked:
                tab.resend = RESEND_TICKS
            return self._changed(tab)

    def _tick_refresh(self, tab: TabSession) -> tuple:
        """The timer's refresh: what changed, and the status and buttons again just after a click."""
        with tab.render_lock:
            if tab.resend > 0:
                tab.resend -= 1
                for name in ("status", *CONTROLS):
                    tab.rendered.pop(name, None)
            return self._changed(tab)

    def _changed(self, tab: TabSession) -> tuple:
        """The refresh outputs that differ from what the page last got; SKIP for the rest."""
        stats = tab.stats
        narrow = tab.narrow
        memory_key = (len(tab.history), tab.history[-1] if tab.history else None, stats.get("cap_bytes"), narrow)
        retention_key = (id(tab.retention), stats.get("frames_seen"), stats.get("frames_covered"), narrow)
        parts = {
            "status": (status_line(tab), None),
            "numbers": (numbers_table(stats), None),
            "memory": (memory_key, lambda: memory_figure(tab.history, stats.get("cap_bytes"), narrow)),
            "retention": (retention_key, lambda: retention_figure(
                tab.retention, stats.get("frames_seen", 0), tab.session.adapter.frames_per_group,
                stats.get("frames_covered", 0), narrow)),
            "frame": ((id(tab.current_frame), stats.get("frames_seen")), lambda: tab.current_frame),
            "memory_note": (memory_note(tab), None),
            "video": (self._video_words(tab), None),
        }
        parts["workspace"] = (True, lambda: gr.update(visible=True))  # a tab that waited for a session gets it shown
        for name, (visible, label) in self._controls(tab).items():
            parts[name] = ((visible, label), lambda visible=visible, label=label: gr.update(visible=visible, value=label))
        outputs = []
        for name in REFRESH:
            key, render = parts[name]
            if tab.rendered.get(name, object()) == key:
                outputs.append(SKIP())
                continue
            tab.rendered[name] = key
            outputs.append(key if render is None else render())
        return tuple(outputs)

    def _refused(self, error: UserError) -> tuple:
        """A tab without a session (the server is full): the reason, and nothing to click that would do
        nothing (the controls, settings and chat are hidden until a session frees)."""
        outputs = {name: SKIP() for name in REFRESH}
        outputs["status"] = f"⚠ {error}"
        outputs["workspace"] = gr.update(visible=False)
        return tuple(outputs[name] for name in REFRESH)

    # --- page life -----------------------------------------------------------------------------
    def load(self, request: gr.Request) -> tuple:
        """Page opened: make its session. Returns the refresh outputs, then chat and the cap's
        description. (The settings fields start at the server's defaults, as a new session does.)"""
        try:
            tab = self._tab(request)
        except PoolFullError as error:
            return (*self._refused(error), [], "")
        return (*self._full_outputs(tab, clicked=False), list(tab.chat), self.cap_description(tab))

    def _cap_update(self, tab: TabSession):
        """The cap line when it changed since the page got it (a video's frame size, a waiting tab admitted)."""
        text = self._cap_text(tab)
        if tab.rendered.get("cap") == text:
            return SKIP()
        tab.rendered["cap"] = text
        return text

    def unload(self, request: gr.Request) -> None:
        """Tab closed or reloaded: free its session, its cache, its uploaded video and Gradio's copy of its
        page, and hand the freed memory back to the system."""
        tab = self.pool.get(request.session_hash)
        self.pool.close(request.session_hash)
        if tab is not None and tab.video_path is not None:
            self._release(tab.video_path)
        del tab  # the last reference here: what it held can be collected now
        self._forget_page_state(request.session_hash)
        give_memory_back()

    def _forget_page_state(self, key: str) -> None:
        """Gradio keeps, per page, a copy of every component's config with its last value (plots, the
        frame, the chat) for up to 10,000 pages, closed ones included: a closed tab's copy goes here."""
        holder = getattr(self.blocks, "state_holder", None)
        if holder is None:
            return
        with holder.lock:
            holder.session_data.pop(key, None)
            holder.time_last_used.pop(key, None)

    def tick(self, request: gr.Request) -> tuple:
        """The page's timer: what changed since the last tick (the refresh outputs, then the cap line). A
        visitor who was refused a session gets one here as soon as a slot frees."""
        try:
            tab = self._tab(request)
        except PoolFullError as error:
            return (*self._refused(error), SKIP())
        return (*self._tick_refresh(tab), self._cap_update(tab))

    def page_tick(self, width: float | None, request: gr.Request) -> tuple:
        """The timer as the page wires it: `tick`, knowing the browser window's width (read by the page's
        JavaScript each tick), so a phone gets plots drawn for its width, also after it turns."""
        tab = self.pool.get(request.session_hash)
        if tab is not None:
            tab.narrow = width is not None and 0 < width <= PHONE_PX
        return self.tick(request)

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
            return self._refused(error)
        tab.set_webcam_paused(not tab.webcam_paused)
        return self._refresh(tab)

    # --- file ----------------------------------------------------------------------------------
    def _video_words(self, tab: TabSession) -> str:
        if tab.video_notice:
            return f"⚠ {tab.video_notice}"
        if tab.video_path is None:
            return "No video chosen yet: upload one, or use the demo video."
        return f"Video: **{tab.video_name}**"

    def upload(self, path: str | None, request: gr.Request) -> tuple:
        """A file was uploaded: check it is a video and make it the one the file tab plays. Returns
        the refresh outputs, then the upload field (emptied when the file is refused)."""
        if not path:
            return (*[SKIP()] * len(REFRESH), SKIP())
        path = Path(path)
        try:
            tab = self._tab(request)
        except PoolFullError as error:
            self._release(path)
            return (*self._refused(error), None)
        if path.is_file() and path.stat().st_size > MAX_UPLOAD_BYTES:  # Gradio refuses these first; belt and braces
            refusal = f"'{path.name}' is over {MAX_UPLOAD_MB} MB; upload a shorter or smaller video."
        else:
            refusal = self._choose(tab, path, path.name)
        if refusal is None:
            return (*self._refresh(tab), SKIP())
        self._release(path)  # refused (too big, not a video, broken): not kept on disk, not listed
        tab.video_notice = refusal
        return (*self._refresh(tab), None)

    def use_demo_video(self, request: gr.Request) -> tuple:
        """Choose the shipped demo video. Returns the refresh outputs, then the upload field (emptied)."""
        try:
            tab = self._tab(request)
        except PoolFullError as error:
            return (*self._refused(error), SKIP())
        if self.demo_video is None:
            tab.video_notice = "The demo video is not installed here; upload a video instead."
            return (*self._refresh(tab), SKIP())
        refusal = self._choose(tab, self.demo_video, self.demo_video.name)
        tab.video_notice = refusal
        return (*self._refresh(tab), None if refusal is None else SKIP())

    def _choose(self, tab: TabSession, path: Path, name: str) -> str | None:
        """Make `path` the tab's video; the refusal in the user's words (with `name`, never the server's
        path), or None."""
        previous = tab.video_path
        try:
            tab.choose_video(path, name)
        except UserError as error:
            return ui_words(error, path, name)
        tab.video_notice = None
        if previous is not None and previous != path:
            self._release(previous)
        return None

    def _release(self, path: Path) -> None:
        """Delete an uploaded video that no tab plays any more (see `ui_uploads`)."""
        if is_upload(path) and not any(tab.video_path == path for tab in self.pool.tabs()):
            delete_upload(path)

    def _control(self, action: str, request: gr.Request) -> tuple:
        try:
            tab = self._tab(request)
        except PoolFullError as error:
            return self._refused(error)
        try:
            getattr(tab, action)()
        except UserError as error:
            tab.notice = str(error)
        else:
            tab.notice = None
        return self._refresh(tab)

    def play(self, request: gr.Request) -> tuple:
        return self._control("play", request)

    def pause(self, request: gr.Request) -> tuple:
        return self._control("pause", request)

    def stop(self, request: gr.Request) -> tuple:
        return self._control("stop", request)

    # --- settings ------------------------------------------------------------------------------
    def apply_settings(self, mem_cap: str | None, policy: str | None, fps: float | None,
                       kv_bits: int | str | None, request: gr.Request, ingest: str | None = None,
                       change_threshold: float | str | None = None) -> tuple:
        """Reset the tab's session with new settings. Returns the refresh outputs, the chat, then the
        settings outputs (`settings_outputs`). A setting that cannot work changes nothing: its field is
        set back to the value in force, with the reason beside it.

        The ingest fields come after the request (Gradio passes it by its type hint, wherever it is), so
        callers that give only the first four keep working. A field left out or emptied (None) stays as in
        force, as the bits do."""
        try:
            tab = self._tab(request)
        except PoolFullError as error:
            return (*self._refused(error), SKIP(), *[SKIP()] * len(SETTING_OUTPUTS))  # the chat, the settings
        in_force = tab.settings
        try:
            hint = self.cap_hint if not str(mem_cap or "").strip() else ""  # worked out only when it is said
            tab.apply(check_fields(
                mem_cap, policy, fps, in_force.kv_bits if kv_bits is None else kv_bits, hint,
                ingest=in_force.ingest if ingest is None else ingest,
                change_threshold=in_force.change_threshold if change_threshold is None else change_threshold))
        except DeviceMemoryError as error:  # the session started afresh at its old settings: so does the page
            return (*self._full_outputs(tab), [], *self.settings_outputs(tab, reset_error(error)))
        except UserError as error:
            return (*self._refresh(tab), SKIP(), *self.settings_outputs(tab, reset_error(error)))
        return (*self._full_outputs(tab), [], *self.settings_outputs(tab))
