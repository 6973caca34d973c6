"""Every row of docs/bad-inputs.md, run as written: the command line through `potwatch`'s main function,
the Python API by evaluating its cell. The sentence printed or raised must be the table's, word for
word, so the docs cannot drift from the program; a session that refuses something must keep what it
had and still answer."""

from __future__ import annotations

import io
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from potwatch import StreamSession, load_model
from potwatch.app.cli import main
from potwatch.errors import UserError
from potwatch.streaming.sources import FileSource, WebcamSource, open_source
from tests.bad_media import write_all

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "bad-inputs.md"
WORKS = "(works"
NONE = "—"

# Command lines a shell would expand but shlex cannot: the argv Python hands potwatch for them.
LONG_QUESTION = "why " * 3000
ARGV_OVERRIDES = {
    "very long question": ["watch", "assets/demo.mp4", "--mem-cap", "400kB", "--ask", LONG_QUESTION],
    # bash's $'caf\xe9?' is the byte 0xe9, which Python's argv carries as the surrogate U+DCE9 (PEP 383)
    "question not in UTF-8": ["watch", "assets/demo.mp4", "--ask", "caf\udce9?"],
    "stdin line not in UTF-8": ["watch", "assets/demo.mp4", "--interactive", "--max-frames", "4",
                                "--max-new-tokens", "2"],
}
STDIN = {"stdin line not in UTF-8": b"caf\xe9?\nWhat?\n"}


@dataclass(frozen=True)
class Row:
    case: str
    command: str
    api: str
    message: str
    exit_code: str

    @property
    def works(self) -> bool:
        return self.message.startswith(WORKS)


def _cells(line: str) -> list[str]:
    """The cells of a markdown table row: split on unescaped pipes, unescape, drop code backticks."""
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [cell.strip().replace("\\|", "|").strip("`") for cell in cells]


def read_table(path: Path = TABLE) -> list[Row]:
    """The rows of the first table under '## Bad inputs'."""
    lines = path.read_text(encoding="utf-8").split("## Bad inputs", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| case |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(Row(*_cells(line)))
    return rows


ROWS = read_table()
CLI_ROWS = [row for row in ROWS if row.command != NONE]
API_ROWS = [row for row in ROWS if row.api != NONE]


def test_the_table_covers_the_issue():
    cases = {row.case for row in ROWS}
    for needed in ("missing file", "folder", "zero-byte file", "text file named .mp4", "truncated MP4 (no index)",
                   "audio-only file", "unsupported codec", "tiny (1×1) frames", "huge (8K) frames",
                   "grayscale frames", "RGBA frames", "odd size (101×37)", "variable frame rate",
                   "webcam that does not exist", "malformed cap", "zero cap", "negative cap",
                   "cap too small for the model", "unknown model name", "unknown policy",
                   "folder that is not a model", "empty question", "very long question", "question not in UTF-8",
                   "stdin line not in UTF-8"):
        assert needed in cases
    assert set(ARGV_OVERRIDES) | set(STDIN) <= cases  # no stale overrides
    assert all(row.exit_code in ("0", "2", NONE) for row in ROWS)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A folder holding every file the table names, with assets/demo.mp4 beside them."""
    folder = write_all(tmp_path_factory.mktemp("bad-inputs"))
    (folder / "assets").mkdir(exist_ok=True)
    (folder / "assets" / "demo.mp4").symlink_to(ROOT / "assets" / "demo.mp4")
    return folder


@pytest.fixture
def in_media(media, monkeypatch) -> Path:
    monkeypatch.chdir(media)  # the table's relative paths, printed as the user typed them
    return media


def _argv(row: Row) -> list[str]:
    if row.case in ARGV_OVERRIDES:
        return ARGV_OVERRIDES[row.case]
    words = shlex.split(row.command)
    assert words[0] == "potwatch", row.command
    return words[1:]


def _skip_if_it_does_not_apply(row: Row) -> None:
    if row.case == "CUDA asked for, none here" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")


@pytest.mark.parametrize("row", CLI_ROWS, ids=[row.case for row in CLI_ROWS])
def test_command_line(row, in_media, capsys, monkeypatch):
    _skip_if_it_does_not_apply(row)
    if row.case in STDIN:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(STDIN[row.case])))
    argv = _argv(row)
    if row.works:
        argv = argv + ["--ask", "What is there?", "--max-new-tokens", "2"]
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert str(code) == row.exit_code, err
    if row.works:
        assert "error" not in err and "warning" not in err, err
        assert "Q: What is there?" in out and "summary:" in out
        return
    printed = [line for line in err.splitlines() if line.startswith("potwatch: error: ")]
    assert printed == [f"potwatch: error: {row.message}"]
    if row.case in STDIN:  # the bad line is reported, the good one still answered, the summary printed
        assert "Q: What?" in out and "summary:" in out


@pytest.fixture
def live_session(demo_adapter) -> StreamSession:
    session = StreamSession(demo_adapter, mem_cap="400kB")
    rng = np.random.default_rng(0)
    session.feed([rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(4)])
    return session


def _state(session: StreamSession) -> tuple:
    stats = session.stats()
    keys = ("frames_seen", "frames_ingested", "frames_pending", "tokens_in_cache", "turns")
    return tuple(stats[key] for key in keys)


@pytest.mark.parametrize("row", API_ROWS, ids=[row.case for row in API_ROWS])
def test_python_api(row, in_media, demo_adapter, live_session):
    _skip_if_it_does_not_apply(row)
    names = {"np": np, "FileSource": FileSource, "WebcamSource": WebcamSource, "open_source": open_source,
             "StreamSession": StreamSession, "load_model": load_model, "model": demo_adapter,
             "session": live_session}
    before = _state(live_session)
    if row.works:
        eval(row.api, names)  # noqa: S307 - the docs' own example
    else:
        with pytest.raises(UserError) as raised:
            eval(row.api, names)  # noqa: S307
        assert str(raised.value) == row.message
        assert _state(live_session) == before  # nothing lost
    answer = live_session.ask("What is there?", max_new_tokens=2)
    assert answer.frames_seen >= before[0] and live_session.stats()["turns"] == before[4] + 1
