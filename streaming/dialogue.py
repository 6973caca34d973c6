"""The dialogue of a `StreamSession`: a question is checked against the cap, prefilled as one turn,
answered greedily token by token (streamed as text), and closed so the next question sees it; an
answer that fails or is abandoned leaves no half turn in the cache.

A mixin of `StreamSession` (streaming/session.py): it reads the session's adapter, cache, monitor,
positions and counters, and sends every block through the block pipeline's `_run`."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator

import torch

from potwatch.compression.token_meta import TokenKind
from potwatch.errors import DeviceMemoryError, QuestionError
from potwatch.streaming.answer import Answer
from potwatch.streaming.model_turns import ANSWER, model_turns
from potwatch.streaming.oom_retry import is_out_of_memory, release_device_memory
from potwatch.streaming.position_clock import positions_per_second, with_stream_time
from potwatch.streaming.question_text import clean_question
from potwatch.streaming.settings import answer_length

NOMINAL_QUESTION_TOKENS = 48  # used to size the minimum cap before any question is known


class Dialogue:
    """`ask`, `ask_stream` and `check_question` (see the module's docstring)."""

    def ask(self, question: str, on_token: Callable[[str], None] | None = None, max_new_tokens: int | None = None) -> Answer:
        """Answer `question` from the cache as it is now; later questions see this turn."""
        answer = None
        for piece in self._answer(question, max_new_tokens):
            if isinstance(piece, Answer):
                answer = piece
            elif on_token is not None:
                on_token(piece)
        return answer

    def ask_stream(self, question: str, max_new_tokens: int | None = None) -> Iterator[str | Answer]:
        """Yield the answer text piece by piece, then the `Answer`."""
        yield from self._answer(question, max_new_tokens)

    def check_question(self, question, max_new_tokens: int | None = None) -> str:
        """The question as it will be asked, or a QuestionError (empty, not UTF-8, too long for the cap);
        changes nothing, so a program can check its questions before the stream starts."""
        self._check_open()
        question = clean_question(question)
        self._question_budget(question, max_new_tokens)
        return question

    def _question_budget(self, question: str, max_new_tokens: int | None) -> tuple[list[int], int, int]:
        """(question ids, answer length, tokens to reserve) for a clean question that fits the cap."""
        limit = self.max_new_tokens if max_new_tokens is None else answer_length(max_new_tokens)
        question_ids = self.adapter.question_ids(question)
        resume = self.adapter.resume_ids(answer_finished=True)
        reserve = len(question_ids) + limit + len(resume) + 1
        if reserve > self.monitor.dialogue_capacity:
            raise QuestionError(
                f"The question is {len(question_ids)} tokens, but this cap leaves {self.monitor.dialogue_capacity} "
                f"tokens for a question and its {limit}-token answer; shorten it or raise --mem-cap."
            )
        return question_ids, limit, reserve

    def _answer(self, question: str, max_new_tokens: int | None) -> Iterator[str | Answer]:
        self._check_open()
        question = clean_question(question)
        with self._lock, model_turns(self.adapter).turn(ANSWER):  # the whole answer is one turn on the model
            started = time.perf_counter()
            self.flush()  # the question sees every frame fed so far
            turn = self.turns
            question_ids, limit, reserve = self._question_budget(question, max_new_tokens)
            if self.monitor.make_room_for_turn(reserve):
                self._after_compaction()
            saved_positions = copy.deepcopy(self.positions)
            length_before = self.cache.length
            try:
                generated, finished, first_token_s, question_position = yield from self._generate(
                    question_ids, turn, limit, started)
            except BaseException as error:
                # a failed or abandoned answer leaves no half turn behind
                self.cache.truncate(length_before)
                self.positions = saved_positions
                if is_out_of_memory(error):
                    release_device_memory(self.adapter.device)
                    raise DeviceMemoryError(
                        f"Device {self.adapter.device} ran out of memory while answering; the session keeps what it "
                        "had; ask a shorter question, lower --mem-cap or free device memory (other programs using it)."
                    ) from None
                raise
            self.turns += 1
            answer = Answer(
                question=question,
                text=self.read_back_ages(self.adapter.decode(generated).strip(), question_position),
                tokens=len(generated),
                seconds=time.perf_counter() - started,
                first_token_s=first_token_s or 0.0,
                frames_seen=self.frames_seen,
                frames_covered=self.frames_covered(),
                meaningless=self.adapter.is_demo,
                video_time_s=max(self.frames_seen - 1, 0) / self.fps,
            )
        yield answer

    def read_back_ages(self, text: str, question_position: int) -> str:
        """The answer as the user reads it: an age said by a model that reads ages off its positions is
        read back to the stream's true age and clock time (streaming/position_clock.py)."""
        if not self.adapter.ages_from_positions:
            return text
        per_second = positions_per_second(self.positions, self.adapter.frames_per_group, self.fps)
        return with_stream_time(text, self.cache, question_position, per_second, self.fps, self.frames_seen)

    def _generate(self, question_ids: list[int], turn: int, limit: int, started: float):
        """Prefill the question, decode greedily while yielding text, then close the turn. Returns (answer
        ids, whether the model ended the answer itself, seconds to the first token, the question's first
        position id)."""
        question = self.adapter.text_block(question_ids, TokenKind.DIALOGUE, self.positions, turn)
        question_position = int(question.meta.pos.reshape(-1, question.meta.pos.shape[-1])[0, 0])
        logits = self._run(question, logits=True)
        first_token_s = None
        generated: list[int] = []
        stops = self.adapter.stop_ids()
        text_so_far = ""
        finished = False
        token = None
        while len(generated) < limit:
            token = int(torch.argmax(logits))
            if first_token_s is None:
                first_token_s = time.perf_counter() - started
            if token in stops:
                finished = True
                break
            generated.append(token)
            text = self.adapter.decode(generated)
            if text != text_so_far and not text.endswith("\ufffd"):
                yield text[len(text_so_far):]
                text_so_far = text
            logits = self._run(self.adapter.text_block([token], TokenKind.DIALOGUE, self.positions, turn), logits=True)
        closing = ([token] if finished else []) + self.adapter.resume_ids(answer_finished=finished)
        self._run(self.adapter.text_block(closing, TokenKind.DIALOGUE, self.positions, turn), logits=False)
        return generated, finished, first_token_s, question_position

