"""Hostile names, generated with hypothesis: refused or stored inside the root, never colliding."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from common import Result, count, record
from hypothesis import given, settings
from hypothesis import strategies as st

from persistkit import FileBackend, InvalidNameError, PersistBase
from persistkit._names import join_pair, split_pair
from persistkit.backends._archive import HISTORY_DIR
from persistkit.backends._base import check_key
from persistkit.backends._journal import JOURNAL_DIR

EXAMPLES = count(120, 1000, "hostile-name examples (hypothesis), each of two properties")

HOSTILE = [
    "",
    ".",
    "..",
    "/",
    "//",
    "a/../b",
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "\x00",
    "a\x00b",
    ".hidden",
    "..a",
    ".tmp-0123",
    ".quarantine",
    "a/b",
    "a\\..\\b",
    "%2F",
    "%",
    "%25",
    "%2e%2e",
    "BTC/USDT",
    "BTC_USDT",
    "a_b",
    " ",
    "ü",
    "\u202e",
    "\ud800",
    "CON",
    "x" * 300,
    "é" * 120,
    "\n",
    "*",
    "a" * 200,
]

names = st.one_of(
    st.sampled_from(HOSTILE), st.text(max_size=40), st.text("./_%\\\x00ab", max_size=8)
)


def _tree(directory: Path) -> set[str]:
    return {str(path.relative_to(directory)) for path in directory.rglob("*")}


async def _store_all(outside: Path, entity: str, ids: list[str]) -> tuple[int, int]:
    """Write each id (value = the id itself); check the properties; return (stored, refused)."""
    root = outside / "root"
    root.mkdir()
    try:
        store: PersistBase[Any] = PersistBase(entity, backend=FileBackend(root))
    except InvalidNameError:
        assert _tree(outside) == {"root"}
        return 0, 1
    stored: list[str] = []
    refused = 0
    for entity_id in ids:
        before = _tree(outside)
        try:
            await store.write_value(entity_id, {"id": entity_id})
        except InvalidNameError:
            refused += 1
            assert _tree(outside) == before, f"{entity_id!r} was refused after I/O"
            continue
        stored.append(entity_id)
    for entity_id in stored:
        # A collision would have overwritten one name's value with another's.
        assert await store.read_value(entity_id) == {"id": entity_id}
    assert sorted([key async for key in store.keys()]) == sorted(stored)
    _check_files_inside(outside, root, len(stored))
    return len(stored), refused


def _check_files_inside(outside: Path, root: Path, expected: int) -> None:
    """One value file per stored id, inside the root; persistkit's journal and history aside."""
    own = (root / JOURNAL_DIR, root / HISTORY_DIR)
    files = [p for p in outside.rglob("*") if p.is_file() and not any(d in p.parents for d in own)]
    assert len(files) == expected
    real_root = os.path.realpath(root)
    for path in files:
        assert os.path.realpath(path).startswith(real_root + os.sep), path


def test_hostile_names_stay_inside_the_root_and_never_collide() -> None:
    totals = {"names tried": 0, "stored": 0, "refused": 0}

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(entity=names, ids=st.lists(names, max_size=12, unique=True))
    def check(entity: str, ids: list[str]) -> None:
        with tempfile.TemporaryDirectory() as directory:
            stored, refused = asyncio.run(_store_all(Path(directory), entity, ids))
        totals["names tried"] += len(ids) + 1
        totals["stored"] += stored
        totals["refused"] += refused

    check()

    pairs = 0

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(first=st.tuples(names, names), second=st.tuples(names, names))
    def check_pairs(first: tuple[str, str], second: tuple[str, str]) -> None:
        nonlocal pairs
        try:
            a, b = join_pair(*first), join_pair(*second)
        except InvalidNameError:
            return
        pairs += 1
        assert split_pair(a) == first and split_pair(b) == second
        assert (a == b) == (first == second), (first, second)
        assert "/" not in a and not a.startswith(".")

    check_pairs()
    record(
        Result(
            fault="hostile names",
            injection="hypothesis: entity names and lists of distinct ids from any unicode "
            "text, path-like alphabets and a list of known-bad names (.., /, NUL, absolute "
            "paths, dot names, 300-byte names, lone surrogates); (symbol, strategy) pairs",
            expected="refused with InvalidNameError before any I/O, or stored inside the root; "
            "every stored id reads back its own value; keys() returns exactly the ids written; "
            "pairs map one-to-one and split back",
            trials=totals["names tried"] + pairs,
            violations=0,
            counts={**totals, "symbol/strategy pairs checked": pairs},
        )
    )
    assert totals["stored"] > 0 and totals["refused"] > 0


KEY_RULE = re.compile(r"(?:\A|/)(?:\.|/|\Z)|\x00")
"""The backends' key rule as one regular expression: an empty key or segment, a segment
starting with '.', a NUL anywhere. check_key spells it as plain string tests (faster)."""


def test_check_key_refuses_exactly_what_the_key_rule_refuses() -> None:
    @settings(max_examples=EXAMPLES * 5, deadline=None)
    @given(key=st.text(alphabet="/.a\x00_%", max_size=12) | names)
    def check(key: str) -> None:
        try:
            check_key(key)
            refused = False
        except InvalidNameError:
            refused = True
        assert refused == (KEY_RULE.search(key) is not None), repr(key)

    check()
    for key in HOSTILE:
        check.hypothesis.inner_test(key)  # type: ignore[attr-defined]


def test_a_key_that_only_claims_to_equal_an_accepted_one_is_still_refused() -> None:
    """check_key remembers the keys it accepted; a str subclass that hashes and compares
    like one of them, but climbs, must not ride on that memory."""
    accepted = "signal/BTCUSDT_trend/BTCUSDT"
    check_key(accepted)

    class Impostor(str):
        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash(accepted)

    with pytest.raises(InvalidNameError):
        check_key(Impostor("../../etc/passwd"))
    with pytest.raises(InvalidNameError):
        check_key(Impostor("signal/.journal/x"))
