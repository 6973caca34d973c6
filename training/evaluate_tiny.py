"""Held-out accuracy of a trained model with the full cache: free-text answers from `StreamSession.ask`,
scored by `check_answer`, per question kind and for early events, in two forms.

    OMP_NUM_THREADS=1 .venv/bin/python training/evaluate_tiny.py --model assets/tiny --streams 60

Streams come from string seeds (`potwatch-eval:S:i`) that training never draws; lengths are 8-96 s.
- **new** (the default): every question asked one after another at the end of its stream, as
  `watch --ask ... --ask ...` does, except the "now" question, asked when its moment comes
  (`now_question`: something in view half the time), after which the stream goes on. Ages are right
  within `age_tolerance`; "yes" needs the colour and the shape.
- **first**: the first held-out sets exactly (their streams, questions and order; "now" at the end,
  nearly always "nothing"), the time questions scored by the clock time of the answer within 2 s
  (`check_clock`), as the first sets were. The streams are the same in both forms.
`--independent` asks each question on the stream as it stands with no earlier turn kept, as the
fidelity table (`potwatch bench --accuracy`) does; by default each turn stays, as in a chat."""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from potwatch.bench.logits import session_answer
from potwatch.models.registry import load_model
from potwatch.streaming.session import StreamSession
from potwatch.world.questions import KINDS, check_answer, check_clock, now_question, questions_for
from potwatch.world.render import render_sampled
from potwatch.world.stream import SAMPLE_FPS, random_stream

FORMS = ("new", "first")


def stream_plan(seed: int, index: int, form: str, min_s: float = 8.0, max_s: float = 96.0):
    """(stream, [(frames to feed before asking, question)]) of held-out stream `index`."""
    rng = random.Random(f"potwatch-eval:{seed}:{index}")
    stream = random_stream(rng, min_s=min_s, max_s=max_s)
    end = len(stream.frame_times)
    if form == "first":
        return stream, [(end, q) for q in questions_for(stream, rng, new_phrasings=False)]
    asked = [(end, q) for q in questions_for(stream, rng) if q.kind != "now"]
    now = now_question(stream, random.Random(f"potwatch-eval-now:{seed}:{index}"))
    if now is not None:
        asked.append(now)
    return stream, sorted(asked, key=lambda item: item[0])


def evaluate(adapter, streams: int, seed: int = 0, form: str = "new", min_s: float = 8.0, max_s: float = 96.0,
             independent: bool = False) -> dict:
    marks: dict[str, list[bool]] = {kind: [] for kind in KINDS}
    split: dict[str, list[bool]] = {"presence yes": [], "presence no": [], "now something": [], "now nothing": []}
    early: list[bool] = []
    examples = []  # every answer, for reading what goes wrong
    for index in range(streams):
        stream, asked = stream_plan(seed, index, form, min_s, max_s)
        frames = render_sampled(stream)
        session = StreamSession(adapter, mem_cap=None, fps=SAMPLE_FPS)
        fed = 0
        for upto, question in asked:
            if upto > fed:
                session.feed(frames[fed:upto])
                fed = upto
            if independent:
                answer = session_answer(session, question.question, 24)
            else:
                answer = session.ask(question.question, max_new_tokens=24).text
            if form == "first" and question.kind == "time":
                right = check_clock(question.truth, answer)
            else:
                right = check_answer(question.truth, answer)
            marks[question.kind].append(right)
            if question.kind == "presence":
                split["presence yes" if question.truth["yes"] else "presence no"].append(right)
            if question.kind == "now":
                split["now something" if question.truth["colours"] else "now nothing"].append(right)
            if question.early:
                early.append(right)
            examples.append({"kind": question.kind, "question": question.question, "expected": question.answer,
                             "answer": answer, "right": right, "asked_at_s": upto / SAMPLE_FPS,
                             "stream_s": stream.seconds, "truth": question.truth})
        session.close()
    every = [mark for kind in KINDS for mark in marks[kind]]
    return {
        "form": form,
        "independent": independent,
        "streams": streams,
        "questions": len(every),
        "overall": sum(every) / len(every),
        "early": sum(early) / len(early) if early else None,
        "early_questions": len(early),
        "by_kind": {kind: sum(m) / len(m) for kind, m in marks.items() if m},
        "asked_by_kind": {kind: len(m) for kind, m in marks.items()},
        "split": {name: sum(m) / len(m) for name, m in split.items() if m},
        "asked_by_split": {name: len(m) for name, m in split.items()},
        "answers": examples,
    }


def describe(result: dict) -> str:
    protocol = "each question alone" if result["independent"] else "turns kept"
    lines = [f"held-out ({result['form']} form, {protocol}), full cache: {result['overall']:.1%} of {result['questions']} questions "
             f"on {result['streams']} streams (early events {result['early']:.1%} of {result['early_questions']})"]
    for kind, value in result["by_kind"].items():
        lines.append(f"  {kind:14s} {value:6.1%} of {result['asked_by_kind'][kind]}")
    for name, value in result["split"].items():
        lines.append(f"  {name:14s} {value:6.1%} of {result['asked_by_split'][name]}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--streams", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--form", choices=FORMS + ("both",), default="both")
    parser.add_argument("--independent", action="store_true", help="keep no turn: each question sees only the video")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the result here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    adapter = load_model(args.model)
    results = {}
    for form in FORMS if args.form == "both" else (args.form,):
        started = time.perf_counter()
        result = evaluate(adapter, args.streams, args.seed, form, independent=args.independent)
        result.update(model=args.model, threads=args.threads, seconds=time.perf_counter() - started)
        print(describe(result) + f"\n  ({args.threads} thread(s), {result['seconds']:.0f} s)", flush=True)
        results[form] = result
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
