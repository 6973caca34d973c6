"""Accuracy harness for real models: multiple-choice video QA from a folder of videos and a JSON file
of questions (MLVU / Video-MME style), each video streamed through a session under the cap, each
question scored by the option letter the model ranks first, or (`answers="text"`, sets make-qa writes)
by its greedy free-text answer checked against the question's truth.

Questions are answered independently (the turn is not kept), at `ask_at` seconds into the video if
given, else at its end, so a cap changes only what the cache holds, never what was asked before. A
question sees every frame fed before it (the session is flushed first, as `ask` does).

Accepted question fields (one JSON list, or an object with a "questions" list):
- video: "video", "video_path" or "videoID" (a file name in the folder; the extension may be left off)
- question: "question"
- options: "options" (["A. text", ...], ["text", ...] or {"A": "text", ...}) or "candidates" (MLVU)
- answer: "answer" — a letter ("B", "(B)", "B.") or the text of an option
- optional: "question_id"/"id", "task_type"/"question_type"/"task", "ask_at" (seconds or "1m30s"),
  "early" (true for a question about an event early in the stream: the fidelity table's own column)"""

from __future__ import annotations

import json
import re
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from potwatch.bench.logits import session_answer, session_logits
from potwatch.time_spec import parse_time
from potwatch.errors import UserError

VIDEO_SUFFIXES = ("", ".mp4", ".mkv", ".webm", ".avi", ".mov")
TEXT_ANSWER_TOKENS = 24  # a free-text answer of the world is at most about 20 tokens
PROMPT_TAIL = "Answer with the option's letter from the given choices directly."
_PREFIX = re.compile(r"^\s*\(?([A-Z])[\.\):]\s*")


@dataclass
class QAItem:
    id: str
    video: str
    question: str
    options: list[str]  # texts, in letter order
    answer: str  # the correct letter
    task: str | None = None
    ask_at: float | None = None
    early: bool = False
    truth: dict | None = None  # what a free-text answer must say (make-qa sets; see world.questions.check_answer)

    @property
    def letters(self) -> list[str]:
        return list(string.ascii_uppercase[: len(self.options)])

    def prompt(self) -> str:
        lines = [self.question.strip()] + [f"{letter}. {text}" for letter, text in zip(self.letters, self.options)]
        return "\n".join(lines + [PROMPT_TAIL])


