import pytest
from hypothesis import given, settings, strategies as st

from lockmgr import InvalidRequest
from lockmgr.paths import decode, encode, normalize, prefix_ends

component = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.binary(max_size=20),
)
paths = st.lists(component, min_size=1, max_size=6).map(tuple)


@settings(max_examples=300, derandomize=True)
@given(paths)
def test_roundtrip_and_prefix(p):
    k = encode(p)
    assert decode(k) == p
    ends = prefix_ends(k)
    assert len(ends) == len(p)
    for i, e in enumerate(ends):
        assert k[:e] == encode(p[: i + 1])


@settings(max_examples=300, derandomize=True)
@given(paths, paths)
def test_injective(a, b):
    assert (encode(a) == encode(b)) == (a == b)


def test_distinct_types_distinct_resources():
    assert encode(("db", "orders", 42)) != encode(("db", "orders", "42"))
    assert encode(("db", b"42")) != encode(("db", "42"))
    assert encode("db") == encode(("db",))
    assert normalize(7) == (7,)


def test_encoding_is_stable():
    # The encoding is used for routing: it must never change.
    assert encode(("db", 1, b"\x00")).hex() == "010002646202000000000000000103000100"


@pytest.mark.parametrize("bad,word", [
    ((), "empty"),
    (tuple(range(33)), "33 components"),
    (("db", 1.5), "float"),
    (("db", None), "NoneType"),
    (("db", True), "bool"),
    (("db", ["x"]), "list"),
    (["db"], "list"),
    (None, "NoneType"),
    (1.0, "float"),
    (("db", 1 << 63), "64-bit"),
    (("db", -(1 << 63) - 1), "64-bit"),
    (("x" * 1025,), "1025 bytes"),
    ((b"x" * 1025,), "1025 bytes"),
    (("\ud800",), "surrogate"),
    (tuple("x" * 1000 for _ in range(5)), "at most 4096"),
])
def test_bad_paths(bad, word):
    with pytest.raises(InvalidRequest, match=word):
        encode(bad)
