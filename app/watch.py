"""`potwatch watch`: play a video or webcam into a session, ask the questions, print a summary."""

from __future__ import annotations

import json
import queue
import sys
import threading
import time

from tqdm import tqdm

from potwatch.time_spec import parse_time
from potwatch.compression.mem_cap import format_bytes
from potwatch.errors import DeviceMemoryError, UserError
from potwatch.streaming.answer import DEMO_NOTICE, Answer
from potwatch.streaming.question_text import clean_question

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class WatchRun:
    """The state of one `watch` command: the session, the pending questions, the answers so far."""

    def __init__(self, args):
        from dataclasses import replace

        from potwatch.streaming.settings import StreamSettings
        from potwatch.streaming.sources import open_source

        self.args = args
        self.json = args.json
        # every setting checked before anything loads; 'auto' is chosen by the session once the model is loaded
        self.settings = StreamSettings.from_user(
            mem_cap=args.mem_cap, policy=args.policy, fps=args.fps, kv_bits=args.kv_bits, positions=args.positions,
            max_new_tokens=args.max_new_tokens, threads=getattr(args, "threads", None), dtype=args.dtype,
            ingest=args.ingest, **({} if args.change_threshold is None else {"change_threshold": args.change_threshold}),
        )
        self.timed = sorted(((parse_time(t), clean_question(q)) for t, q in args.ask_at), key=lambda item: item[0])
        self.questions = [clean_question(question) for question in args.ask]
        realtime = args.realtime or args.video.startswith("webcam:")
        self.source = open_source(args.video, fps=self.settings.fps, realtime=realtime, max_frames=args.max_frames)
        from potwatch.threads import use_threads

        # the command's threads: potwatch's choice unless --threads, set before the model does any work
        self.threads = use_threads(self.settings.threads)
        self._say(f"loading model {args.model} ...")
        from potwatch.models.registry import load_model
        from potwatch.streaming.session import StreamSession

        adapter = load_model(args.model, dtype=self.settings.dtype, device=args.device,
                             trust_remote_code=getattr(args, "trust_remote_code", False))
        size = (getattr(self.source, "height", None), getattr(self.source, "width", None))
        self.session = StreamSession(adapter, settings=replace(self.settings, threads=None),  # set above
                                     frame_size=size if all(size) else None)
        for question in self.questions + [question for _, question in self.timed]:
            self.session.check_question(question)  # too long for the cap: say so before the video plays
        self.answers: list[Answer] = []
        self.interactive: queue.Queue[str | UserError | None] = queue.Queue()
        self.started = time.perf_counter()
        self.last_time_s = 0.0
        self.stream_error: str | None = None  # why the stream stopped early (damaged file, camera gone, memory)
        self.refused = 0  # interactive questions refused with a message; the run then exits 2

    def _say(self, text: str) -> None:
        if not self.json:
            print(text, file=sys.stderr, flush=True)

    def ask(self, question: str | UserError) -> None:
        """Answer one question; a question that cannot be asked is reported and the run goes on."""
        try:
            if isinstance(question, UserError):
                raise question
            question = self.session.check_question(question)
            self._answer(question)
        except UserError as error:
            self.refused += 1
            print(f"potwatch: error: {error}", file=sys.stderr, flush=True)

    def _answer(self, question: str) -> None:
        live = not self.json
        if live:
            print(f"[{_clock(self.last_time_s)}] Q: {question}\n          A: ", end="", flush=True)
        streamed: list[str] = []

        def show(piece: str) -> None:
            streamed.append(piece)
            print(piece, end="", flush=True)

        answer = self.session.ask(question, on_token=show if live else None)
        self.answers.append(answer)
        if live:
            notice = f" {DEMO_NOTICE}" if answer.meaningless else ""
            if "".join(streamed).strip() != answer.text:  # an age read back to stream time (streaming/position_clock.py)
                notice += f"\n          → {answer.text}"
            print(f"{notice}\n          ({answer.seconds:.2f} s, first token {answer.first_token_s:.2f} s, "
                  f"{answer.frames_covered} of {answer.frames_seen} frames in cache)", flush=True)

    def play(self) -> None:
        session = self.session
        if session.adapter.is_demo:
            self._say("potwatch: demo model with random weights: every answer is meaningless "
                      "(--model tiny answers about potwatch's synthetic world, such as assets/demo.mp4)")
        if session.adapter.label:
            self._say(f"potwatch: model {session.adapter.label}")
        self._say(f"potwatch: {self.threads.describe()}")
        if session.auto_cap is not None:
            self._say(f"potwatch: mem-cap {session.auto_cap.describe()}")
        self._say(f"potwatch: mem-cap {session.describe_cap()}")
        if self.args.interactive:
            threading.Thread(target=self._read_stdin, daemon=True).start()
        frames = self._frames()
        bar = tqdm(total=getattr(self.source, "expected_frames", None), unit="frame", disable=None if not self.json else True, file=sys.stderr)
        try:
            for frame in frames:
                self.last_time_s = frame.time_s
                while self.timed and self.timed[0][0] <= frame.time_s:
                    self._ask_between(self.timed.pop(0)[1], bar)
                try:
                    session.feed(frame)
                except DeviceMemoryError as error:  # the session kept what it had: answer from that
                    self.stream_error = str(error)
                    break
                self._drain_interactive(bar)
                bar.update(1)
                bar.set_postfix_str(f"cache {format_bytes(session.cache.used_bytes)}", refresh=False)
        finally:
            bar.close()
            if hasattr(frames, "close"):
                frames.close()  # stop the reader or decoder now, not when garbage is collected
        self._report_early_end()
        for _, question in self.timed:
            self.ask(question)
        for question in self.questions:
            self.ask(question)
        if self.args.interactive:
            self._say("potwatch: the video ended; keep asking (Ctrl-D to finish)")
            while True:
                question = self.interactive.get()
                if question is None:
                    break
                self.ask(question)

    def _report_early_end(self) -> None:
        """Say why and where the stream stopped early, if it did: the answers come from what came before."""
        self.stream_error = self.stream_error or getattr(self.source, "error", None)
        if self.stream_error:
            print(f"potwatch: warning: {self.stream_error.rstrip('.')}. The stream stopped at "
                  f"{_clock(self.last_time_s)} after {self.session.frames_seen} frames; the questions are answered "
                  "from them.", file=sys.stderr, flush=True)

    def _frames(self):
        if self.args.realtime or self.args.video.startswith("webcam:"):
            from potwatch.streaming.ingester import Ingester

            return Ingester(self.source, self.session).frames()
        return iter(self.source)

    def _ask_between(self, question: str, bar) -> None:
        bar.clear()
        self.ask(question)
        bar.refresh()

    def _drain_interactive(self, bar) -> None:
        while True:
            try:
                question = self.interactive.get_nowait()
            except queue.Empty:
                return
            if question is None:
                self.interactive.put(None)
                return
            self._ask_between(question, bar)

    def _read_stdin(self) -> None:
        """Questions from stdin, one a line; a line that is not UTF-8 is passed on as its error."""
        stream = getattr(sys.stdin, "buffer", sys.stdin)
        try:
            for line in stream:
                try:
                    question = clean_question(line)
                except UserError as error:
                    if line.strip():
                        self.interactive.put(error)
                    continue
                self.interactive.put(question)
        finally:
            self.interactive.put(None)

    def summary(self, interrupted: bool = False) -> dict:
        stats = self.session.stats()
        wall = time.perf_counter() - self.started
        cap = stats["cap_bytes"]
        return {
            "video": self.args.video,
            "model": stats["model"],
            "demo_model": stats["demo_model"],
            "policy": stats["policy"],
            "fps": stats["fps"],
            "mem_cap_bytes": cap,
            "mem_cap_auto": self.session.auto_cap.describe() if self.session.auto_cap else None,
            "threads": _torch_threads(),
            "capacity_tokens": stats["capacity_tokens"],
            "kv_bits": stats["kv_bits"],
            "frames": stats["frames_seen"],
            "video_seconds": self.last_time_s,
            "wall_seconds": wall,
            "ms_per_frame": stats["ms_per_frame"],
            "recent_ms_per_frame": stats["recent_ms_per_frame"],
            "peak_cache_bytes": stats["peak_bytes"],
            "allocated_cache_bytes": stats["allocated_bytes"],
            "peak_under_cap": cap is None or (stats["peak_bytes"] <= cap and stats["allocated_bytes"] <= cap),
            "compressions": stats["compressions"],
            "compression_ms": stats["compression_ms"],
            "dropped_frames": stats["dropped_frames"],
            "tokens_in_cache": stats["tokens_in_cache"],
            "positions": stats["positions"],
            "max_position": stats["max_position"],
            "frames_covered": stats["frames_covered"],
            "ingest": stats["ingest"],
            "source_error": str(getattr(self.source, "error", None) or "") or None,
            "stream_error": self.stream_error or str(getattr(self.source, "error", None) or "") or None,
            "interrupted": interrupted,
            "answers": [answer.as_dict() for answer in self.answers],
        }

    def print_summary(self, summary: dict) -> None:
        if self.json:
            print(json.dumps(summary, indent=2))
            return
        cap = summary["mem_cap_bytes"]
        cap_text = f"{format_bytes(cap)} cap ({'under' if summary['peak_under_cap'] else 'OVER'} the cap)" if cap else "no cap"
        per_frame = f"{summary['ms_per_frame']:.0f} ms/frame" if summary["ms_per_frame"] else "no frame ingested"
        print(
            f"summary: {summary['frames']} frames ({summary['video_seconds']:.1f} s of video) in {summary['wall_seconds']:.1f} s, "
            f"{per_frame}; peak cache {format_bytes(summary['peak_cache_bytes'])} of {cap_text}; "
            f"{summary['compressions']} compressions ({summary['compression_ms']:.0f} ms); {summary['dropped_frames']} dropped frames"
            + _ingest_text(summary["ingest"])
            + ("; stream stopped early" if summary["stream_error"] else "")
            + ("; interrupted" if summary["interrupted"] else ""),
            flush=True,
        )


def _ingest_text(ingest: dict) -> str:
    """'; sent 1,234 of 9,000 visual tokens (changed only), tower skipped on 80 groups' under --ingest changed."""
    if ingest["mode"] != "changed" or not ingest["visual_tokens"]:
        return ""
    return (f"; sent {ingest['sent_tokens']:,} of {ingest['visual_tokens']:,} visual tokens (changed only), "
            f"tower skipped on {ingest['tower_skips']:,} groups")


def run_watch(args) -> int:
    try:
        run = WatchRun(args)
    except KeyboardInterrupt:
        print("potwatch: interrupted before the stream started", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    try:
        run.play()
    except KeyboardInterrupt:
        run.print_summary(run.summary(interrupted=True))
        return EXIT_INTERRUPTED
    run.print_summary(run.summary())
    return EXIT_USER_ERROR if run.refused else 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes):02d}:{rest:04.1f}"
