"""The text a stream is made of, around its video: from the checkpoint's own chat template when it has
one, else from the family's built-in format.

A stream is a chat that never ends: the system turn and a user turn open, frames come in, a question
closes the video and opens the assistant's answer, the answer closes and a new user turn reopens for
more video, and so on. So the prompt is four pieces of text (`ChatFormat`), repeated turn after turn:

    opening [video] before_question QUESTION after_question ANSWER reopening [video] before_question ...

`template_format` finds the pieces by rendering a three-turn conversation with `apply_chat_template`,
with marker questions and answers, and cutting the text at the template's video placeholder and at the
markers; it checks that every turn gives the same pieces (a stream cannot re-render earlier turns).
What the family's processor writes in place of the placeholder (`VideoLayout`: SmolVLM's intro and
outro, LLaVA's closing image_newline) stays with the adapter, as do the frames' own tokens."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

BUILT_IN = "built-in format"
TEMPLATE = "chat template"
_QUESTIONS = ("potwatch-question-1", "potwatch-question-2", "potwatch-question-3")
_ANSWERS = ("potwatch-answer-1", "potwatch-answer-2")


class ChatTemplateError(ValueError):
    """A chat template a stream cannot follow (it drops the video, or renders turns differently)."""


@dataclass(frozen=True)
class VideoLayout:
    """What a family's processor writes where the chat template puts a video, besides the frames."""

    placeholder: str  # the template's text for a video, which the stream's frames replace
    intro: str = ""  # text before the first frame (SmolVLM's stream intro)
    outro_ids: tuple[int, ...] = ()  # ids after the last frame (LLaVA's image_newline marker)
    outro: str = ""  # text after those (SmolVLM's blank line)


@dataclass(frozen=True)
class ChatFormat:
    """The text around the video and the question in a streamed dialogue (see the module docstring)."""

    opening: str  # system turn and the first user turn's header, up to the video
    before_question: str  # between the video and the question
    after_question: str  # closes the user turn and opens the assistant's answer
    reopening: str  # closes an answer and opens the next user turn, up to its video
    source: str = BUILT_IN


def chatml_format(system_prompt: str | None, before_video: str = "", after_video: str = "") -> ChatFormat:
    """The ChatML turns of the Qwen and LLaVA-OneVision families, each user turn a video (between
    `before_video` and `after_video`) and then the question."""
    system = f"<|im_start|>system\n{system_prompt}<|im_end|>\n" if system_prompt is not None else ""
    return ChatFormat(
        opening=f"{system}<|im_start|>user\n{before_video}",
        before_question=after_video,
        after_question="<|im_end|>\n<|im_start|>assistant\n",
        reopening=f"<|im_end|>\n<|im_start|>user\n{before_video}",
    )


class ChatPrompt:
    """Token ids of a format's pieces, with the family's video layout around the frames."""

    def __init__(self, tokenizer, chat_format: ChatFormat, layout: VideoLayout, end_of_turn: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.format = chat_format
        self.layout = layout
        # the end-of-turn token that opens `reopening` is the model's own stop token when it ends its answer
        self.end_of_answer = next((token for token in end_of_turn if chat_format.reopening.startswith(token)), "")

    @property
    def source(self) -> str:
        return self.format.source

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def system_ids(self) -> list[int]:
        """The system prompt and chat header up to the first frame."""
        return self._ids(self.format.opening + self.layout.intro)

    def question_ids(self, question: str) -> list[int]:
        """Close the video, ask `question`, open the assistant's answer."""
        text = self.layout.outro + self.format.before_question + question + self.format.after_question
        return list(self.layout.outro_ids) + self._ids(text)

    def resume_ids(self, answer_finished: bool) -> list[int]:
        """Close the answer (the model wrote its stop token itself when `answer_finished`), reopen a user turn."""
        reopening = self.format.reopening
        if answer_finished:
            reopening = reopening[len(self.end_of_answer):]
        return self._ids(reopening + self.layout.intro)


def chat_prompt(tokenizer, template: str | None, built_in: ChatFormat, layout: VideoLayout,
                system_prompt: str | None, end_of_turn: tuple[str, ...], fallback_template: str | None = None) -> ChatPrompt:
    """The checkpoint's template's pieces when it has a template a stream can follow; else those of
    `fallback_template` (the family processor's own template for video chats), else `built_in`."""
    candidates = [candidate for candidate in (template, fallback_template) if candidate]
    for index, candidate in enumerate(candidates):
        try:
            chat_format = template_format(tokenizer, candidate, layout.placeholder, system_prompt)
        except ChatTemplateError as error:
            then = "trying the processor's video template" if index + 1 < len(candidates) else "using the built-in format"
            log.warning("a stream cannot follow this chat template: %s; %s", error, then)
            continue
        return ChatPrompt(tokenizer, chat_format, layout, end_of_turn)
    return ChatPrompt(tokenizer, built_in, layout, end_of_turn)


def template_format(tokenizer, template: str | dict, placeholder: str, system_prompt: str | None) -> ChatFormat:
    """The pieces of a stream as `template` renders them (ChatTemplateError when it cannot be streamed)."""
    if isinstance(template, dict):  # named templates: the default one chats
        template = template.get("default") or next(iter(template.values()))
    renders = [_render(tokenizer, template, system_prompt, turns) for turns in (1, 2, 3)]
    first = renders[0]
    if first.count(placeholder) != 1:
        raise ChatTemplateError(f"the template does not write a video as {placeholder!r}")
    opening, rest = first.split(placeholder)
    before_question, question_found, after_question = rest.partition(_QUESTIONS[0])
    if not question_found:
        raise ChatTemplateError("the template does not write the question after the video")
    reopenings = set()
    for turns, text in enumerate(renders[1:], start=2):
        last_turn = placeholder + before_question + _QUESTIONS[turns - 1] + after_question
        if not text.startswith(opening) or not text.endswith(last_turn) or text.count(placeholder) != turns:
            raise ChatTemplateError(f"turn {turns} of the template does not open, ask or answer as turn 1 does")
        before_video = text[: len(text) - len(last_turn)]
        answer_at = before_video.rfind(_ANSWERS[turns - 2])
        if answer_at < 0:
            raise ChatTemplateError("the template drops the assistant's earlier answers")
        reopenings.add(before_video[answer_at + len(_ANSWERS[turns - 2]):])
    if len(reopenings) != 1:
        raise ChatTemplateError("the template closes an answer differently from turn to turn")
    return ChatFormat(opening, before_question, after_question, reopenings.pop(), source=TEMPLATE)


def _render(tokenizer, template: str, system_prompt: str | None, turns: int) -> str:
    """A conversation of `turns` user turns (a video, then a question), answered but for the last."""
    messages = [] if system_prompt is None else [_message("system", system_prompt)]
    for turn in range(turns):
        if turn:
            messages.append(_message("assistant", _ANSWERS[turn - 1]))
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": _QUESTIONS[turn]}]})
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=True)
    except Exception as error:  # noqa: BLE001 - a template may raise anything (jinja errors, its own checks)
        raise ChatTemplateError(f"rendering a video chat failed ({type(error).__name__}: {error})") from None


def _message(role: str, text: str) -> dict:
    return {"role": role, "content": [{"type": "text", "text": text}]}
