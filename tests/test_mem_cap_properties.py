"""Property-based tests of the cap parser: every size a user can write parses to the bytes it names,
what `format_bytes` prints parses back, and anything else is a MemCapError, never a crash."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from potwatch.compression.mem_cap import NO_CAP_WORDS, format_bytes, parse_mem_cap, parse_optional_mem_cap
from potwatch.errors import MemCapError

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
FEW = settings(max_examples=150, deadline=None)


def spelled(unit: str, draw_case: list[bool]) -> str:
    """`unit` with each letter upper- or lower-case as drawn: users type GB, Gb, gB and gb."""
    return "".join(c.upper() if up else c for c, up in zip(unit, draw_case + [False] * len(unit)))


@FEW
@given(count=st.integers(1, 10**6), unit=st.sampled_from(sorted(UNITS)),
       case=st.lists(st.booleans(), max_size=3), left=st.sampled_from(["", " ", "\t"]),
       middle=st.sampled_from(["", " "]), right=st.sampled_from(["", " ", "\n"]))
def test_a_whole_number_of_any_unit_is_that_many_bytes(count, unit, case, left, middle, right):
    assert parse_mem_cap(f"{left}{count}{middle}{spelled(unit, case)}{right}") == count * UNITS[unit]


@FEW
@given(nbytes=st.integers(1, 10**18))
def test_plain_numbers_are_bytes(nbytes):
    assert parse_mem_cap(nbytes) == nbytes  # exact past 2**53, where a float would round
    assert parse_mem_cap(str(nbytes)) == nbytes


@FEW
@given(value=st.decimals(min_value="0.001", max_value="100000", places=3), unit=st.sampled_from(["kb", "MiB", "GB"]))
def test_decimal_sizes_round_down_to_whole_bytes(value, unit):
    expected = math.floor(float(value) * UNITS[unit.lower()])
    assume(expected >= 1)
    assert parse_mem_cap(f"{value}{unit}") == expected


@FEW
@given(nbytes=st.integers(1, 10**13))
@example(999)
@example(1000)
@example(999_995)
def test_what_format_bytes_prints_parses_back_within_its_rounding(nbytes):
    text = format_bytes(nbytes)
    parsed = parse_mem_cap(text)
    if nbytes < 1000:
        assert parsed == nbytes and text == f"{nbytes} B"
    else:  # two decimals of kB, MB or GB: off by at most half a unit in the last place
        scale = 10 ** (3 * min(3, (len(str(nbytes)) - 1) // 3))
        assert abs(parsed - nbytes) <= 0.005 * scale + 1, (nbytes, text, parsed)


@FEW
@given(text=st.text(max_size=24))
@example("1e400GB")
@example("9" * 400)
@example("9" * 5000)  # past Python's int-from-text digit limit
@example("1e-400")
@example("0x10MB")
@example("½GB")
@example("１２GB")  # full-width digits
def test_anything_else_is_a_mem_cap_error_never_a_crash(text):
    try:
        nbytes = parse_mem_cap(text)
    except MemCapError as error:
        assert str(error).endswith(".") and ("write it like" in str(error) or "give a positive size" in str(error))
        return
    assert isinstance(nbytes, int) and nbytes >= 1  # it was a size after all


@FEW
@given(count=st.integers(1, 10**6), unit=st.sampled_from(sorted(UNITS)))
def test_negative_and_zero_sizes_are_refused(count, unit):
    with pytest.raises(MemCapError, match="negative"):
        parse_mem_cap(f"-{count}{unit}")
    with pytest.raises(MemCapError, match="zero"):
        parse_mem_cap(f"0{unit}")


@FEW
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_numbers_from_code_are_checked_too(value):
    if math.isfinite(value) and value >= 1:
        assert parse_mem_cap(value) == int(value)
    else:
        with pytest.raises(MemCapError):
            parse_mem_cap(value)


@FEW
@given(word=st.sampled_from(NO_CAP_WORDS), case=st.lists(st.booleans(), max_size=9), pad=st.sampled_from(["", " ", "  "]))
def test_no_cap_words_in_any_case_mean_no_cap(word, case, pad):
    assert parse_optional_mem_cap(f"{pad}{spelled(word, case)}{pad}") is None


@FEW
@given(text=st.text(max_size=16))
def test_the_optional_parser_agrees_with_the_plain_one_on_everything_else(text):
    assume(text.strip().lower() not in NO_CAP_WORDS)
    try:
        expected = parse_mem_cap(text)
    except MemCapError:
        with pytest.raises(MemCapError):
            parse_optional_mem_cap(text)
        return
    assert parse_optional_mem_cap(text) == expected


def test_booleans_are_not_sizes():
    for value in (True, False):
        with pytest.raises(MemCapError):
            parse_mem_cap(value)
