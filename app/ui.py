"""The web UI's layout and wiring (Gradio 6): source tabs, chat, memory and retention plots.

The handlers live in `ui_handlers.py`; this file only places components and connects events.
Nothing on the page reaches beyond this server: the theme uses the system's fonts."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # on-device: no calls home

from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from potwatch.compression.policies.base import policy_names  # noqa: E402

from potwatch.app.ui_handlers import DEMO_VIDEO, Handlers  # noqa: E402
from potwatch.app.ui_sessions import SessionPool  # noqa: E402
from potwatch.app.ui_status import header  # noqa: E402
from potwatch.app.ui_uploads import MAX_UPLOAD_MB  # noqa: E402

TICK_S = 1.0  # refresh of status, numbers, plots and the current frame
WEBCAM_EVERY_S = 0.5  # how often the browser sends a camera frame
MAX_UPLOAD = f"{MAX_UPLOAD_MB}mb"  # Gradio answers a bigger upload with HTTP 413
CSS = """
#status { min-height: 2.5em; }
#numbers table { font-size: 0.9em; }
"""


def theme() -> gr.themes.Base:
    """Gradio's default look with system fonts, so the page loads nothing from the internet."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def launch_options() -> dict:
    """What `launch` needs besides host and port: look, upload limit, no run history kept in the browser."""
    return {"theme": theme(), "css": CSS, "max_file_size": MAX_UPLOAD, "footer_links": ["gradio", "settings"],
            "run_history": False}


def build_app(pool: SessionPool, demo_video: Path | None = DEMO_VIDEO) -> gr.Blocks:
    """The page. One session per tab comes from `pool`, made on load and freed on unload."""
    handlers = Handlers(pool, demo_video)
    adapter = pool.adapter
    settings = pool.settings
    with gr.Blocks(title="potwatch", delete_cache=(600, 1800)) as app:
        gr.Markdown(header(adapter.name, adapter.is_demo, pool.max_sessions, adapter.label))
        status = gr.Markdown("starting…", elem_id="status")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                with gr.Tabs():
                    with gr.Tab("Webcam", id="webcam"):
                        webcam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Your camera",
                                          elem_id="webcam", height=280)
                        webcam_pause = gr.Button("Pause watching", size="sm", elem_id="webcam-pause")
                    with gr.Tab("File", id="file"):
                        with gr.Row():
                            upload = gr.File(label=f"Upload a video (up to {MAX_UPLOAD_MB} MB)", file_types=["video"],
                                             type="filepath", height=110, elem_id="upload", scale=3)
                            demo_button = gr.Button("Use the demo video", visible=handlers.demo_video is not None,
                                                    elem_id="use-demo", scale=1)
                        video_words = gr.Markdown(elem_id="video-words")
                        frame = gr.Image(label="Current frame", interactive=False, elem_id="current-frame",
                                         height=240, format="jpeg")
                        with gr.Row():
                            play = gr.Button("Start", variant="primary", elem_id="play")
                            pause = gr.Button("Pause", elem_id="pause")
                            stop = gr.Button("Stop", elem_id="stop")
                with gr.Accordion("Settings for this tab (apply on reset)", open=True):
                    with gr.Row():
                        mem_cap = gr.Textbox(value=settings.mem_cap, label="Memory cap", elem_id="mem-cap",
                                             info="e.g. 400kB (the demo model then compresses often), 1GB, none")
                        policy = gr.Dropdown(policy_names(), value=settings.policy, label="Compression policy",
                                             elem_id="policy")
                        kv_bits = gr.Dropdown([16, 8, 4], value=settings.kv_bits, label="Bits per key/value",
                                              info="8 or 4: quantised, the same cap holds more tokens",
                                              elem_id="kv-bits")
                        fps = gr.Number(value=settings.fps, label="Frames per second", minimum=0.1, maximum=30,
                                        elem_id="fps")
                    apply = gr.Button("Apply and reset", elem_id="apply")
                    cap_words = gr.Markdown(elem_id="cap-words")
            with gr.Column(scale=6):
                chat = gr.Chatbot(label="Chat", elem_id="chat", height=430, buttons=["copy"])
                with gr.Row():
                    question = gr.Textbox(placeholder="Ask about the video, at any moment…", show_label=False,
                                          scale=5, elem_id="question", submit_btn=False)
                    ask = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
        numbers = gr.Markdown(elem_id="numbers")
        with gr.Row():
            memory_plot = gr.Plot(label="Memory", elem_id="memory-plot", show_label=False, format="png")
            retention_plot = gr.Plot(label="Retention", elem_id="retention-plot", show_label=False, format="png")
        timer = gr.Timer(TICK_S)

        refresh = [status, numbers, memory_plot, retention_plot, frame]
        # Sessions are per tab, so no event waits for another tab's; the endpoints are the page's own.
        quiet = {"show_progress": "hidden", "concurrency_limit": None, "api_visibility": "private"}
        app.load(handlers.load, outputs=[*refresh, chat, cap_words, video_words], **quiet)
        app.unload(handlers.unload)
        timer.tick(handlers.tick, outputs=refresh, **quiet)
        webcam.stream(handlers.webcam_frame, inputs=[webcam], outputs=[], stream_every=WEBCAM_EVERY_S, **quiet)
        webcam_pause.click(handlers.toggle_webcam, outputs=[webcam_pause, status], **quiet)
        upload.upload(handlers.upload, inputs=[upload], outputs=[video_words, status], **quiet)
        demo_button.click(handlers.use_demo_video, outputs=[video_words, status, upload], **quiet)
        play.click(handlers.play, outputs=[status], **quiet)
        pause.click(handlers.pause, outputs=[status], **quiet)
        stop.click(handlers.stop, outputs=[status], **quiet)
        for trigger in (question.submit, ask.click):
            trigger(handlers.ask, inputs=[question], outputs=[chat, question], concurrency_limit=None,
                    api_visibility="private")
        apply.click(handlers.apply_settings, inputs=[mem_cap, policy, fps, kv_bits],
                    outputs=[*refresh, chat, cap_words, mem_cap, policy, fps, kv_bits],
                    **quiet)
    return app
