"""lmms-eval's generate_until requests, read as questions about videos: which video (the task's
`doc_to_visual`), the prompt, the answer length, the stop strings, and the moment to ask (`ask_at`), then
grouped by video so each video streams once for all the questions about it, from any task of the run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from potwatch.errors import UserError
from potwatch.streaming.settings import answer_length
from potwatch.time_spec import parse_time


@dataclass
class VideoQuestion:
    index: int  # where its answer goes in the list lmms-eval gets back
    prompt: str
    max_new_tokens: int
    until: list[str] = field(default_factory=list)
    ask_at: float | None = None  # seconds into the video; None: at its end


def video_questions(requests, task_dict: dict, default_tokens: int, warn=None) -> dict[str, list[VideoQuestion]]:
    """{video path: its questions, in the order to ask them}: by `ask_at` (those without one last, at the end),
    else in lmms-eval's order, which is each task's document order (what `potwatch bench --accuracy` asks
    in). `warn` gets one line per kind of generation setting potwatch does not follow (it decodes greedily)."""
    by_video: dict[str, list[VideoQuestion]] = {}
    warned: set[str] = set()
    for index, request in enumerate(requests):
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args[:6]
        doc = task_dict[task][split][doc_id]
        kwargs = dict(gen_kwargs or {})
        for note in _not_followed(kwargs) - warned:
            warned.add(note)
            if warn is not None:
                warn(f"potwatch decodes greedily; {note} is not followed (task {task})")
        question = VideoQuestion(index, str(context), _answer_tokens(kwargs, default_tokens), _until(kwargs),
                                 _ask_at(doc, task))
        by_video.setdefault(_video_path(doc_to_visual(doc), task, doc_id), []).append(question)
    return {video: sorted(questions, key=lambda q: (q.ask_at is None, q.ask_at or 0.0, q.index))
            for video, questions in by_video.items()}


def cut_at_stops(text: str, until: list[str]) -> str:
    """The answer up to the first stop string, as lmms-eval's own models return it."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text


def _answer_tokens(kwargs: dict, default: int) -> int:
    value = kwargs.get("max_new_tokens", default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return answer_length(value)


def _until(kwargs: dict) -> list[str]:
    until = kwargs.get("until") or []
    if isinstance(until, str):
        return [until]
    if not isinstance(until, (list, tuple)) or not all(isinstance(stop, str) for stop in until):
        raise UserError(f"The task's `until` {until!r} is not a list of strings; fix its generation_kwargs.")
    return list(until)


def _not_followed(kwargs: dict) -> set[str]:
    notes = set()
    if kwargs.get("do_sample"):
        notes.add("do_sample")
    if (kwargs.get("temperature") or 0) > 0:
        notes.add("temperature")
    if (kwargs.get("num_beams") or 1) > 1:
        notes.add("num_beams")
    return notes


def _ask_at(doc, task: str) -> float | None:
    """A row's `ask_at` (seconds, or a time like '1m30s'): make-qa's "now" questions carry one."""
    value = doc.get("ask_at") if hasattr(doc, "get") else None
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return parse_time(str(value))
    except UserError:
        raise UserError(f"Task {task}: ask_at {value!r} is not a time; give seconds or a time like 1m30s.") from None


def _video_path(visuals, task: str, doc_id) -> str:
    """The one video file a document names; potwatch streams files, not images or arrays."""
    while isinstance(visuals, (list, tuple)) and len(visuals) == 1:
        visuals = visuals[0]
    if isinstance(visuals, (str, os.PathLike)):
        return os.fspath(visuals)
    raise UserError(f"Task {task} gives document {doc_id} {type(visuals).__name__} as its visual; potwatch streams "
                    "one video file per question, so run it on a video task.")
