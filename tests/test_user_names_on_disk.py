"""A name from a user or an exchange becomes one safe, readable key segment that decodes back to
it, or is refused with ``InvalidNameError``; no name can leave the root or collide with another."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from persistkit._names import (
    MAX_SEGMENT_BYTES,
    check_store_key,
    decode_segment,
    encode_segment,
    join_pair,
    split_pair,
)
from persistkit.errors import InvalidNameError


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


@pytest.mark.parametrize(
    ("key", "paired"),
    [
        ("fills/n", False),
        ("sub/dir/fills/order-1", False),
        ("signal/BTCUSDT_trend_follow/BTCUSDT", True),
        ("signal/ETH%2FUSDT_mean_rev/ETH%2FUSDT", True),
        ("signal/a%5Fb_c/a_b", True),
        (f"risk/{'r' * MAX_SEGMENT_BYTES}/positions", False),
    ],
)
def test_keys_a_store_writes_pass_the_store_key_rules(key: str, paired: bool) -> None:
    assert check_store_key(key, paired=paired) == key


@pytest.mark.parametrize(
    ("key", "paired", "fragment"),
    [
        ("fills/" + "x" * (MAX_SEGMENT_BYTES + 1), False, "entity id is 201 bytes"),
        ("x" * (MAX_SEGMENT_BYTES + 1) + "/n", False, "entity name is 201 bytes"),
        ("d" * (MAX_SEGMENT_BYTES + 1) + "/fills/n", False, "folder is 201 bytes"),
        ("fills/a b", False, "not a persistkit-encoded name"),
        ("fills/%41", False, "not the canonical encoding"),
        ("signal/a%5Fb_c/a", False, "entity name"),  # fine as a pair, not as one name
        ("signal/ab/ab", True, "entity name"),  # no '_': not a pair
        (".journal/fills/n", False, "starts with '.'"),
        ("n", False, "{entity name}/{entity id}"),
    ],
)
def test_keys_no_store_could_write_are_refused_naming_the_segment(
    key: str, paired: bool, fragment: str
) -> None:
    with pytest.raises(InvalidNameError, match=re.escape(fragment)):
        check_store_key(key, paired=paired)
