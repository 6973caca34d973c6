import pytest

from potwatch import parse_mem_cap
from potwatch.compression.budget import KVGeometry
from potwatch.compression.mem_cap import format_bytes
from potwatch.errors import MemCapError, UserError

import torch


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2GB", 2 * 10**9),
        ("1.5GiB", int(1.5 * 2**30)),
        ("512MB", 512 * 10**6),
        ("64MiB", 64 * 2**20),
        ("300kB", 300 * 10**3),
        ("123456", 123456),
        (" 2 gb ", 2 * 10**9),
        (4096, 4096),
    ],
)
def test_parses_decimal_and_binary_units(text, expected):
    assert parse_mem_cap(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "two GB", "2XB", "2 G B", "1e400GB", "nan"])
def test_malformed_caps_say_how_to_write_them(text):
    with pytest.raises(MemCapError, match="write it like 2GB"):
        parse_mem_cap(text)


@pytest.mark.parametrize("text", ["-1GB", "-5", -3])
def test_negative_caps_are_rejected(text):
    with pytest.raises(MemCapError, match="negative"):
        parse_mem_cap(text)


@pytest.mark.parametrize("text", ["0", "0GB", "0.0000001B", 0])
def test_zero_caps_are_rejected(text):
    with pytest.raises(MemCapError, match="zero"):
        parse_mem_cap(text)


def test_mem_cap_error_is_a_user_error():
    assert issubclass(MemCapError, UserError)


def test_qwen2_vl_2b_geometry_matches_the_issue_figures():
    geometry = KVGeometry(layers=28, kv_heads=2, head_dim=128, dtype=torch.bfloat16)
    assert geometry.kv_bytes_per_token == 28_672
    assert geometry.bytes_per_token == 28_672 + geometry.meta_bytes_per_token
    # 2 GB of K+V alone is ~69,750 tokens; with metadata counted it is a little less.
    assert 2 * 10**9 // geometry.kv_bytes_per_token == 69_754
    assert 60_000 < geometry.tokens_for(2 * 10**9) < 69_754


def test_format_bytes():
    assert format_bytes(2 * 10**9) == "2.00 GB"
    assert format_bytes(512) == "512 B"


@pytest.mark.parametrize("text", [None, "none", " OFF ", "unlimited"])
def test_no_cap_words_mean_no_cap(text):
    from potwatch.compression.mem_cap import parse_optional_mem_cap

    assert parse_optional_mem_cap(text) is None


def test_an_optional_cap_is_still_checked():
    from potwatch.compression.mem_cap import parse_optional_mem_cap

    assert parse_optional_mem_cap("64MiB") == 64 * 2**20
    with pytest.raises(MemCapError, match="write it like 2GB"):
        parse_optional_mem_cap("nothing")
