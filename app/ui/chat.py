"""The chat's handlers: questions streamed into the chat, and the one-click examples (the demo video
with a question the `tiny` model answers right).

A question gets a plain reply without the model when it cannot be answered (empty, or nothing watched
yet); an answer never shows undecodable bytes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import gradio as gr

from potwatch.errors import UserError
from potwatch.streaming.answer import Answer

from potwatch.app.ui.sessions import PoolFullError, TabSession
from potwatch.app.ui.settings import SETTING_OUTPUTS
from potwatch.app.ui.status import answer_message
from potwatch.app.ui.words import readable, ui_words

SKIP = gr.skip
CHAT_MESSAGES = 200  # messages the chat keeps (100 questions and answers); older ones scroll out
EXAMPLE_QUESTIONS = ("What colour was the box?", "How many objects came in?")  # tiny answers Red., One.
EMPTY_HINT = f"Type a question first, e.g. “{EXAMPLE_QUESTIONS[0]}”"
NOTHING_SEEN = ("I have not seen anything yet: start the webcam or play a video (or try an example below), "
                "then ask again.")
DEMO_WAIT_S = 600  # an example gives up waiting for the demo video's end after this long
_POLL_S = 0.25


class ChatHandlers:
    """Questions and examples; mixed into `Handlers`, which provides `_tab`, `pool` and `demo_video`."""

    def _post(self, tab: TabSession, question: str) -> dict:
        """Put the question and an empty reply into the chat; returns the reply to fill in."""
        tab.chat.append({"role": "user", "content": question})
        reply = {"role": "assistant", "content": "…"}
        tab.chat.append(reply)
        del tab.chat[:-CHAT_MESSAGES]  # a chat open for days keeps its latest turns only
        return reply

    def _answer_into(self, tab: TabSession, question: str, reply: dict) -> Iterator[None]:
        """Fill `reply` with the answer as it streams; yields after every change."""
        if not tab.stats.get("frames_seen"):
            reply["content"] = NOTHING_SEEN
            yield
            return
        text = ""
        try:
            for piece in tab.ask(question):
                if isinstance(piece, Answer):
                    reply["content"] = answer_message(piece)
                else:
                    text += piece
                    reply["content"] = readable(text) + " …"
                yield
        except UserError as error:
            reply["content"] = f"⚠ {ui_words(error)}"
            yield

    def ask(self, question: str | None, request: gr.Request) -> Iterator[tuple]:
        """Stream the answer into the chat token by token; the stream keeps flowing meanwhile.
        Yields (chat messages, question box, hint under the question box)."""
        question = (question or "").strip()
        if not question:
            yield (SKIP(), SKIP(), EMPTY_HINT)
            return
        try:
            tab = self._tab(request)
        except PoolFullError as error:
            yield ([{"role": "assistant", "content": f"⚠ {error}"}], SKIP(), "")
            return
        reply = self._post(tab, question)
        yield (list(tab.chat), "", "")
        for _ in self._answer_into(tab, question, reply):
            yield (list(tab.chat), SKIP(), SKIP())

    # --- examples ------------------------------------------------------------------------------
    def example_runner(self, question: str):
        """The click handler of one example button."""
        def run(request: gr.Request) -> Iterator[tuple]:
            yield from self.example(question, request)

        return run

    def example(self, question: str, request: gr.Request) -> Iterator[tuple]:
        """One click: the demo video, watched to its end under the server's starting settings, then
        `question`. Asks at once when this tab has just watched the demo to its end; waits for the end
        when the demo is playing (or answers from what was seen if it is stopped first). Yields (chat,
        hint, the settings outputs of `Handlers.settings_outputs`, the source tabs)."""
        unchanged = (SKIP(),) * (len(SETTING_OUTPUTS) + 1)  # the settings outputs and the source tabs
        if self.demo_video is None:
            yield (SKIP(), "The demo video is not installed on this server; upload a video instead.", *unchanged)
            return
        try:
            tab = self._tab(request)
        except PoolFullError as error:
            yield ([{"role": "assistant", "content": f"⚠ {error}"}], "", *unchanged)
            return
        fields = unchanged
        runner = tab.runner
        playing_demo = (runner is not None and runner.kind == "file" and not runner.finished
                        and tab.video_path == self.demo_video)
        if not playing_demo and not tab.played_through(self.demo_video):
            try:
                tab.apply(self.pool.settings)  # a fresh session under the settings the example is known to work with
            except UserError as error:  # the memory budget has no room for the starting cap now, say
                yield ([*tab.chat, {"role": "assistant", "content": f"⚠ {ui_words(error)}"}], "", *unchanged)
                return
            tab.choose_video(self.demo_video, self.demo_video.name)
            tab.play()
            runner = tab.runner
            fields = (*self.settings_outputs(tab), gr.Tabs(selected="file"))  # where the demo's frames show
        reply = self._post(tab, question)
        if runner is not None and not runner.finished:
            length = getattr(runner.source, "duration_s", None)
            reply["content"] = (f"Watching the demo video{f' ({length:.0f} s)' if length else ''} first; "
                                "the answer comes when it ends.")
            yield (list(tab.chat), "", *fields)
            fields = unchanged
            deadline = time.monotonic() + DEMO_WAIT_S
            while not runner.finished and time.monotonic() < deadline:
                time.sleep(_POLL_S)
            if not any(message is reply for message in tab.chat):
                return  # the tab was reset meanwhile: the chat it was asked in is gone
        for _ in self._answer_into(tab, question, reply):
            yield (list(tab.chat), "", *fields)
            fields = unchanged
