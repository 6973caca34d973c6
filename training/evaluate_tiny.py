"""Held-out accuracy of a trained model with the full cache: free-text answers from `StreamSession.ask`,
scored by `check_answer`, per question kind and for early events.

    OMP_NUM_THREADS=1 .venv/bin/python training/evaluate_tiny.py --model assets/tiny --streams 60

Streams come from string seeds (`potwatch-eval:S:i`) that training never draws; lengths are 8-96 s.
Questions are asked one after another at the end of each stream, as `watch --ask ... --ask ...` does."""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from potwatch.models.registry import load_model
from potwatch.streaming.session import StreamSession
from potwatch.world.stream import SAMPLE_FPS, random_stream
from potwatch.world.render import render_sampled
from potwatch.world.questions import KINDS, check_answer, questions_for


def evaluate(adapter, streams: int, seed: int = 0, min_s: float = 8.0, max_s: float = 96.0) -> dict:
    marks: dict[str, list[bool]] = {kind: [] for kind in KINDS}
    early: list[bool] = []
    examples = []
    for index in range(streams):
        rng = random.Random(f"potwatch-eval:{seed}:{index}")
        stream = random_stream(rng, min_s=min_s, max_s=max_s)
        session = StreamSession(adapter, mem_cap=None, fps=SAMPLE_FPS)
        session.feed(render_sampled(stream))
        for question in questions_for(stream, rng):
            answer = session.ask(question.question, max_new_tokens=24).text
            right = check_answer(question.truth, answer)
            marks[question.kind].append(right)
            if question.early:
                early.append(right)
            if len(examples) < 40:
                examples.append({"question": question.question, "expected": question.answer, "answer": answer,
                                 "right": right, "stream_s": stream.seconds})
        session.close()
    every = [mark for kind in KINDS for mark in marks[kind]]
    return {
        "streams": streams,
        "questions": len(every),
        "overall": sum(every) / len(every),
        "early": sum(early) / len(early) if early else None,
        "early_questions": len(early),
        "by_kind": {kind: sum(m) / len(m) for kind, m in marks.items() if m},
        "asked_by_kind": {kind: len(m) for kind, m in marks.items()},
        "examples": examples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--streams", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the result here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result = evaluate(load_model(args.model), args.streams, args.seed)
    result.update(model=args.model, threads=args.threads, seconds=time.perf_counter() - started)
    print(f"held-out, full cache: {result['overall']:.1%} of {result['questions']} questions on {args.streams} streams "
          f"(early events {result['early']:.1%} of {result['early_questions']}); {args.threads} thread(s), "
          f"{result['seconds']:.0f} s")
    for kind, value in result["by_kind"].items():
        print(f"  {kind:9s} {value:6.1%} of {result['asked_by_kind'][kind]}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
