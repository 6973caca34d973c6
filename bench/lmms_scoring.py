"""The hooks of the lmms-eval task that `make-qa --lmms-task` writes: the prompt of each row and its score,
taken from `potwatch bench --accuracy` itself, so lmms-eval and the harness ask and score alike.

A row carries its questions-file entry whole (`entry`, JSON text: the free-text truth differs in shape
from kind to kind, which a JSON dataset's one schema would blur), beside the fields lmms-eval and the
potwatch model read directly: `question_id`, `video` and `ask_at`."""

from __future__ import annotations

import json
import re

from potwatch.bench.accuracy import QAItem, parse_item

_LEADING_LETTER = re.compile(r"^\s*\(?([A-Z])(?![A-Za-z])")


def row_item(doc: dict) -> QAItem:
    """The row as the harness reads the same entry from questions.json."""
    return parse_item(json.loads(doc["entry"]), doc["question_id"])


def letter_prompt(doc: dict) -> str:
    """The multiple-choice prompt `bench --accuracy` scores: question, lettered options, the letter instruction."""
    return row_item(doc).prompt()


def text_prompt(doc: dict) -> str:
    """The bare question `bench --accuracy --answers text` asks."""
    return row_item(doc).question


def answered_letter(response: str, letters: list[str]) -> str | None:
    """The option letter a response begins with ("B", " B", "(B)", "B. a box"), or None."""
    found = _LEADING_LETTER.match(response)
    return found.group(1) if found and found.group(1) in letters else None


def score_letter(doc: dict, results: list[str]) -> dict:
    """Right when the generated answer starts with the right letter: the greedy first token is the letter
    `bench --accuracy` ranks first whenever it is a letter at all."""
    item = row_item(doc)
    letter = answered_letter(results[0], item.letters)
    return {"accuracy": float(letter == item.answer)}


def score_text(doc: dict, results: list[str]) -> dict:
    """Right when the free-text answer checks out against the question's truth, as `--answers text` scores it."""
    from potwatch.world.questions import check_answer

    return {"accuracy": float(check_answer(row_item(doc).truth, results[0]))}
