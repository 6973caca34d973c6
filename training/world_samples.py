"""Training samples for the `tiny` model, laid out token for token as a streaming session feeds them.

A sample is one synthetic-world stream watched with the full cache, then one to three questions asked
at its end, each answered and closed as `StreamSession.ask` does (the answer's end-of-turn token, then
the tokens that reopen the video). The blocks come from the model's own `QwenVLAdapter`, so the
positions, special tokens and frame preprocessing are the ones inference uses."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from potwatch.bench.accuracy import QAItem
from potwatch.compression.token_meta import TokenKind
from potwatch.world.stream import SAMPLE_FPS
from potwatch.world.questions import WorldQuestion

IGNORE = -100
MC_SHARE = 0.35  # of turns asked as multiple choice, answered by a letter


@dataclass
class Sample:
    embeds: torch.Tensor  # [n, hidden]
    positions: torch.Tensor  # [3, n]
    targets: torch.Tensor  # [n]: the next token where it is an answer token, else IGNORE


def turn_text(question: WorldQuestion, multiple_choice: bool) -> tuple[str, str]:
    """(prompt, answer) of a question, free text or as the bench's multiple-choice prompt."""
    if not multiple_choice:
        return question.question, question.answer
    item = QAItem(id="", video="", question=question.question, options=question.options, answer=question.letter)
    return item.prompt(), question.letter


def build_sample(adapter, frames: list, turns: list[tuple[str, str]]) -> Sample:
    """The whole sequence a session would hold after watching `frames` (a stream's sampled frames,
    see `render_sampled`) and answering `turns`."""
    frames = list(frames)
    if len(frames) % adapter.frames_per_group:  # a question flushes the odd frame by repeating it
        frames.append(frames[-1])
    positions = adapter.new_positions(SAMPLE_FPS)
    blocks = [adapter.system_block(positions), adapter.vision_block(frames, 0, positions)]
    targets = [torch.full((len(block),), IGNORE) for block in blocks]
    end = adapter.stop_ids() & {adapter.tokenizer.convert_tokens_to_ids("<|im_end|>")}
    for index, (prompt, answer) in enumerate(turns):
        question = adapter.question_ids(prompt)
        answer_ids = adapter.tokenizer.encode(answer, add_special_tokens=False) + sorted(end)
        blocks.append(adapter.text_block(question, TokenKind.DIALOGUE, positions, index))
        targets.append(torch.tensor([IGNORE] * (len(question) - 1) + answer_ids[:1]))
        blocks.append(adapter.text_block(answer_ids, TokenKind.DIALOGUE, positions, index))
        targets.append(torch.tensor(answer_ids[1:] + [IGNORE]))
        if index < len(turns) - 1:
            resume = adapter.resume_ids(answer_finished=True)
            blocks.append(adapter.text_block(resume, TokenKind.DIALOGUE, positions, index))
            targets.append(torch.full((len(resume),), IGNORE))
    return Sample(
        embeds=torch.cat([block.embeds[0] for block in blocks]),
        positions=torch.cat([block.meta.pos for block in blocks], dim=1),
        targets=torch.cat(targets),
    )


def pick_turns(questions: list[WorldQuestion], rng: random.Random, most: int = 3) -> list[tuple[str, str]]:
    chosen = rng.sample(questions, min(len(questions), rng.randint(1, most)))
    return [turn_text(q, rng.random() < MC_SHARE) for q in chosen]


def collate(samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded batch: embeds [B, L, H], positions [3, B, L], targets [B, L]. Padding sits after
    every real token, so causal attention keeps it out of the real tokens' way."""
    longest = max(len(s.targets) for s in samples)
    hidden = samples[0].embeds.shape[1]
    embeds = samples[0].embeds.new_zeros(len(samples), longest, hidden)
    positions = torch.zeros(3, len(samples), longest, dtype=torch.long)
    targets = torch.full((len(samples), longest), IGNORE)
    for b, sample in enumerate(samples):
        n = len(sample.targets)
        embeds[b, :n] = sample.embeds
        positions[:, b, :n] = sample.positions
        positions[:, b, n:] = sample.positions.max() + 1 + torch.arange(longest - n)
        targets[b, :n] = sample.targets
    return embeds, positions, targets