def load_questions(path: str | Path) -> list[QAItem]:
    """Parse a questions file; any entry a run could not score raises a UserError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"The questions file '{path}' does not exist; check the path.") from None
    except (OSError, ValueError) as error:
        raise UserError(f"The questions file '{path}' is not readable JSON ({error}); give a JSON list of questions.") from None
    if isinstance(data, dict):
        data = data.get("questions")
    if not isinstance(data, list) or not data:
        raise UserError(f"'{path}' holds no questions; give a JSON list of objects with video, question, options, answer.")
    return [parse_item(entry, index) for index, entry in enumerate(data)]


def parse_item(entry: dict, index: int) -> QAItem:
    """One entry of a questions file as a QAItem (`index` names it in errors); the lmms-eval task reads its rows
    with this too, so both ask the same prompt."""
    where = f"question {index}"
    if not isinstance(entry, dict):
        raise UserError(f"{where} is not an object; give video, question, options and answer.")
    video = entry.get("video") or entry.get("video_path") or entry.get("videoID")
    question = entry.get("question")
    raw = entry.get("options", entry.get("candidates"))
    if not video or not question or not raw or "answer" not in entry:
        raise UserError(f"{where} lacks one of video, question, options (or candidates) and answer; add it.")
    options = _options(raw)
    letters = string.ascii_uppercase[: len(options)]
    answer = _answer(str(entry["answer"]), options, letters)
    if answer is None:
        raise UserError(f"{where}: the answer '{entry['answer']}' is neither an option letter nor an option's text.")
    ask_at = entry.get("ask_at")
    if ask_at is not None:
        ask_at = float(ask_at) if isinstance(ask_at, (int, float)) else parse_time(str(ask_at))
    return QAItem(
        id=str(entry.get("question_id", entry.get("id", index))),
        video=str(video),
        question=str(question),
        options=options,
        answer=answer,
        task=entry.get("task_type") or entry.get("question_type") or entry.get("task"),
        ask_at=ask_at,
        early=bool(entry.get("early", False)),
        truth=entry.get("truth") if isinstance(entry.get("truth"), dict) else None,
    )


def _options(raw) -> list[str]:
    if isinstance(raw, dict):
        return [str(raw[key]) for key in sorted(raw)]
    texts = [str(option) for option in raw]
    prefixed = [_PREFIX.match(text) for text in texts]
    if all(m and m.group(1) == string.ascii_uppercase[i] for i, m in enumerate(prefixed)):
        texts = [text[m.end():] for text, m in zip(texts, prefixed)]
    return texts


def _answer(raw: str, options: list[str], letters: str) -> str | None:
    text = raw.strip()
    bare = text.strip("().: ")
    if len(bare) == 1 and bare.upper() in letters:
        return bare.upper()
    for letter, option in zip(letters, options):
        if text == option.strip():
            return letter
    return None


def find_video(folder: Path, name: str) -> Path | None:
    for suffix in VIDEO_SUFFIXES:
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def questions_by_video(items: list[QAItem], folder: Path) -> dict[str, list[QAItem]]:
    """The questions grouped by the video they name, in order; a UserError naming videos not in `folder`."""
    by_video: dict[str, list[QAItem]] = {}
    for item in items:
        by_video.setdefault(item.video, []).append(item)
    missing = [name for name in by_video if find_video(folder, name) is None]
    if missing:
        raise UserError(f"No video file for {', '.join(missing[:5])} in '{folder}'; put the videos there or fix the names.")
    return by_video


def letter_token_ids(tokenizer, letters: list[str]) -> dict[str, list[int]]:
    """Token ids that spell each letter as one token ("B" and " B" where the vocabulary has them)."""
    ids = {}
    for letter in letters:
        found = []
        for spelling in (letter, f" {letter}"):
            encoded = tokenizer.encode(spelling, add_special_tokens=False)
            if len(encoded) == 1:
                found.append(encoded[0])
        if not found:
            raise UserError(f"The tokenizer has no single token for the option letter '{letter}'; this model cannot be scored here.")
        ids[letter] = sorted(set(found))
    return ids


def score_letters(logits: torch.Tensor, ids: dict[str, list[int]]) -> dict[str, float]:
    """Probability of each option letter, from the best logit among its spellings, renormalised over the letters."""
    best = torch.stack([logits[token_ids].max() for token_ids in ids.values()]).double()
    return dict(zip(ids, torch.softmax(best, dim=0).tolist()))


def run_accuracy(adapter, items: list[QAItem], videos: str | Path, mem_cap, policy: str = "tar_van",
                 fps: float = 2.0, max_frames: int | None = None, progress=None, answers: str = "letter",
                 ingest: str = "all") -> dict:
    """Stream each video once and score every question about it: by the letter ranked first, or by the
    free-text answer (`answers="text"`); `ingest`: "all" or "changed" visual tokens."""
    from potwatch.streaming.session import StreamSession
    from potwatch.streaming.sources import FileSource

    if answers == "text" and any(item.truth is None for item in items):
        raise UserError("--answers text needs each question's free-text truth, as make-qa writes it; use --answers letter.")
    folder = Path(videos)
    by_video = questions_by_video(items, folder)
    rows = []
    for name, questions in by_video.items():
        source = FileSource(find_video(folder, name), fps=fps, max_frames=max_frames)
        size = (source.height, source.width)
        session = StreamSession(adapter, mem_cap=mem_cap, policy=policy, fps=fps, frame_size=size, ingest=ingest)
        waiting = sorted(questions, key=lambda q: (q.ask_at is None, q.ask_at or 0.0))
        for frame in source:
            while waiting and waiting[0].ask_at is not None and waiting[0].ask_at <= frame.time_s:
                rows.append(_ask(session, waiting.pop(0), answers))
            session.feed(frame)
        rows += [_ask(session, item, answers) for item in waiting]
        for row in rows[len(rows) - len(questions):]:  # the video's figures, as the lmms-eval model logs them
            row.update(video_peak_cache_bytes=session.peak_bytes, video_compressions=session.monitor.event_count)
        session.close()
        if progress is not None:
            progress(len(questions))
    return _summary(rows, adapter, mem_cap, policy, fps, answers)


def _ask(session, item: QAItem, answers: str = "letter") -> dict:
    from potwatch.world.questions import check_answer

    session.flush()  # as `ask` does: the question sees every frame fed
    row = asdict(item)
    if answers == "text":
        text = session_answer(session, item.question, TEXT_ANSWER_TOKENS)
        row.update(predicted=text, correct=check_answer(item.truth, text))
    else:
        ids = letter_token_ids(session.adapter.tokenizer, item.letters)
        probabilities = score_letters(session_logits(session, item.prompt()), ids)
        predicted = max(probabilities, key=probabilities.get)
        row.update(predicted=predicted, correct=predicted == item.answer, letter_probabilities=probabilities)
    row.update(
        frames_seen=session.frames_seen,
        frames_covered=session.frames_covered(),
        peak_cache_bytes=session.peak_bytes,
    )
    return row


def _summary(rows: list[dict], adapter, mem_cap, policy: str, fps: float, answers: str = "letter") -> dict:
    by_task: dict[str, list[bool]] = {}
    for row in rows:
        by_task.setdefault(row["task"] or "all", []).append(row["correct"])
    correct = sum(row["correct"] for row in rows)
    summary = {
        "model": adapter.name,
        "demo_model": adapter.is_demo,
        "mem_cap": mem_cap,
        "policy": policy,
        "fps": fps,
        "answers": answers,
        "questions": len(rows),
        "correct": correct,
        "accuracy": correct / len(rows) if rows else None,
        "by_task": {task: sum(marks) / len(marks) for task, marks in sorted(by_task.items())},
        "items": rows,
    }
    if adapter.is_demo:
        summary["notice"] = "demo model with random weights: the accuracy only checks the harness"
    return summary


def accuracy_markdown(summary: dict, command: str) -> str:
    lines = [
        f"# potwatch accuracy — {summary['model']}",
        "",
        f"- command: `{command}`",
        f"- cap {summary['mem_cap']}, policy {summary['policy']}, {summary['fps']:g} fps, "
        f"{'free-text answers' if summary.get('answers') == 'text' else 'the option letter ranked first'}",
        f"- **accuracy {summary['accuracy']:.1%}** ({summary['correct']} of {summary['questions']})"
        if summary["accuracy"] is not None else "- no questions",
    ]
    if summary.get("notice"):
        lines.append(f"- {summary['notice']}")
    lines += ["", "| task | accuracy |", "|---|---|"]
    lines += [f"| {task} | {value:.1%} |" for task, value in summary["by_task"].items()]
    return "\n".join(lines) + "\n"
