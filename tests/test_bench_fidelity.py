"""The fidelity table end to end in its reduced form (`--quick`: 2 videos, tar_van, uniform, window and
tar_van at 4 bits) on a held-out set from `make-qa`, with the random-weight demo model: the files are
written, every configuration is scored at every ratio, the caps hold what they say, and at ratio 1
(nothing evicted) every 16-bit policy answers exactly as the full cache does."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from potwatch.bench.fidelity import configurations, parse_ratios
from potwatch.app.cli import main
from potwatch.bench.make_qa import make_qa
from potwatch.compression.policies.base import policy_names
from potwatch.errors import UserError

QUICK = ["tar_van", "uniform", "window", "tar_van@4bit"]


@pytest.fixture(scope="module")
def qa_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fidelity-qa")
    make_qa(seed=0, streams=3, seconds=12.0, out=folder)  # stream 0 has early questions; --quick takes 2
    return folder


@pytest.fixture(scope="module")
def table(qa_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("fidelity")
    code = main(["bench", "--accuracy", str(qa_set / "questions.json"), "--videos", str(qa_set), "--model", "demo",
                 "--ratios", "1,1/4", "--quick", "--out", str(out)])
    assert code == 0
    return out, json.loads((out / "accuracy.json").read_text())


def test_writes_json_table_and_plot(table):
    out, summary = table
    assert (out / "accuracy.png").stat().st_size > 0
    markdown = (out / "accuracy.md").read_text()
    assert "| configuration | 1 all | 1 early | 1/4 all | 1/4 early |" in markdown
    assert "full cache (no cap)" in markdown and "Full cache by question kind" in markdown
    assert summary["threads"] == 1 and summary["wall_s"] > 0 and summary["command"]
    assert summary["streams"] == 2 and summary["demo_model"] and summary["peak_within_cap"]
    assert summary["configurations"] == ["full", *QUICK] and summary["ratios"] == ["1", "1/4"]


def test_every_configuration_is_scored_at_every_ratio(table):
    _, summary = table
    full = summary["rows"]["full"]["no cap"]
    assert full["questions"] == 21 and full["early_questions"] == 5  # the two streams' questions
    assert set(full["by_task"]) >= {"colour", "shape", "presence", "count", "time"}
    for name in QUICK:
        for ratio in ("1", "1/4"):
            figures = summary["rows"][name][ratio]
            assert figures["questions"] == 21 and figures["streams"] == 2
            assert 0 <= figures["accuracy"] <= 1 and 0 <= figures["early_accuracy"] <= 1
            assert figures["seconds_per_stream"] > 0
    assert len(summary["items"]) == 21
    assert all(len(line["predicted"][name]) == 2 for line in summary["items"] for name in QUICK)


def test_caps_hold_their_share_and_fewer_bits_hold_more(table):
    _, summary = table
    rows = summary["rows"]
    for name in ("tar_van", "uniform", "window"):
        assert rows[name]["1"]["held_share"] == 1.0  # the whole stream fits: nothing evicted
        assert 0.15 < rows[name]["1/4"]["held_share"] < 0.4
    assert rows["tar_van@4bit"]["1/4"]["held_share"] > rows["tar_van"]["1/4"]["held_share"]  # the same bytes
    assert rows["tar_van@4bit"]["1/4"]["cap_bytes"] == rows["tar_van"]["1/4"]["cap_bytes"]


def test_nothing_evicted_means_the_full_cache_answers(table):
    _, summary = table
    for line in summary["items"]:
        for name in ("tar_van", "uniform", "window"):
            assert line["predicted"][name][0] == line["full"], (line["id"], name)


def test_every_registered_policy_joins_the_table():
    names = configurations(None, (8, 4))
    assert names[0] == "tar_van" and names[-2:] == ["tar_van@8bit", "tar_van@4bit"]
    assert set(names[:-2]) == set(policy_names()) - {"none"}


def test_ratios_parse_and_refuse():
    assert parse_ratios("1/8,1/2, 0.25") == (Fraction(1, 2), Fraction(1, 4), Fraction(1, 8))
    for bad in ("half", "0", "2", "1/0", ""):
        with pytest.raises(UserError, match="write it like 1/2,1/4,1/8,1/16"):
            parse_ratios(bad)


def test_bad_ratios_and_a_cap_beside_them_are_refused(qa_set, capsys):
    base = ["bench", "--accuracy", str(qa_set / "questions.json"), "--videos", str(qa_set), "--model", "demo"]
    assert main(base + ["--ratios", "half"]) == 2
    assert main(base + ["--ratios", "1/2", "--mem-cap", "1MB"]) == 2
    assert main(["bench", "--ratios", "1/2"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("potwatch: error: ")]
    assert len(errors) == 3 and "--ratios 'half' is not a list of shares" in errors[0]


def test_free_text_answers_are_checked_against_the_truth(qa_set, tmp_path, capsys):
    """--answers text generates each answer (the cache rolled back after) and checks it; a set without
    truths is refused with one sentence."""
    out = tmp_path / "text"
    base = ["bench", "--accuracy", str(qa_set / "questions.json"), "--videos", str(qa_set), "--model", "demo",
            "--ratios", "1/4", "--policies", "tar_van", "--kv-bits", "16", "--streams", "1"]
    assert main(base + ["--answers", "text", "--out", str(out)]) == 0
    summary = json.loads((out / "accuracy.json").read_text())
    assert summary["answers"] == "text" and summary["peak_within_cap"]
    assert "free text" in (out / "accuracy.md").read_text()
    # the demo model's random words check out nowhere: every mark is the wrong-text mark or the right letter
    assert all(set(line["predicted"]["tar_van"]) <= {"x", line["answer"]} for line in summary["items"])
    entries = json.loads((qa_set / "questions.json").read_text())["questions"]
    for entry in entries:
        entry.pop("truth")
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(entries))
    assert main(["bench", "--accuracy", str(bare), "--videos", str(qa_set), "--model", "demo", "--ratios", "1/4",
                 "--answers", "text", "--out", str(tmp_path / "bare")]) == 2
    assert "needs each question's free-text truth" in capsys.readouterr().err
