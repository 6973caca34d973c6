"""The web UI's layout and wiring (Gradio 6): source tabs, chat, memory and retention plots.

The handlers live in `ui_handlers.py` and `ui_chat.py`, the look in `ui_style.py`; this file only
places components and connects events. Nothing on the page reaches beyond this server."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # on-device: no calls home

from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from potwatch.app.ui.chat import EXAMPLE_QUESTIONS  # noqa: E402
from potwatch.app.ui.handlers import DEMO_VIDEO, REFRESH, Handlers  # noqa: E402
from potwatch.app.ui.sessions import SessionPool  # noqa: E402
from potwatch.app.ui.settings import INGEST_CHOICES, SETTING_OUTPUTS, policy_choices  # noqa: E402
from potwatch.app.ui.status import header  # noqa: E402
from potwatch.app.ui.style import CSS, theme  # noqa: E402
from potwatch.app.ui.uploads import MAX_UPLOAD_MB  # noqa: E402

TICK_S = 1.0  # refresh of status, numbers, plots and the current frame
WEBCAM_EVERY_S = 0.5  # how often the browser sends a camera frame
MAX_UPLOAD = f"{MAX_UPLOAD_MB}mb"  # Gradio answers a bigger upload with HTTP 413
UPLOAD_PX = 150  # the drop area's height: its icon and three lines clear the field's label
INGEST_PX = 200  # the ingest fields' least width: "only what changed" whole beside the menu's arrow


def launch_options() -> dict:
    """What `launch` needs besides host and port: look, upload limit, no run history kept in the browser."""
    return {"theme": theme(), "css": CSS, "max_file_size": MAX_UPLOAD, "footer_links": ["gradio", "settings"],
            "run_history": False}


def _field_error(elem_id: str) -> gr.Markdown:
    return gr.Markdown("", elem_id=elem_id, elem_classes=["field-error"])


def build_app(pool: SessionPool, demo_video: Path | None = DEMO_VIDEO) -> gr.Blocks:
    """The page. One session per tab comes from `pool`, made on load and freed on unload."""
    handlers = Handlers(pool, demo_video)
    adapter = pool.adapter
    settings = pool.settings
    c: dict[str, gr.components.Component] = {}  # the refresh outputs by name
    with gr.Blocks(title="potwatch", delete_cache=(600, 1800)) as app:
        gr.Markdown(header(adapter.name, adapter.is_demo, pool.max_sessions, adapter.label))
        c["status"] = gr.Markdown("starting…", elem_id="status")
        with gr.Column(elem_id="workspace") as c["workspace"]:  # hidden while the tab waits for a session
            with gr.Row(equal_height=False, elem_id="main-row"):
                with gr.Column(scale=5, elem_id="watch-column"):
                    with gr.Tabs() as source_tabs:
                        with gr.Tab("Webcam", id="webcam"):
                            webcam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Your camera",
                                              elem_id="webcam", height=280)
                            c["webcam_pause"] = gr.Button("Pause watching", size="sm", elem_id="webcam-pause",
                                                          visible=False)
                        with gr.Tab("File", id="file"):
                            with gr.Row():
                                upload = gr.File(label=f"Upload a video (up to {MAX_UPLOAD_MB} MB)", file_types=["video"],
                                                 type="filepath", height=UPLOAD_PX, elem_id="upload", scale=3)
                                demo_button = gr.Button("Use the demo video", visible=handlers.demo_video is not None,
                                                        elem_id="use-demo", scale=1)
                            c["video"] = gr.Markdown(elem_id="video-words")
                            c["frame"] = gr.Image(label="Current frame", interactive=False, elem_id="current-frame",
                                                  height=240, format="jpeg")
                            with gr.Row():
                                c["play"] = gr.Button("Start", variant="primary", elem_id="play", visible=False)
                                c["pause"] = gr.Button("Pause", elem_id="pause", visible=False)
                                c["stop"] = gr.Button("Stop", elem_id="stop", visible=False)
                    with gr.Accordion("Settings for this tab (apply on reset)", open=True):
                        with gr.Row():
                            with gr.Column(min_width=120):
                                mem_cap = gr.Textbox(value=settings.mem_cap, label="Memory cap", elem_id="mem-cap",
                                                     info=handlers.cap_hint)
                                mem_cap_error = _field_error("mem-cap-error")
                            with gr.Column(min_width=120):
                                kv_bits = gr.Dropdown([16, 8, 4], value=settings.kv_bits, label="Bits per key/value",
                                                      info="8 or 4: the same cap holds more tokens", elem_id="kv-bits")
                                kv_bits_error = _field_error("kv-bits-error")
                            with gr.Column(min_width=120):
                                # no minimum/maximum here: Gradio would refuse 0 or 31 with its own toast and a
                                # traceback; potwatch's check answers beside the field and puts the value back
                                fps = gr.Number(value=settings.fps, label="Frames per second",
                                                info="frames sampled from the source, up to 30", elem_id="fps")
                                fps_error = _field_error("fps-error")
                        policy = gr.Dropdown(policy_choices(), value=settings.policy, label="Compression policy",
                                             info="what to keep when the cache is full", elem_id="policy")
                        policy_error = _field_error("policy-error")
                        with gr.Row():  # wide enough for "only what changed": one under the other on a phone
                            with gr.Column(min_width=INGEST_PX):
                                ingest = gr.Dropdown(INGEST_CHOICES, value=settings.ingest, label="Ingest",
                                                     info="only what changed: faster on a fixed camera",
                                                     elem_id="ingest")
                                ingest_error = _field_error("ingest-error")
                            with gr.Column(min_width=INGEST_PX):
                                # as fps: no minimum/maximum, so potwatch's check answers beside the field
                                change_threshold = gr.Number(value=settings.change_threshold, label="Change threshold",
                                                             info="with only what changed: lower sends more tokens",
                                                             elem_id="change-threshold")
                                change_threshold_error = _field_error("change-threshold-error")
                        apply = gr.Button("Apply and reset", elem_id="apply")
                        cap_words = gr.Markdown(elem_id="cap-words")
                with gr.Column(scale=6, elem_id="talk-column"):
                    # no label: Gradio floats it over the messages, and the top one scrolled under it
                    chat = gr.Chatbot(label="Chat", show_label=False, elem_id="chat", height=430, buttons=["copy"])
                    with gr.Row(elem_id="question-row"):
                        question = gr.Textbox(placeholder="Ask about the video…", show_label=False,
                                              scale=5, elem_id="question", submit_btn=False)
                        ask = gr.Button("Ask", variant="primary", scale=1, min_width=60, elem_id="ask")
                    question_hint = gr.Markdown("", elem_id="question-hint", elem_classes=["field-error"])
                    examples = []
                    if handlers.demo_video is not None:
                        gr.Markdown("**Try an example** (plays the demo video, then asks):", elem_id="examples-title")
                        with gr.Row(elem_id="examples-row"):
                            for index, text in enumerate(EXAMPLE_QUESTIONS):
                                examples.append((gr.Button(text, size="sm", elem_id=f"example-{index}"), text))
            c["numbers"] = gr.HTML(elem_id="numbers")
            with gr.Row(elem_id="plots-row"):
                with gr.Column(elem_id="memory-column"):
                    c["memory"] = gr.Plot(label="Memory", elem_id="memory-plot", show_label=False, format="png")
                    c["memory_note"] = gr.Markdown(elem_id="memory-note")
                with gr.Column(elem_id="retention-column"):
                    c["retention"] = gr.Plot(label="Retention", elem_id="retention-plot", show_label=False, format="png")
        timer = gr.Timer(TICK_S)
        screen_width = gr.Number(visible=False, elem_id="screen-width")  # filled by the page's JavaScript each tick

        refresh = [c[name] for name in REFRESH]
        fields = {"mem_cap": mem_cap, "policy": policy, "fps": fps, "kv_bits": kv_bits, "cap_words": cap_words,
                  "ingest": ingest, "change_threshold": change_threshold, "mem_cap_error": mem_cap_error,
                  "policy_error": policy_error, "kv_bits_error": kv_bits_error, "fps_error": fps_error,
                  "ingest_error": ingest_error, "change_threshold_error": change_threshold_error}
        setting_outputs = [fields[name] for name in SETTING_OUTPUTS]
        # Sessions are per tab, so no event waits for another tab's; the endpoints are the page's own.
        quiet = {"show_progress": "hidden", "concurrency_limit": None, "api_visibility": "private"}
        app.load(handlers.load, outputs=[*refresh, chat, cap_words], **quiet)
        app.unload(handlers.unload)
        timer.tick(handlers.page_tick, inputs=[screen_width], outputs=[*refresh, cap_words],
                   js="(width) => [window.innerWidth]", **quiet)
        webcam.stream(handlers.webcam_frame, inputs=[webcam], outputs=[], stream_every=WEBCAM_EVERY_S, **quiet)
        c["webcam_pause"].click(handlers.toggle_webcam, outputs=refresh, **quiet)
        upload.upload(handlers.upload, inputs=[upload], outputs=[*refresh, upload], **quiet)
        demo_button.click(handlers.use_demo_video, outputs=[*refresh, upload], **quiet)
        c["play"].click(handlers.play, outputs=refresh, **quiet)
        c["pause"].click(handlers.pause, outputs=refresh, **quiet)
        c["stop"].click(handlers.stop, outputs=refresh, **quiet)
        for trigger in (question.submit, ask.click):
            trigger(handlers.ask, inputs=[question], outputs=[chat, question, question_hint], concurrency_limit=None,
                    api_visibility="private")
        for button, text in examples:
            button.click(handlers.example_runner(text), outputs=[chat, question_hint, *setting_outputs, source_tabs],
                         **quiet)
        apply.click(handlers.apply_settings, inputs=[mem_cap, policy, fps, kv_bits, ingest, change_threshold],
                    outputs=[*refresh, chat, *setting_outputs], **quiet)
    handlers.blocks = app  # so a closed tab's page state can be dropped
    return app
