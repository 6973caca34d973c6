"""Training samples for the `tiny` model, laid out token for token as a streaming session feeds them.

A sample is one synthetic-world stream watched with the full cache, with questions asked at one or more
stops: at the end, and sometimes mid-stream, after which more video follows (as users ask while the
stream goes on). Each question is answered and closed as `StreamSession.ask` does (the answer's
end-of-turn token, then the tokens that reopen the video). The blocks come from the model's own
`QwenVLAdapter`, so the positions, special tokens and frame preprocessing are the ones inference uses.

Ages ("About 35 seconds ago.") are said as the distance in temporal position ids from the question back
to the event's first group, in seconds of video at the trained rate: what the model can read off its
relative positions. Turns in between add their tokens to that distance; the session reads the said age
back through the positions it holds (streaming/position_clock.py), so the user sees the true age."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from potwatch.bench.accuracy import QAItem
from potwatch.compression.token_meta import TokenKind
from potwatch.streaming.position_clock import positions_per_second
from potwatch.world.questions import WorldQuestion
from potwatch.world.stream import SAMPLE_FPS

IGNORE = -100
MC_SHARE = 0.2  # of turns asked as multiple choice, answered by a letter (never the time questions)


@dataclass
class Turn:
    question: WorldQuestion
    multiple_choice: bool = False


@dataclass
class Stop:
    """Questions asked after the first `frames` sampled frames of the stream."""

    frames: int
    turns: list[Turn]


@dataclass
class Sample:
    embeds: torch.Tensor  # [n, hidden]
    positions: torch.Tensor  # [3, n]
    targets: torch.Tensor  # [n]: the next token where it is an answer token, else IGNORE
    colour_labels: torch.Tensor  # [n]: each visual token's colour class (world/labels.py), else IGNORE
    shape_labels: torch.Tensor  # [n]
    asked: list[tuple[int, int, str]]  # (question's first position id, frames seen, answer) of every turn
    blocks: list  # the blocks, in order, as a session would run them into its cache


def turn_text(question: WorldQuestion, multiple_choice: bool, age_s: float | None = None) -> tuple[str, str]:
    """(prompt, answer) of a question, free text (its age said as `age_s` when given) or as the bench's
    multiple-choice prompt."""
    if not multiple_choice:
        return question.question, question.answer if age_s is None else question.answer_with_age(age_s)
    item = QAItem(id="", video="", question=question.question, options=question.options, answer=question.letter)
    return item.prompt(), question.letter


def pick_turns(questions: list[WorldQuestion], rng: random.Random, most: int) -> list[Turn]:
    """Up to `most` of the questions in a random order, a share of them as multiple choice."""
    chosen = rng.sample(questions, min(len(questions), most))
    return [Turn(q, q.kind != "time" and rng.random() < MC_SHARE) for q in chosen]


@dataclass(frozen=True)
class Thinning:
    """Visual tokens of all but the last `recent` groups dropped as a compressed cache drops them: each
    object token kept with probability `objects`, each background token with `background` (object tokens
    are novel against the recent frames, so TaR keeps them first). Positions keep their holes. "Recent"
    counts from the stream's end, also for mid-stream stops: a simplification, since a real cache thins
    only what is old when each question comes."""

    recent: int
    objects: float
    background: float
    seed: int


def build_sample(adapter, frames: list, stops: list[Stop], labels: tuple | None = None,
                 gap: tuple[int, int] | None = None, thinning: Thinning | None = None) -> Sample:
    """The whole sequence a session would hold after watching `frames` (a stream's sampled frames) and
    answering the questions of every stop; `labels` (colour, shape) per visual token in group order, from
    `world.labels.stream_token_labels`, become the tokens' label rows. `gap` (frame, groups) makes the
    temporal ids jump by `groups` before that frame (a whole group's first), as held frames' ids do where
    a capped cache under `--positions keep` evicted a stretch, or where nothing was fed for a while.
    `thinning` drops older visual tokens as compression does (it needs `labels`)."""
    frames = list(frames)
    if len(frames) % adapter.frames_per_group:  # a question flushes the odd frame by repeating it
        frames.append(frames[-1])
    positions = adapter.new_positions(SAMPLE_FPS)
    per_second = positions_per_second(positions, adapter.frames_per_group, SAMPLE_FPS)
    system = adapter.system_block(positions)
    parts = [(system, torch.full((len(system),), IGNORE), None)]
    group_position: dict[int, int] = {}  # temporal group -> its temporal position id
    end = adapter.stop_ids() & {adapter.tokenizer.convert_tokens_to_ids("<|im_end|>")}
    fed, turn_index, answer_open = 0, 0, False
    asked: list[tuple[int, int, str]] = []

    def close_answer() -> None:  # the last answer is closed and a new user turn opens, for video or a question
        resume = adapter.resume_ids(answer_finished=True)
        block = adapter.text_block(resume, TokenKind.DIALOGUE, positions, turn_index - 1)
        parts.append((block, torch.full((len(resume),), IGNORE), None))

    for stop_index, stop in enumerate(stops):
        upto = len(frames) if stop_index == len(stops) - 1 else stop.frames
        if upto > fed:
            if answer_open:
                close_answer()
                answer_open = False
            pieces = [(fed, upto)]
            if gap is not None and fed < gap[0] < upto:
                pieces = [(fed, gap[0]), (gap[0], upto)]
            for start, stop_frame in pieces:
                shift = gap[1] * adapter.frames_per_group if gap is not None and start >= gap[0] else 0
                vision = adapter.vision_block(frames[start:stop_frame], start + shift, positions)
                per_group = len(vision) // ((stop_frame - start) // adapter.frames_per_group)
                first_group = start // adapter.frames_per_group
                for index, temporal in enumerate(vision.meta.pos[0].tolist()):  # groups by their unshifted index
                    group_position.setdefault(first_group + index // per_group, temporal)
                token_index = torch.arange(first_group * per_group, first_group * per_group + len(vision))
                if thinning is not None and labels is not None:
                    total_groups = len(frames) // adapter.frames_per_group
                    keep = _thinned(token_index, per_group, total_groups, torch.as_tensor(labels[0]), thinning)
                    vision, token_index = _select(vision, keep), token_index[keep]
                parts.append((vision, torch.full((len(vision),), IGNORE), token_index))
            fed = upto
        for turn in stop.turns:
            if answer_open:
                close_answer()
            question_position = positions.max_position + 1  # the first id the question block takes
            age = None
            if turn.question.seen_frame is not None and not turn.multiple_choice:
                seen_group = turn.question.seen_frame // adapter.frames_per_group
                age = (question_position - group_position[seen_group]) / per_second
            prompt, answer = turn_text(turn.question, turn.multiple_choice, age)
            asked.append((question_position, fed, answer))
            question_ids = adapter.question_ids(prompt)
            answer_ids = adapter.tokenizer.encode(answer, add_special_tokens=False) + sorted(end)
            block = adapter.text_block(question_ids, TokenKind.DIALOGUE, positions, turn_index)
            parts.append((block, torch.tensor([IGNORE] * (len(question_ids) - 1) + answer_ids[:1]), None))
            block = adapter.text_block(answer_ids, TokenKind.DIALOGUE, positions, turn_index)
            parts.append((block, torch.tensor(answer_ids[1:] + [IGNORE]), None))
            turn_index += 1
            answer_open = True
    colour_rows, shape_rows = [], []
    for block, _, token_index in parts:
        if token_index is None or labels is None:
            colour_rows.append(torch.full((len(block),), IGNORE))
            shape_rows.append(torch.full((len(block),), IGNORE))
        else:
            colour_rows.append(torch.as_tensor(labels[0])[token_index])
            shape_rows.append(torch.as_tensor(labels[1])[token_index])
    return Sample(
        embeds=torch.cat([block.embeds[0] for block, _, _ in parts]),
        positions=torch.cat([block.meta.pos for block, _, _ in parts], dim=1),
        targets=torch.cat([targets for _, targets, _ in parts]),
        colour_labels=torch.cat(colour_rows),
        shape_labels=torch.cat(shape_rows),
        asked=asked,
        blocks=[block for block, _, _ in parts],
    )


def _thinned(token_index: torch.Tensor, per_group: int, total_groups: int, colours: torch.Tensor,
             thinning: Thinning) -> torch.Tensor:
    """Which of a vision block's tokens stay (see `Thinning`)."""
    generator = torch.Generator().manual_seed(thinning.seed + int(token_index[0]))
    old = token_index // per_group < total_groups - thinning.recent
    chance = torch.where(colours[token_index] > 0, thinning.objects, thinning.background)
    return ~old | (torch.rand(len(token_index), generator=generator) < chance)


def _select(block, keep: torch.Tensor):
    """The tokens of `block` where `keep` is true, with their metadata and positions."""
    from dataclasses import fields, replace

    meta = type(block.meta)(*(getattr(block.meta, f.name)[..., keep] for f in fields(block.meta)))
    return replace(block, embeds=block.embeds[:, keep], meta=meta)


def collate(samples: list[Sample]) -> tuple[torch.Tensor, ...]:
    """Right-padded batch: embeds [B, L, H], positions [3, B, L], targets, colour and shape labels [B, L].
    Padding sits after every real token, so causal attention keeps it out of the real tokens' way."""
    longest = max(len(s.targets) for s in samples)
    hidden = samples[0].embeds.shape[1]
    embeds = samples[0].embeds.new_zeros(len(samples), longest, hidden)
    positions = torch.zeros(3, len(samples), longest, dtype=torch.long)
    targets = torch.full((len(samples), longest), IGNORE)
    colours = torch.full((len(samples), longest), IGNORE)
    shapes = torch.full((len(samples), longest), IGNORE)
    for b, sample in enumerate(samples):
        n = len(sample.targets)
        embeds[b, :n] = sample.embeds
        positions[:, b, :n] = sample.positions
        positions[:, b, n:] = sample.positions.max() + 1 + torch.arange(longest - n)
        targets[b, :n] = sample.targets
        colours[b, :n] = sample.colour_labels
        shapes[b, :n] = sample.shape_labels
    return embeds, positions, targets, colours, shapes
