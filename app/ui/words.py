"""Text the web UI shows, made fit for a person: the command line's flags become the page's field
names, a server path becomes the file name the user knows, and undecodable bytes never show."""

from __future__ import annotations

import re

NO_TEXT = "(no readable answer: the model produced only bytes that are not text)"

# The core's messages name command-line flags; the page has fields with labels instead.
_FLAG_WORDS = (
    (re.compile(r"raise --mem-cap to at least"), "raise the memory cap to at least"),
    (re.compile(r"raise --mem-cap"), "raise the memory cap"),
    (re.compile(r"lower --mem-cap"), "lower the memory cap"),
    (re.compile(r"give --mem-cap"), "type a memory cap"),
    (re.compile(r"--mem-cap"), "the memory cap"),
    (re.compile(r"--kv-bits (\d+)"), r"\1 bits per key/value"),
    (re.compile(r"--policy"), "the compression policy"),
    (re.compile(r"--fps"), "the frame rate"),
    (re.compile(r" ?\(?--max-sessions \d+\)?"), ""),
    # FFmpeg's own reason means nothing to a person who uploaded, say, a text file renamed .mp4
    (re.compile(r"is not a video FFmpeg can read \([^)]*\); give a video file such as mp4, mkv or webm\."),
     "is not a video this server can read (it may be another kind of file, or damaged); upload an mp4, mkv or "
     "webm video."),
)


def ui_words(message: str, path=None, name: str | None = None) -> str:
    """`message` in the page's words; with `path` and `name`, the path (the server's temporary
    upload path, say) is written as the name the user gave the file."""
    text = str(message)
    if path is not None and name:
        text = text.replace(str(path), name)
    for pattern, words in _FLAG_WORDS:
        text = pattern.sub(words, text)
    return text


_UNREADABLE = re.compile("[\ufffd\x00-\x08\x0b-\x1f\x7f-\x9f]")  # undecodable bytes, control characters


def readable(text: str) -> str:
    """`text` without undecodable bytes (U+FFFD) or control characters, and the blanks they leave doubled."""
    cleaned = _UNREADABLE.sub("", text)
    return re.sub(r"[ \t]{2,}", " ", cleaned) if cleaned != text else text


def readable_answer(text: str) -> str:
    """An answer as the chat shows it: readable, or a plain note when nothing readable is left."""
    cleaned = readable(text).strip()
    return cleaned if cleaned else NO_TEXT
