"""The compiled LOCK_MANY item decoder (lockmgr/service/_cwire.pyx,
``split_lock_many``; ``lockmgr.service.wire.unpack_requests_packed``) is invisible:

- for any frame, unpack_requests_packed gives what unpack_requests gives --
  the same ProtocolError, or the same requests -- except that the items of a
  LOCK_MANY become a PackedItems exactly when they are 1..MAX_BATCH items
  that all pass the shard's item validation, and then decode to those items;
- odd but valid encodings (array16 items, wide ints, str8) are handled or
  left to msgpack, never misread; invalid UTF-8 is the frame's error as before;
- Table.lock_many on a PackedItems answers and changes the table exactly as
  on the items as lists (escalation, waits and conflicts in the middle).
"""

import struct

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from lockmgr.errors import InvalidRequest  # noqa: E402
from lockmgr.service import wire  # noqa: E402
from lockmgr.service.shard.core import Reply as _Reply, ShardCore as Shard  # noqa: E402

_ctable = pytest.importorskip("lockmgr._core._ctable")
PackedItems = _ctable.PackedItems


def _valid_items(items):
    """What the shard's own validation says of wire items (None: an error)."""
    if type(items) is not list or not 1 <= len(items) <= wire.MAX_BATCH:
        return None
    try:
        parsed = Shard._many_items(items)
    except (_Reply, InvalidRequest):
        return None
    return parsed


def _same(frame):
    """unpack_requests_packed(frame) agrees with unpack_requests(frame)."""
    try:
        want = wire.unpack_requests(frame)
    except wire.ProtocolError as e:
        with pytest.raises(wire.ProtocolError) as got:
            wire.unpack_requests_packed(frame)
        assert (got.value.status, str(got.value)) == (e.status, str(e))
        return 0
    got = wire.unpack_requests_packed(frame)
    assert got[:2] == want[:2]
    assert len(got[2]) == len(want[2])
    npacked = 0
    for g, w in zip(got[2], want[2]):
        if (type(w) is list and len(w) == 7 and w[0] == wire.LOCK_MANY and type(w[0]) is int
                and _valid_items(w[3]) is not None):
            assert type(g[3]) is PackedItems, (g, w)
            assert g[3].decoded() == _valid_items(w[3])
            assert len(g[3]) == len(w[3])
            assert g[:3] == w[:3] and g[4:] == w[4:]
            npacked += 1
        else:
            assert g == w or repr(g) == repr(w)     # (a damaged float may decode as NaN, != itself)
    return npacked


component = st.one_of(
    st.text(max_size=6), st.integers(-2**63, 2**63 - 1), st.binary(max_size=6),
    # invalid ones
    st.integers(2**63, 2**64 - 1),
    st.just(""), st.just(None), st.just(True), st.floats(allow_nan=False), st.just("x" * 1025),
    st.just(b"y" * 1024), st.just([1])
)
valid_component = st.one_of(st.text(max_size=6), st.integers(-2**63, 2**63 - 1), st.binary(max_size=6))
path = st.one_of(st.lists(valid_component, min_size=1, max_size=4),
                 st.lists(component, min_size=0, max_size=4),
                 st.lists(valid_component, min_size=31, max_size=34),
                 valid_component, component)
mode = st.one_of(st.integers(1, 5), st.sampled_from([0, 6, -1, True, None, 2.0, 300]))
item = st.one_of(st.tuples(path, mode).map(list), st.just([["a"], 1, 2]), st.just("item"))
items = st.one_of(st.lists(item, min_size=0, max_size=6),
                  st.lists(st.tuples(st.lists(valid_component, min_size=1, max_size=3), st.integers(1, 5))
                           .map(list), min_size=1, max_size=8),
                  st.just(None), st.just({"a": 1}))
lock_many = st.builds(lambda seq, txn, its, nw, tmo, ep: [wire.LOCK_MANY, seq, txn, its, nw, tmo, ep],
                      st.integers(0, 2**32), st.integers(0, 2**64 - 1), items, st.booleans(),
                      st.one_of(st.none(), st.integers(0, 10**6)), st.integers(0, 5))
other = st.one_of(
    st.builds(lambda s, t: [wire.RELEASE, s, t, True], st.integers(0, 99), st.integers(1, 99)),
    st.builds(lambda s, p: [wire.LOCK, s, 7, p, 5, False, None, 0], st.integers(0, 99), path),
    st.builds(lambda s: [wire.LOCK_MANY, s, 7, [[["a"], 1]]], st.integers(0, 99)),      # wrong arity
    st.just([wire.LOCK_MANY]), st.just("junk"), st.just({"k": [1, 2.5, b"x"]}), st.just([]),
    st.builds(lambda s: [s, 1, [[["a"], 1]], False, None, 0, 0], st.integers(0, 20)),   # other types, 7 long
)
requests = st.lists(st.one_of(lock_many, other), max_size=5)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(requests, st.integers(0, 2**64 - 1), st.integers(0, 2**40))
def test_packed_decoding_equals_msgpack(reqs, sid, ack):
    _same(wire.pack_requests(sid, ack, reqs))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(requests, st.data())
def test_damaged_frames_same_error_or_result(reqs, data):
    f = bytearray(wire.pack_requests(1, 0, reqs))
    how = data.draw(st.sampled_from(["flip", "cut", "append", "insert"]))
    if how == "flip" and f:
        i = data.draw(st.integers(0, len(f) - 1))
        f[i] = data.draw(st.integers(0, 255))
    elif how == "cut":
        f = f[:data.draw(st.integers(0, len(f)))]
    elif how == "append":
        f += data.draw(st.binary(min_size=1, max_size=3))
    else:
        i = data.draw(st.integers(0, len(f)))
        f[i:i] = data.draw(st.binary(min_size=1, max_size=3))
    _same(bytes(f))


