"""A question as the model gets it: non-empty text, valid UTF-8, trimmed; a QuestionError otherwise.

Invalid UTF-8 reaches potwatch as bytes (from a file or a pipe) or, from the command line, as str with
the undecodable bytes smuggled in as lone surrogates (PEP 383). Neither is silently "repaired": the
model would answer a question the user did not ask."""

from __future__ import annotations

from potwatch.errors import QuestionError


def clean_question(question) -> str:
    """`question` trimmed, or a QuestionError saying what is wrong with it."""
    if isinstance(question, (bytes, bytearray)):
        try:
            question = bytes(question).decode("utf-8")
        except UnicodeDecodeError as error:
            raise _not_utf8(error.object[error.start], error.start) from None
    if question is None:
        question = ""
    if not isinstance(question, str):
        raise QuestionError(f"The question is a {type(question).__name__}, not text; ask with a str.")
    for position, char in enumerate(question):
        if "\udc80" <= char <= "\udcff":  # a byte that was not UTF-8, kept by surrogateescape
            raise _not_utf8(ord(char) - 0xDC00, len(question[:position].encode("utf-8", "surrogateescape")))
        if "\ud800" <= char <= "\udfff":
            raise QuestionError(f"The question holds a lone surrogate at character {position}; ask with valid text.")
    if not question.strip():
        raise QuestionError("The question is empty; type a question about the video.")
    return question.strip()


def _not_utf8(byte: int, offset: int) -> QuestionError:
    return QuestionError(
        f"The question is not valid UTF-8 (byte 0x{byte:02x} at byte {offset}); type it again or save it as UTF-8."
    )
