"""`potwatch make-qa --lmms-task`: the question set as a local lmms-eval task, so lmms-eval runs it with
no network (docs/lmms-eval.md). Beside the videos and questions.json it writes the questions as JSONL
(one row per question, the entry whole; see bench/lmms_scoring.py), two task YAMLs, and `utils.py`, the
hooks lmms-eval loads from beside the YAMLs:

- potwatch_qa_letter: the multiple-choice prompt, one new token, right when it is the right letter
  (`bench --accuracy`, the default `--answers letter`);
- potwatch_qa_text: the bare question, up to TEXT_ANSWER_TOKENS tokens, checked against the question's
  truth (`bench --accuracy --answers text`).

Every row keeps `ask_at` where the question has one, and the potwatch model asks it at that moment."""

from __future__ import annotations

import json
from pathlib import Path

from potwatch.bench.accuracy import TEXT_ANSWER_TOKENS

JSONL = "potwatch_qa.jsonl"
TASKS = {  # task name: (prompt hook, score hook, answer tokens)
    "potwatch_qa_letter": ("letter_prompt", "score_letter", 1),
    "potwatch_qa_text": ("text_prompt", "score_text", TEXT_ANSWER_TOKENS),
}

UTILS = '''"""lmms-eval's hooks for the task beside this file, written by `potwatch make-qa --lmms-task`: potwatch's own
prompts and scoring (potwatch/bench/lmms_scoring.py), the videos found next to this file."""

from pathlib import Path

from potwatch.bench.lmms_scoring import letter_prompt, score_letter, score_text, text_prompt  # noqa: F401

HERE = Path(__file__).resolve().parent


def doc_to_visual(doc):
    return [str(HERE / doc["video"])]
'''


def task_yaml(name: str, jsonl: Path) -> str:
    prompt, score, tokens = TASKS[name]
    return f"""# written by `potwatch make-qa --lmms-task`; run with: lmms-eval --include_path {jsonl.parent} --tasks {name}
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(jsonl))}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.{prompt}
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {tokens}
  until: ["\\n\\n"]
  do_sample: false
  temperature: 0
process_results: !function utils.{score}
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1
"""


def write_lmms_task(folder: Path, entries: list[dict]) -> list[str]:
    """Write the JSONL, the YAMLs and utils.py into `folder` (beside the videos); returns the task names."""
    jsonl = folder.resolve() / JSONL
    rows = [{"question_id": e["question_id"], "video": e["video"], "ask_at": e.get("ask_at"), "answer": e["answer"],
             "task_type": e["task_type"], "entry": json.dumps(e)} for e in entries]
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (folder / "utils.py").write_text(UTILS, encoding="utf-8")
    for name in TASKS:
        (folder / f"{name}.yaml").write_text(task_yaml(name, jsonl), encoding="utf-8")
    return list(TASKS)
