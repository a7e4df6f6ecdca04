"""Wire fuzzing kept as a test: Hypothesis-made frames, structured (valid msgpack
of the frame's shape with arbitrary requests) and raw (any bytes), against the
sans-IO shard core and one real shard. Nothing may escape as an exception, no
internal error may be counted, and a legitimate session's lock stays held.
The million-frame run is benchmarks/fuzz_wire.py (RESULTS.md)."""

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lockmgr import Mode
from lockmgr.service import wire
from lockmgr.service.cluster import LocalCluster
from lockmgr.service.shard.core import ShardCore
from lockmgr.service.shard.server import _unpack_requests

from helpers import RawSocket

KEY = "fuzz-cluster-key"
LEGIT = 0x5EED
ROW = ("db", "t", 1)

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
                    st.floats(allow_nan=True), st.text(max_size=12), st.binary(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4),
                                                                                           inner, max_size=3),
                      max_leaves=12)
msg_type = st.one_of(st.sampled_from(sorted(wire.TYPE_NAMES)), st.integers(min_value=-3, max_value=80))
request = st.one_of(st.builds(lambda t, s, a: [t, s] + a, msg_type, st.integers(min_value=-2, max_value=1 << 40),
                              st.lists(values, max_size=6)),
                    values)
structured = st.builds(lambda v, sid, ack, reqs: msgpack.packb([v, sid, ack, reqs], use_bin_type=True),
                       st.one_of(st.just(wire.VERSION), scalars),
                       st.one_of(st.just(0), st.just(LEGIT), st.integers(min_value=0, max_value=(1 << 64) - 1),
                                 scalars),
                       st.one_of(st.integers(min_value=0, max_value=1 << 20), scalars),
                       st.one_of(st.lists(request, max_size=6), values))
raw = st.binary(max_size=200)
frames = st.lists(st.one_of(structured, raw), min_size=1, max_size=8)


def _core_with_a_legit_lock():
    core = ShardCore(epoch=1, index=0, nshards=2, peer_sid=wire.peer_session(KEY),
                     peers=["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"], random_bytes=lambda n: b"\x01" * n)
    core.frame((b"legit",), LEGIT, 0, [[wire.HELLO, 1, 60000, "legit"], [wire.LOCK, 2, 7, list(ROW), 5, False,
                                                                         None, 0]], 100)
    reps = core.take_replies()[(b"legit",)]
    assert [r[1] for r in reps] == [wire.OK, wire.OK], reps
    return core


def _feed(core, data, prefix=(b"fuzzer",)):
    """What the server's loop does with one frame (server.Shard._on_frame), minus the socket."""
    core.now += 0.001
    try:
        sid, ack, reqs = _unpack_requests(data)
    except wire.ProtocolError as e:
        core.reply(prefix, [0, e.status, str(e)])
        return
    core.frame(prefix, sid, ack, reqs, 64)
    core.process_woken()
    while core.backlog:
        core.resume(64)
    core.fire_timers(64)
    core.peer_messages()
    core.take_replies()
    core.take_peer_messages()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames)
def test_sans_io_core_survives_fuzzed_frames(batch):
    core = _core_with_a_legit_lock()
    for data in batch:
        _feed(core, data)
    assert core.internal_errors == [], core.internal_errors
    assert core.table.mode_held(7, ROW) == Mode.X           # the legitimate lock is untouched
    sess = core._sessions[LEGIT]
    assert sess.prefix == (b"legit",)                        # and its session still bound to its connection


@pytest.mark.service
def test_a_real_shard_survives_fuzzed_frames(tmp_path):
    with LocalCluster(1, data_dir=str(tmp_path)) as cl, cl.connect() as c:
        t = c.begin()
        t.lock(ROW, Mode.X)
        sock = RawSocket(cl.endpoints[0])
        try:
            @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                             HealthCheck.function_scoped_fixture])
            @given(frames)
            def send(batch):
                for data in batch:
                    sock.send_raw(data)

            send()
            sock.send([[wire.STATS, 987654321]])
            rep = None
            for _ in range(10_000):                    # the fuzz frames' answers come first
                for r in sock.recv():
                    if r[0] == 987654321:
                        rep = r
                if rep is not None:
                    break
            assert rep is not None and rep[1] == wire.OK and rep[2]["internal_errors"] == 0, rep
        finally:
            sock.close()
        assert t.held()[ROW] == Mode.X                       # the legitimate lock is untouched
        t.lock(("db", "t", 2), Mode.X)                        # the session still works
        t.commit()
