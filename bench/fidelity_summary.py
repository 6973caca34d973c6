"""The fidelity table's figures from the runs of every stream: accuracy overall, on early questions and
per question kind; the share of visual tokens each configuration really held when asked; seconds a
stream took; and one compact line per question (the letter every configuration chose)."""

from __future__ import annotations

import statistics

from potwatch.bench.accuracy import QAItem
from potwatch.bench.fidelity import FULL, FidelityPlan, ratio_label

NO_CAP = "no cap"


def summarise(streams: list[dict], items: list[QAItem], plan: FidelityPlan) -> dict:
    by_id = {item.id: item for item in items}
    answers: dict[tuple[str, str], list[tuple[QAItem, str, float]]] = {}
    runs: dict[tuple[str, str], list[dict]] = {}
    predicted: dict[str, dict[str, dict[str, str]]] = {}  # item id -> configuration -> ratio -> letter
    for stream in streams:
        for run in stream["runs"]:
            key = (run["configuration"], run["ratio"] or NO_CAP)
            runs.setdefault(key, []).append(run)
            if "error" in run:
                continue
            for item_id, letter, held, seen in zip(stream["items"], run["predicted"], run["held"], run["seen"]):
                answers.setdefault(key, []).append((by_id[item_id], letter, held / seen if seen else 1.0))
                predicted.setdefault(item_id, {}).setdefault(key[0], {})[key[1]] = letter
    rows: dict[str, dict[str, dict]] = {}
    for key, key_runs in runs.items():
        rows.setdefault(key[0], {})[key[1]] = _figures(answers.get(key, []), key_runs)
    order = [FULL] + plan.configurations
    columns = [ratio_label(r) for r in plan.ratios]
    return {
        "configurations": order,
        "ratios": columns,
        "rows": {name: rows[name] for name in order if name in rows},
        "items": [_item_line(item, predicted.get(item.id, {}), order, columns) for item in items
                  if item.id in predicted],
        "peak_within_cap": all(r["peak_bytes"] <= r["cap_bytes"] for rs in runs.values() for r in rs
                               if r.get("cap_bytes")),
    }


def _figures(answers: list[tuple[QAItem, str, float]], runs: list[dict]) -> dict:
    done = [run for run in runs if "error" not in run]
    figures = _accuracy(answers)
    early = [a for a in answers if a[0].early]
    figures.update(
        early_accuracy=_accuracy(early)["accuracy"],
        early_questions=len(early),
        by_task={task: _accuracy([a for a in answers if (a[0].task or "all") == task])["accuracy"]
                 for task in sorted({a[0].task or "all" for a in answers})},
        held_share=_mean([share for _, _, share in answers]),
        held_share_min=min((share for _, _, share in answers), default=None),
        held_share_max=max((share for _, _, share in answers), default=None),
        cap_tokens=_mean([run["cap_tokens"] for run in done if run["cap_tokens"] is not None]),
        cap_bytes=_mean([run["cap_bytes"] for run in done if run["cap_bytes"] is not None]),
        compressions=_mean([run["compressions"] for run in done]),
        seconds_per_stream=_mean([run["seconds"] for run in done]),
        streams=len(done),
    )
    errors = sorted({run["error"] for run in runs if "error" in run})
    if errors:
        figures["errors"] = errors
    return figures


def _accuracy(answers: list[tuple[QAItem, str, float]]) -> dict:
    correct = sum(item.answer == letter for item, letter, _ in answers)
    return {"accuracy": correct / len(answers) if answers else None, "correct": correct, "questions": len(answers)}


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _item_line(item: QAItem, letters: dict[str, dict[str, str]], order: list[str], columns: list[str]) -> dict:
    """One question: its facts, the full cache's letter, and per configuration a letter per ratio ('-': not run)."""
    line = {"id": item.id, "video": item.video, "task": item.task, "early": item.early, "answer": item.answer,
            FULL: letters.get(FULL, {}).get(NO_CAP, "-")}
    line["predicted"] = {name: "".join(letters.get(name, {}).get(c, "-") for c in columns) for name in order if name != FULL}
    return line
