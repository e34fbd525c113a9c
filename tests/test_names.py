from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from persistkit.errors import InvalidNameError
from persistkit.names import (
    MAX_SEGMENT_BYTES,
    decode_segment,
    encode_segment,
    join_pair,
    split_pair,
)


@pytest.mark.parametrize(
    ("name", "segment"),
    [
        ("BTCUSDT", "BTCUSDT"),
        ("my_strategy", "my_strategy"),
        ("BTC/USDT", "BTC%2FUSDT"),
        ("sp ace", "sp%20ace"),
        (".hidden", "%2Ehidden"),
        ("..x", "%2E.x"),
        ("100%", "100%25"),
        ("ü", "%C3%BC"),
    ],
)
def test_ordinary_names_stay_readable_and_others_are_escaped(name: str, segment: str) -> None:
    assert encode_segment(name) == segment
    assert decode_segment(segment) == name


@pytest.mark.parametrize("name", ["", ".", "..", "/", "/etc/passwd", "a/../b", "../x", "a\x00b"])
def test_names_that_would_leave_the_root_are_refused(name: str) -> None:
    with pytest.raises(InvalidNameError):
        encode_segment(name)


def test_overlong_and_non_text_names_are_refused() -> None:
    with pytest.raises(InvalidNameError, match="limit"):
        encode_segment("x" * 300)
    with pytest.raises(InvalidNameError):
        encode_segment("\udc80")  # a lone surrogate has no UTF-8 form
    with pytest.raises(InvalidNameError):
        encode_segment(42)  # type: ignore[arg-type]  # the point of the test


def test_pairs_do_not_collide_where_plain_joining_would() -> None:
    assert join_pair("a_b", "c") != join_pair("a", "b_c")
    assert join_pair("BTCUSDT", "my_strategy") == "BTCUSDT_my_strategy"
    assert split_pair(join_pair("a_b", "c")) == ("a_b", "c")
    assert split_pair(join_pair("a", "b_c")) == ("a", "b_c")


@pytest.mark.parametrize("segment", ["a%2f", "%41", "a_b%5F", ".x", "a/b", "%C3", "%ZZ"])
def test_only_canonical_segments_decode(segment: str) -> None:
    with pytest.raises(InvalidNameError):
        decode_segment(segment)


@given(st.text(min_size=1, max_size=60))
def test_every_name_is_refused_or_round_trips_into_one_safe_segment(name: str) -> None:
    try:
        segment = encode_segment(name)
    except InvalidNameError:
        return
    assert "/" not in segment
    assert "\x00" not in segment
    assert not segment.startswith(".")
    assert segment.isascii()
    assert decode_segment(segment) == name


@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
def test_every_pair_is_refused_or_splits_back(symbol: str, strategy: str) -> None:
    try:
        segment = join_pair(symbol, strategy)
    except InvalidNameError:
        return
    assert split_pair(segment) == (symbol, strategy)


def test_a_pair_is_held_to_the_limit_whole() -> None:
    half = "x" * 150  # each half fits alone
    assert encode_segment(half) == half
    with pytest.raises(InvalidNameError, match=f"limit is {MAX_SEGMENT_BYTES}"):
        join_pair(half, half)
    longest = join_pair("s" * 100, "t" * (MAX_SEGMENT_BYTES - 101))
    assert len(longest) == MAX_SEGMENT_BYTES
    with pytest.raises(InvalidNameError):
        join_pair("s" * 100, "t" * (MAX_SEGMENT_BYTES - 100))
