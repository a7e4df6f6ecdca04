"""The compiled msgpack codec (lockmgr/service/_codec.pyx) against msgpack
itself: the same bytes out, the same objects in, and for whatever it does not
handle an Unsupported, so that lockmgr.service.wire falls back to msgpack (and
its errors)."""

import math

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from lockmgr import _core
from lockmgr.service import wire

_codec = pytest.importorskip("lockmgr.service._codec", reason="the compiled codec is not built (no compiler)")


def _packb(o):
    return msgpack.packb(o, use_bin_type=True)


def _unpackb(b):
    return msgpack.unpackb(b, raw=False, strict_map_key=False, use_list=True)


ints = st.one_of(st.integers(-2**63, 2**64 - 1),
                 st.sampled_from([0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
                                  -1, -32, -33, -128, -129, -32768, -32769, -2**31, -2**31 - 1, -2**63]))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=False),
                    st.text(max_size=40), st.binary(max_size=40),
                    st.sampled_from(["x" * 31, "x" * 32, "é" * 200, "y" * 70000, b"z" * 300, b"w" * 70000]))
objects = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=20), st.lists(kids, max_size=3).map(tuple),
    st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-5, 5)), kids, max_size=20)), max_leaves=60)


def _same(a, b):
    """Equal, with NaN equal to itself and the types of ints/floats/bools the same."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=200, deadline=None, derandomize=True)
@given(objects)
def test_pack_gives_msgpacks_bytes_and_unpack_its_objects(o):
    b = _packb(o)
    assert _codec.pack(o) == b
    assert _same(_codec.unpack(b), _unpackb(b))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(st.binary(max_size=64), objects.map(_packb).flatmap(
    lambda b: st.tuples(st.integers(0, len(b)), st.binary(max_size=3)).map(lambda cut: b[:cut[0]] + cut[1]))))
def test_unpack_of_any_bytes_agrees_or_defers_to_msgpack(frame):
    """Random and damaged frames: the same object as msgpack, or Unsupported
    (then msgpack decides, errors included); never a different answer."""
    try:
        want = _unpackb(frame)
    except Exception:
        want = Exception
    try:
        got = _codec.unpack(frame)
    except _codec.Unsupported:
        return
    assert want is not Exception, f"msgpack refuses {frame!r}, the codec decoded {got!r}"
    assert _same(got, want)


class _Odd:
    pass


@pytest.mark.parametrize("o", [2**64, -2**63 - 1, bytearray(b"ab"), memoryview(b"ab"), _Odd(), "\udc80",
                               [_Odd()], {"k": {1, 2}}])
def test_what_it_does_not_handle_is_left_to_msgpack(o):
    with pytest.raises(_codec.Unsupported):
        _codec.pack(o)


def test_deep_nesting_and_ext_types_are_left_to_msgpack():
    deep = []
    for _ in range(600):
        deep = [deep]
    with pytest.raises(_codec.Unsupported):
        _codec.pack(deep)
    with pytest.raises(_codec.Unsupported):
        _codec.unpack(_packb(deep))
    with pytest.raises(_codec.Unsupported):
        _codec.unpack(_packb(msgpack.ExtType(1, b"x")))
    with pytest.raises(_codec.Unsupported):
        _codec.unpack(_packb([1]) + b"\x00")      # trailing data
    with pytest.raises(_codec.Unsupported):
        _codec.unpack(bytearray(_packb([1])))


def test_wire_uses_the_codec_on_the_compiled_backend_only():
    assert (wire._cpack is not None) == (_core.BACKEND == "c")


def test_wire_falls_back_to_msgpack_with_msgpacks_errors():
    odd = bytearray(b"ab")      # msgpack packs a bytearray as bin; the codec leaves it
    assert wire.pack_replies([[1, 0, odd]]) == _packb([wire.VERSION, [[1, 0, odd]]])
    with pytest.raises(TypeError):
        wire.pack_requests(1, 0, [[wire.LOCK, 1, _Odd()]])
    with pytest.raises(msgpack.ExtraData):
        wire.unpack_replies(_packb([wire.VERSION, []]) + b"\x01")
    assert wire.unpack_replies(_packb([wire.VERSION, [[3, 0, [b"t", "s"]]]])) == [[3, 0, [b"t", "s"]]]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(objects, st.integers(0, 20), st.integers(0, 20), st.integers(0, 40))
def test_limits_defer_to_msgpack_as_its_max_lens_would(o, max_array, max_map, max_str):
    """With msgpack's max_*_len limits: the same object where msgpack accepts the
    frame, Unsupported (so msgpack raises its own error) where it refuses it."""
    b = _packb(o)
    try:
        want = msgpack.unpackb(b, raw=False, strict_map_key=False, use_list=True, max_array_len=max_array,
                               max_map_len=max_map, max_str_len=max_str, max_bin_len=max_str, max_ext_len=0)
    except ValueError:
        with pytest.raises(_codec.Unsupported):
            _codec.unpack(b, max_array, max_map, max_str)
        return
    assert _same(_codec.unpack(b, max_array, max_map, max_str), want)


def test_request_frames_decode_as_with_msgpack():
    reqs = [[wire.LOCK, 5, 77, ["db", "t", 1], 5, False, None, 0], [wire.RELEASE, 6, 77, True]]
    frame = wire.pack_requests(9, 5, reqs)
    assert wire.unpack_requests(frame) == (9, 5, reqs)
    assert wire._unpack_requests_msgpack(frame) == [wire.VERSION, 9, 5, reqs]
    big = _packb([wire.VERSION, 1, 0, [[wire.LOCK, 1, 1, ["x" * (wire.MAX_STR + 1)], 5, False, None, 0]]])
    with pytest.raises(wire.ProtocolError, match="exceeds max"):
        wire.unpack_requests(big)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(ints, ints, ints, ints, ints,
       st.one_of(st.lists(objects, max_size=20), st.lists(objects, max_size=20).map(tuple)))
def test_pack_request_gives_the_bytes_of_the_whole_frame(version, session, ack, typ, seq, args):
    b = _packb([version, session, ack, [[typ, seq, *args]]])
    assert _codec.pack_request(version, session, ack, typ, seq, args) == b
    assert wire.pack_request(session, ack, typ, seq, args) == wire.pack_requests(session, ack, [[typ, seq, *args]])


def test_pack_request_refuses_what_pack_refuses_and_wire_falls_back():
    with pytest.raises(_codec.Unsupported):
        _codec.pack_request(1, 2, 3, 4, 5, {"not": "a list"})
    with pytest.raises(_codec.Unsupported):
        _codec.pack_request(1, 2, 3, 4, 5, [2**64])          # msgpack's error, through wire
    # (wire then asks msgpack, which gives its own error for what no one can encode)
    with pytest.raises((OverflowError, TypeError, ValueError)):
        wire.pack_request(2, 3, 4, 5, [2**64])
    assert wire.pack_request(2, 3, 4, 5, (1, "a")) == _packb([wire.VERSION, 2, 3, [[4, 5, 1, "a"]]])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(objects, st.sampled_from([0, 1, 2, 127]))
def test_unpack_body_is_the_second_item_of_a_version_frame(body, version):
    frame = _packb([version, body])
    assert _same(_codec.unpack_body(frame, version), _unpackb(frame)[1])
    if version != 1:
        with pytest.raises(_codec.Unsupported):
            _codec.unpack_body(frame, 1)


@pytest.mark.parametrize("frame", [b"", b"\x92", _packb([1]), _packb([1, 2, 3]), _packb([True, []]), _packb({1: 2}),
                                   _packb([1, []]) + b"\x00", b"\x92\x01\xc1", _packb([128, []])])
def test_unpack_body_refuses_any_other_frame_and_wire_names_the_problem(frame):
    with pytest.raises(_codec.Unsupported):
        _codec.unpack_body(frame, 1)
    # wire decodes such a frame in full: the same answer or error as msgpack's path gives
    try:
        msg = _unpackb(frame)
    except Exception:
        msg = None
    if type(msg) is list and len(msg) == 2 and msg[0] == wire.VERSION:
        assert wire.unpack_replies(frame) == msg[1]
    else:
        with pytest.raises((wire.ProtocolError, ValueError)):     # (msgpack's errors are ValueErrors)
            wire.unpack_replies(frame)
