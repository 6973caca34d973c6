"""The lmms-eval model's parts that need no lmms-eval (they run in the main venv): model_args checked with
potwatch's one-sentence errors before anything loads, requests grouped by video and put in asking order,
the stop strings, and the task make-qa writes. The model itself, under real lmms-eval, is
tests/test_lmms_eval.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from potwatch.bench.lmms_scoring import answered_letter, letter_prompt, score_letter, score_text, text_prompt
from potwatch.bench.lmms_task import TASKS, write_lmms_task
from potwatch.errors import UserError
from potwatch.lmms.requests import cut_at_stops, video_questions
from potwatch.lmms.settings import plugin_settings


def test_model_args_become_watch_settings():
    settings = plugin_settings({"model": "tiny", "mem_cap": "2MB", "policy": "window", "kv_bits": 8, "fps": 1,
                                "max_frames": 50, "max_new_tokens": 12, "batch_size": 1, "stream_log": "/tmp/x"})
    assert settings.model == "tiny" and settings.max_frames == 50 and settings.stream_log == "/tmp/x"
    assert (settings.stream.cap_bytes, settings.stream.policy, settings.stream.kv_bits) == (2_000_000, "window", 8)
    assert (settings.stream.fps, settings.stream.max_new_tokens) == (1.0, 12)
    assert plugin_settings({"mem_cap": "none"}).stream.cap_bytes is None
    changed = plugin_settings({"ingest": "changed", "change_threshold": 0.3}).stream
    assert (changed.ingest, changed.change_threshold) == ("changed", 0.3)


@pytest.mark.parametrize("args, words", [
    ({"mem_cap": "lots"}, "lots"),
    ({"policy": "nope"}, "nope"),
    ({"kv_bits": 5}, "--kv-bits 5 is not supported"),
    ({"kv_bits": 4, "mem_cap": "none"}, "needs a memory cap"),
    ({"fps": 0}, "not a positive number"),
    ({"max_frames": 0}, "max_frames=0"),
    ({"max_new_tokens": 0}, "answer length"),
    ({"threads": 0}, "Threads 0"),
    ({"trust_remote_code": "maybe"}, "trust_remote_code='maybe'"),
    ({"memcap": "1GB"}, "potwatch takes no model_args 'memcap'"),
    ({"ingest": "some"}, "Unknown ingest mode 'some'"),
    ({"ingest": "changed", "change_threshold": 20}, "change threshold 20"),
])
def test_a_bad_model_arg_is_one_sentence(args, words):
    with pytest.raises(UserError) as error:
        plugin_settings(args)
    assert words in str(error.value) and len(str(error.value).splitlines()) == 1


def request(doc_id: int, context: str, task: str = "t", **gen_kwargs):
    return SimpleNamespace(args=(context, gen_kwargs, lambda doc: [doc["video"]], doc_id, task, "test"))


def test_requests_are_grouped_by_video_and_asked_at_their_moment():
    docs = [{"video": "a.mp4"}, {"video": "b.mp4", "ask_at": 9.0}, {"video": "a.mp4", "ask_at": "5s"},
            {"video": "a.mp4"}, {"video": "b.mp4"}]
    task_dict = {"t": {"test": docs}, "u": {"test": docs}}
    requests = [request(i, f"q{i}", max_new_tokens=3, until=["\n"]) for i in range(5)] + [request(0, "u0", "u")]
    grouped = video_questions(requests, task_dict, default_tokens=48)
    assert list(grouped) == ["a.mp4", "b.mp4"]
    # timed questions first, in time order; then the rest in request order, every task's together
    assert [q.prompt for q in grouped["a.mp4"]] == ["q2", "q0", "q3", "u0"]
    assert [q.prompt for q in grouped["b.mp4"]] == ["q1", "q4"]
    assert grouped["a.mp4"][0].ask_at == 5.0 and grouped["a.mp4"][0].until == ["\n"]
    assert [q.max_new_tokens for q in grouped["a.mp4"]] == [3, 3, 3, 48]  # the session's when a task gives none


def test_sampling_is_named_once_and_bad_requests_are_one_sentence():
    docs = [{"video": "a.mp4"}]
    warnings = []
    video_questions([request(0, "q", do_sample=True), request(0, "q", do_sample=True)], {"t": {"test": docs}}, 48,
                    warn=warnings.append)
    assert warnings == ["potwatch decodes greedily; do_sample is not followed (task t)"]
    with pytest.raises(UserError, match="answer length"):
        video_questions([request(0, "q", max_new_tokens=0)], {"t": {"test": docs}}, 48)
    image = SimpleNamespace(args=("q", {}, lambda doc: [object(), object()], 0, "t", "test"))
    with pytest.raises(UserError, match="one video file per question"):
        video_questions([image], {"t": {"test": docs}}, 48)


def test_stop_strings_cut_the_answer():
    assert cut_at_stops("Blue.\n\nMore", ["\n\n"]) == "Blue."
    assert cut_at_stops("A box. Then", [".", "Then"]) == "A box"
    assert cut_at_stops("Red.", []) == "Red."


def test_the_task_rows_ask_and_score_as_the_harness(tmp_path):
    entry = {"video": "stream_000.mp4", "question_id": "000-03", "task_type": "colour", "question": "Which colour?",
             "options": ["red", "blue"], "answer": "B", "early": False, "free_answer": "Blue.",
             "truth": {"kind": "colour", "colours": ["blue"]}, "ask_at": 7.5}
    assert write_lmms_task(tmp_path, [entry]) == list(TASKS)
    row = json.loads((tmp_path / "potwatch_qa.jsonl").read_text())
    assert (row["question_id"], row["video"], row["ask_at"]) == ("000-03", "stream_000.mp4", 7.5)
    assert letter_prompt(row) == "Which colour?\nA. red\nB. blue\nAnswer with the option's letter from the given choices directly."
    assert text_prompt(row) == "Which colour?"
    assert score_letter(row, [" B"]) == {"accuracy": 1.0} and score_letter(row, ["A"]) == {"accuracy": 0.0}
    assert score_text(row, ["Blue."]) == {"accuracy": 1.0} and score_text(row, ["Red."]) == {"accuracy": 0.0}
    assert [answered_letter(text, ["A", "B"]) for text in ("B", "(B)", "B. blue", "Blue", "C")] == ["B", "B", "B", None, None]
    yaml = (tmp_path / "potwatch_qa_text.yaml").read_text()
    assert "dataset_path: json" in yaml and str((tmp_path / "potwatch_qa.jsonl").resolve()) in yaml
    assert "max_new_tokens: 24" in yaml and "process_results: !function utils.score_text" in yaml