def test_typical_batch_is_packed():
    its = [[["b", 1, k], 5] for k in range(64)]
    reqs = [[wire.LOCK_MANY, 2, 9, its, False, None, 0], [wire.RELEASE, 3, 9, True]]
    assert _same(wire.pack_requests(5, 2, reqs)) == 1
    assert _same(wire.pack_requests(5, 2, [[wire.LOCK_MANY, 2, 9, [[["b", 1, k], 5] for k in range(4097)],
                                             False, None, 0]])) == 0     # over MAX_BATCH: the list path
    assert _same(wire.pack_requests(5, 2, [[wire.LOCK_MANY, 2, 9, [], False, None, 0]])) == 0


def _frame_with_items(raw_items):
    """A frame whose one LOCK_MANY has ``raw_items`` (bytes) as its items."""
    return (b"\x94\x01\x05\x00\x91" + b"\x97\x0b\x02\x09" + raw_items + b"\xc2\xc0\x00")


def test_odd_but_valid_encodings():
    # array16 items / array16 item / array16 path, str8, uint8 mode, int64 key, uint16 component
    raw = (b"\xdc\x00\x02"
           + b"\xdc\x00\x02" + b"\xdc\x00\x02" + b"\xd9\x01a" + b"\xcd\x01\x00" + b"\xcc\x05"
           + b"\x92" + b"\x92" + b"\xc4\x01z" + b"\xd3" + struct.pack(">q", -7) + b"\x03")
    f = _frame_with_items(raw)
    assert _same(f) == 1
    assert wire.unpack_requests_packed(f)[2][0][3].decoded() == [(("a", 256), 5), ((b"z", -7), 3)]
    # a bare component as the path; a 1024-byte component; a key of exactly 4096 bytes
    for its in ([["a", 1]], [[7, 1]], [[b"q", 2]], [[["x" * 1024], 5]],
                [[["x" * 1021, "y" * 1021, "z" * 1021, "w" * 1021], 5]]):
        assert _same(wire.pack_requests(5, 0, [[wire.LOCK_MANY, 2, 9, its, False, None, 0]])) == 1
    # one byte over the key limit: not packed; the shard reports it as before
    its = [[["x" * 1021, "y" * 1021, "z" * 1021, "w" * 1022], 5]]
    assert _same(wire.pack_requests(5, 0, [[wire.LOCK_MANY, 2, 9, its, False, None, 0]])) == 0


@pytest.mark.parametrize("bad", [b"\xa2\xc3\x28", b"\xa3\xed\xa0\x80", b"\xa4\xf4\x90\x80\x80", b"\xa2\xc0\x80",
                                 b"\xa3\xe0\x80\x80", b"\xa1\x80", b"\xa2\xe2\x82"])
def test_invalid_utf8_is_the_frames_error_as_before(bad):
    raw = b"\x91\x92\x92" + bad + b"\x01\x05"
    f = _frame_with_items(raw)
    with pytest.raises(wire.ProtocolError):
        wire.unpack_requests(f)
    _same(f)


def test_valid_utf8_edges_packed():
    for s in ["\u007f", "\u0080", "\u07ff", "\u0800", "\ud7ff", "\ue000", "\uffff", "\U00010000", "\U0010ffff"]:
        f = wire.pack_requests(5, 0, [[wire.LOCK_MANY, 2, 9, [[[s, 1], 5]], False, None, 0]])
        assert _same(f) == 1


def _wire_items(n, depth=3):
    return [[["db", "t%d" % (k % 3)] + list(range(k, k + depth - 2)), 1 + k % 5] for k in range(n)]


def _packed(its):
    f = wire.pack_requests(5, 0, [[wire.LOCK_MANY, 2, 9, its, False, None, 0]])
    p = wire.unpack_requests_packed(f)[2][0][3]
    assert type(p) is PackedItems
    return p


@pytest.mark.parametrize("threshold", [3, 5000])
@pytest.mark.parametrize("nowait", [False, True])
def test_table_lock_many_packed_equals_lists(threshold, nowait):
    a, b = _ctable.Table(threshold), _ctable.Table(threshold)
    for t in (a, b):   # another txn holds some rows: waits / conflicts in the middle of batches
        t.lock(1, ("db", "t1", 7), 5)
        t.lock(1, ("db", "t2", 40), 3)
    for txn, n in ((2, 5), (3, 20), (4, 100), (5, 300)):
        its = _wire_items(n, depth=3 + txn % 2)
        ra, rb = a.lock_many(txn, _packed(its), nowait), b.lock_many(txn, its, nowait)
        assert ra == rb
        assert a.held(txn) == b.held(txn) and a.snapshot() == b.snapshot()
        assert a.stats() == b.stats()
        a._check()
        b._check()
        if ra and ra[-1] < 0:
            for t in (a, b):
                t.release_all(txn)
    with pytest.raises(InvalidRequest):
        a.lock_many(0, _packed(_wire_items(2)))


def test_packed_items_wait_then_resume_in_shard_terms():
    t = _ctable.Table()
    t.lock(1, ("db", "t1", 4), 5)
    its = _wire_items(8)
    r = t.lock_many(2, _packed(its))
    assert r[-1] == _ctable.WAITING and len(r) == 5 and t.is_waiting(2)
    with pytest.raises(InvalidRequest, match="already waiting"):
        t.lock_many(2, _packed(its))
    assert t.release_all(1) == [2]
    t._check()
