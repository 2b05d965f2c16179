from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache_node.tracker.bencode import BencodeError, decode, encode

values = st.recursive(
    st.integers() | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.binary(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


def test_bep3_examples() -> None:
    assert encode(b"spam") == b"4:spam"
    assert encode(3) == b"i3e"
    assert encode(-3) == b"i-3e"
    assert encode(0) == b"i0e"
    assert encode([b"spam", b"eggs"]) == b"l4:spam4:eggse"
    assert encode({"cow": b"moo", "spam": b"eggs"}) == b"d3:cow3:moo4:spam4:eggse"
    assert encode({"spam": [b"a", b"b"]}) == b"d4:spaml1:a1:bee"


def test_dictionary_keys_sorted_as_raw_bytes() -> None:
    assert encode({"b": 1, "a": 2, "B": 3}) == b"d1:Bi3e1:ai2e1:bi1ee"


@given(values)
def test_roundtrip(value: object) -> None:
    assert decode(encode(value)) == value  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        b"i03e",  # leading zero
        b"i-0e",  # negative zero
        b"ie",
        b"i12",  # unterminated
        b"05:hello",  # leading zero length
        b"5:hell",  # short string
        b"d1:bi1e1:ai2ee",  # unsorted keys
        b"d1:ai1e1:ai2ee",  # duplicate key
        b"di1ei2ee",  # non-string key
        b"l4:spam",  # unterminated list
        b"i1ei2e",  # trailing data
        b"x",
        b"",
    ],
)
def test_rejects_non_canonical_or_broken(bad: bytes) -> None:
    with pytest.raises(BencodeError):
        decode(bad)


def test_depth_is_bounded() -> None:
    with pytest.raises(BencodeError):
        decode(b"l" * 1000 + b"e" * 1000)


def test_bool_is_refused() -> None:
    with pytest.raises(TypeError):
        encode(True)
