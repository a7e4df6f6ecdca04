"""The shard's protocol: garbage frames, limits, retries answered once,
stale requests, leases. Raw DEALER sockets speak the wire format directly."""

import time

import msgpack
import pytest
import zmq

from lockmgr import Mode
from lockmgr.service import wire

from helpers import RawSocket

X, S = int(Mode.X), int(Mode.S)

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def cluster_options():
    return {"shards": 1, "partition_depth": 2}


@pytest.fixture
def raw(cluster):
    r = RawSocket(cluster.endpoints[0])
    yield r
    r.close()


def stats(cluster):
    r = RawSocket(cluster.endpoints[0])
    try:
        st = r.call([wire.STATS, 1])[2]
        st["_snapshot"] = r.call([wire.SNAPSHOT, 2])[2]
        return st
    finally:
        r.close()


def table_state(st):
    return {k: st[k] for k in ("requests", "resources", "transactions", "last_token", "granted")}, st["_snapshot"]


def hello(r, session, ttl_ms=10_000, seq=1):
    r.session = session
    rep = r.call([wire.HELLO, seq, ttl_ms, "test"])
    assert rep[1] == wire.OK, rep
    return rep[2]


GARBAGE = [
    ((b"\xc1\xc1\xc1",), wire.E_PROTOCOL, "not valid msgpack"),
    ((msgpack.packb({"a": 1}),), wire.E_PROTOCOL, "frame must be a msgpack array"),
    ((msgpack.packb([99, 0, 0, []]),), wire.E_PROTOCOL, "unsupported protocol version"),
    ((msgpack.packb([1, -5, 0, []]),), wire.E_PROTOCOL, "session"),
    ((msgpack.packb([1, 0, 0, "x"]),), wire.E_PROTOCOL, "requests must be an array"),
    ((msgpack.packb([1, 0, 0, ["junk"]]),), wire.E_PROTOCOL, "[type, seq, *args]"),
    ((msgpack.packb([1, 0, 0, [[999, 1]]]),), wire.E_UNKNOWN_TYPE, "unknown message type 999"),
    # (a LocalCluster's shards have a cluster key: a peer message without it is refused first;
    # the arity check on a keyed one: tests/test_service_probes.py)
    ((msgpack.packb([1, 0, 0, [[wire.PROBE, 1]]]),), wire.E_PROTOCOL, "must carry the cluster key"),
    ((msgpack.packb([1, 0, 0, [[wire.LOCK, 1, 1, ["a"], X, False, None, 0]]]),), wire.E_UNKNOWN_SESSION,
     "needs a session"),
    ((msgpack.packb([1, 12345, 0, [[wire.LOCK, 1, 1, ["a"], X, False, None, 0]]]),), wire.E_UNKNOWN_SESSION,
     "unknown session"),
    ((b"x" * (wire.MAX_FRAME + 10),), wire.E_TOO_BIG, "exceeds the limit"),
    ((b"a", b"b", b"c"), wire.E_PROTOCOL, "expected one message part"),
]


@pytest.mark.parametrize("parts,status,text", GARBAGE)
def test_garbage_frames_get_a_named_error_and_change_nothing(cluster, raw, parts, status, text):
    before = table_state(stats(cluster))
    raw.send_raw(*parts)
    reps = raw.recv()
    assert reps[0][1] == status, reps
    assert text in reps[0][2]
    assert table_state(stats(cluster)) == before
    assert raw.call([wire.PING, 7])[1] == wire.OK        # still serving


BAD_REQUESTS = [
    ([wire.LOCK, 5, 1, ["a"], X], wire.E_PROTOCOL, "LOCK takes"),
    ([wire.LOCK, 5, 0, ["a"], X, False, None, 0], wire.E_INVALID, "transaction id"),
    ([wire.LOCK, 5, 1, ["a"], 9, False, None, 0], wire.E_INVALID, "mode"),
    ([wire.LOCK, 5, 1, ["a"], 0, False, None, 0], wire.E_INVALID, "mode"),
    ([wire.LOCK, 5, 1, list(range(40)), X, False, None, 0], wire.E_TOO_BIG, "components"),
    ([wire.LOCK, 5, 1, ["a", 1.5], X, False, None, 0], wire.E_INVALID, "component 1"),
    ([wire.LOCK, 5, 1, ["x" * 5000], X, False, None, 0], wire.E_INVALID, "bytes long"),
    ([wire.LOCK, 5, 1, {"a": 1}, X, False, None, 0], wire.E_INVALID, "resource must be"),
    ([wire.LOCK, 5, 1, ["a"], X, False, -3, 0], wire.E_INVALID, "timeout_ms"),
    ([wire.LOCK_MANY, 5, 1, [[["a"], X]] * (wire.MAX_BATCH + 1), False, None, 0], wire.E_TOO_BIG, "at most"),
    ([wire.LOCK_MANY, 5, 1, [[["a"], X], [["b"], 77]], False, None, 0], wire.E_INVALID, "mode"),
    ([wire.LOCK_MANY, 5, 1, [[["a"], X], "junk"], False, None, 0], wire.E_PROTOCOL, "item 1 must be"),
    ([wire.LOCK_MANY, 5, 1, [[["a"], X], b"\x01\x02"], False, None, 0], wire.E_PROTOCOL, "item 1 must be"),
    ([wire.LOCK_MANY, 5, 1, [[["a"], X], {"a": 1, "b": 2}], False, None, 0], wire.E_PROTOCOL, "item 1 must be"),
    ([wire.LOCK_MANY, 5, 1, [[["a"], X], [list(range(40)), X]], False, None, 0], wire.E_TOO_BIG, "components"),
    ([wire.LOCK_MANY, 5, 1, [[["a"], X], [["a", 1.5], X]], False, None, 0], wire.E_INVALID, "component 1"),
    ([wire.LOCK_MANY, 5, 1, [[["a"], X], [{"a": 1}, X]], False, None, 0], wire.E_INVALID, "resource must be"),
    ([wire.LOCK_MANY, 5, 1, [[["a"], X], [["b"], True]], False, None, 0], wire.E_INVALID, "mode"),
    ([wire.LOCK_MANY, 5, 1, [[["a"], X]], False, -3, 0], wire.E_INVALID, "timeout_ms"),
    ([wire.LOCK_MANY, 5, 1, [[["a"], X], "junk"], False, -3, 0], wire.E_PROTOCOL, "item 1 must be"),
    ([wire.LOCK_MANY, 5, 1, "x", False, None, 0], wire.E_PROTOCOL, "must be an array"),
    ([wire.UNLOCK, 5, 424242, ["a"], False], wire.E_INVALID, "does not hold"),
    ([wire.HELD, 5], wire.E_PROTOCOL, "HELD takes"),
    ([wire.DOWNGRADE, 5, 424242, ["a"]], wire.E_PROTOCOL, "DOWNGRADE takes"),
    ([wire.DOWNGRADE, 5, 424242, ["a"], 1], wire.E_INVALID, "does not hold"),
    ([wire.DOWNGRADE, 5, 424242, ["a"], 9], wire.E_INVALID, "does not hold"),
    ([wire.DOWNGRADE, 5, "x", ["a"], 1], wire.E_INVALID, "transaction id"),
    ([wire.RELEASE, 5, "x", True], wire.E_INVALID, "transaction id"),
]


@pytest.mark.parametrize("req,status,text", BAD_REQUESTS)
def test_bad_requests_in_a_session(cluster, raw, req, status, text):
    hello(raw, 0xBAD0 + BAD_REQUESTS.index((req, status, text)))
    before = table_state(stats(cluster))
    rep = raw.call(req)
    assert rep[1] == status and text in rep[2], rep
    assert table_state(stats(cluster)) == before
    # the same session still works
    ok = raw.call([wire.LOCK, 6, 77, ["ok", 1], X, False, None, 0])
    assert ok[1] == wire.OK
    assert raw.call([wire.RELEASE, 8, 77, True])[1] == wire.OK


def test_retry_is_answered_once(cluster, raw):
    hello(raw, 0xA1)
    before = stats(cluster)
    frame = wire.pack_requests(0xA1, 0, [[wire.LOCK, 2, 501, ["db", "t", 1], X, False, None, 0]])
    raw.send_raw(frame)
    first = raw.recv()
    raw.send_raw(frame)                      # the same (session, seq): a retry
    again = raw.recv()
    assert first == again and first[0][1] == wire.OK
    after = stats(cluster)
    assert after["granted"] - before["granted"] == 3          # db, (db,t), row: once
    assert after["retries_answered"] - before.get("retries_answered", 0) == 1
    rows = [r for r in after["_snapshot"] if r[1] == 501]
    assert len(rows) == 3
    assert raw.call([wire.RELEASE, 3, 501, True])[1] == wire.OK
    # a late retry after release still answers the first reply and takes nothing
    raw.send_raw(frame)
    assert raw.recv() == first
    assert not [r for r in stats(cluster)["_snapshot"] if r[1] == 501]


def test_retry_of_a_waiting_request_queues_once(cluster, raw):
    other = RawSocket(cluster.endpoints[0])
    try:
        hello(other, 0xB2)
        assert other.call([wire.LOCK, 2, 601, ["w"], X, False, None, 0])[1] == wire.OK
        hello(raw, 0xB1)
        frame = wire.pack_requests(0xB1, 0, [[wire.LOCK, 2, 602, ["w"], X, False, None, 0]])
        raw.send_raw(frame)
        raw.send_raw(frame)
        assert raw.nothing()                                  # parked, not answered
        waiting = [r for r in stats(cluster)["_snapshot"] if r[1] == 602]
        assert len(waiting) == 1 and waiting[0][3] is False
        assert other.call([wire.RELEASE, 3, 601, True])[1] == wire.OK
        reps = raw.recv()
        assert len(reps) == 1 and reps[0][1] == wire.OK       # one grant, one reply
        assert raw.nothing()
        assert raw.call([wire.RELEASE, 3, 602, True])[1] == wire.OK
    finally:
        other.close()


def _rows(cluster, txn):
    return sorted((tuple(r[0]), r[2], r[3]) for r in stats(cluster)["_snapshot"] if r[1] == txn)


def test_lock_many_waits_in_the_middle_and_finishes_when_woken(cluster, raw):
    other = RawSocket(cluster.endpoints[0])
    try:
        hello(other, 0x1E2)
        assert other.call([wire.LOCK, 2, 9901, ["m", 3], X, False, None, 0])[1] == wire.OK
        hello(raw, 0x1E1)
        items = [[["m", i], X] for i in (1, 2, 3, 4)]
        raw.send([[wire.LOCK_MANY, 2, 9902, items, False, None, 0]])
        assert raw.nothing()                                  # parked at item 2
        assert _rows(cluster, 9902) == [(("m",), int(Mode.IX), True), (("m", 1), X, True),
                                     (("m", 2), X, True), (("m", 3), X, False)]
        assert other.call([wire.RELEASE, 3, 9901, True])[1] == wire.OK
        rep = raw.recv()[0]
        assert rep[1] == wire.OK and len(rep[2][0]) == 4 and rep[2][0] == sorted(rep[2][0])
        assert len(_rows(cluster, 9902)) == 5
        # nowait: a conflict at item 1 answers NOT_AVAILABLE; item 0 stays held
        assert other.call([wire.LOCK, 4, 9903, ["m", 7], S, False, None, 0])[1] == wire.OK
        rep = raw.call([wire.LOCK_MANY, 3, 9904, [[["m", 6], X], [["m", 7], X], [["m", 8], X]], True, None, 0])
        assert rep[1] == wire.E_NOT_AVAILABLE, rep
        assert "('m', 7)" in rep[2] and "item 1 of the batch; the 1 before it are held" in rep[2]
        assert _rows(cluster, 9904) == [(("m",), int(Mode.IX), True), (("m", 6), X, True)]
        # a batch with a bad item changes nothing, even for a known transaction
        rep = raw.call([wire.LOCK_MANY, 5, 9904, [[["m", 9], X], [["m", None], X]], False, None, 0])
        assert rep[1] == wire.E_INVALID and "component 1" in rep[2]
        assert _rows(cluster, 9904) == [(("m",), int(Mode.IX), True), (("m", 6), X, True)]
        for seq, txn in ((6, 9902), (7, 9904)):
            assert raw.call([wire.RELEASE, seq, txn, True])[1] == wire.OK
        assert other.call([wire.RELEASE, 5, 9903, True])[1] == wire.OK
    finally:
        other.close()


def test_lock_many_on_a_prepared_txn_is_refused(cluster, raw):
    hello(raw, 0x1F1)
    assert raw.call([wire.LOCK_MANY, 2, 9911, [[["pm", 1], X]], False, None, 0])[1] == wire.OK
    epoch = stats(cluster)["epoch"] if "epoch" in stats(cluster) else raw.call([wire.HEARTBEAT, 3])[2][0]
    rep = raw.call([wire.PREPARE, 4, 9911, "perf2-pm", epoch, [0]])
    assert rep[1] == wire.OK, rep
    before = _rows(cluster, 9911)
    for k, items in enumerate(([[["pm", 2], X]], [[["pm", 2], X], ["bad"]])):
        rep = raw.call([wire.LOCK_MANY, 5 + k, 9911, items, False, None, 0])
        assert rep[1] == (wire.E_INVALID, wire.E_PROTOCOL)[k] and ("prepared", "item 1")[k] in rep[2], rep
    assert _rows(cluster, 9911) == before
    assert raw.call([wire.RELEASE, 8, 9911, False])[1] == wire.OK     # abort the prepared txn
    assert _rows(cluster, 9911) == []


def test_acknowledged_seq_is_stale(cluster, raw):
    hello(raw, 0xC1)
    raw.send([[wire.HEARTBEAT, 10]], ack=10)
    assert raw.recv()[0][1] == wire.OK
    raw.send([[wire.LOCK, 3, 701, ["s"], X, False, None, 0]], ack=10)   # seq 3 < ack 10 and not cached
    rep = raw.recv()[0]
    assert rep[1] == wire.E_STALE and "acknowledged" in rep[2]
    assert not [r for r in stats(cluster)["_snapshot"] if r[1] == 701]


def test_downgrade_undoes_a_conversion_and_refuses_what_it_cannot(cluster, raw):
    hello(raw, 0xD6)
    assert raw.call([wire.LOCK, 2, 811, ["dg"], wire_mode("IS"), False, None, 0])[2][1] == 0   # prev: none
    assert raw.call([wire.LOCK, 3, 811, ["dg"], S, False, None, 0])[2][1] == wire_mode("IS")  # prev: IS
    for req, text in [([wire.DOWNGRADE, 4, 811, ["dg"], X], "weaker mode"),
                      ([wire.DOWNGRADE, 5, 811, ["dg"], 0], "mode"),
                      ([wire.DOWNGRADE, 6, 811, ["nope"], 1], "does not hold")]:
        rep = raw.call(req)
        assert rep[1] == wire.E_INVALID and text in rep[2], rep
    assert raw.call([wire.HELD, 7, 811])[2] == [[["dg"], S]]
    assert raw.call([wire.DOWNGRADE, 8, 811, ["dg"], wire_mode("IS")]) == [8, wire.OK, []]
    assert raw.call([wire.HELD, 9, 811])[2] == [[["dg"], wire_mode("IS")]]
    assert raw.call([wire.RELEASE, 10, 811, True])[1] == wire.OK


def wire_mode(name):
    return int(Mode[name])


def test_txn_of_another_session_is_refused(cluster, raw):
    other = RawSocket(cluster.endpoints[0])
    try:
        hello(other, 0xD2)
        assert other.call([wire.LOCK, 2, 801, ["o"], X, False, None, 0])[1] == wire.OK
        hello(raw, 0xD1)
        rep = raw.call([wire.RELEASE, 2, 801, True])
        assert rep[1] == wire.E_INVALID and "another session" in rep[2]
        rep = raw.call([wire.HELD, 3, 801])
        assert rep[1] == wire.E_INVALID and "another session" in rep[2]
        assert [r for r in stats(cluster)["_snapshot"] if r[1] == 801]
        assert other.call([wire.HELD, 3, 801]) == [3, wire.OK, [[["o"], X]]]
        other.call([wire.RELEASE, 4, 801, True])
    finally:
        other.close()


def test_lease_expiry_releases_locks_and_is_remembered(cluster, raw):
    hello(raw, 0xE1, ttl_ms=200)
    assert raw.call([wire.LOCK, 2, 901, ["lease"], X, False, None, 0])[1] == wire.OK
    other = RawSocket(cluster.endpoints[0])
    try:
        hello(other, 0xE2)
        t0 = time.monotonic()
        rep = other.call([wire.LOCK, 2, 902, ["lease"], X, False, 10_000, 0], timeout=10)
        assert rep[1] == wire.OK                      # granted once 0xE1's lease ran out
        assert 0.15 < time.monotonic() - t0 < 5
        rep = raw.call([wire.HEARTBEAT, 3])
        assert rep[1] == wire.E_SESSION_EXPIRED and "expired" in rep[2]
        rep = raw.call([wire.HELLO, 4, 1000, "again"])      # an expired session stays expired
        assert rep[1] == wire.E_SESSION_EXPIRED
        other.call([wire.RELEASE, 3, 902, True])
    finally:
        other.close()


def test_req_socket_envelope(cluster):
    ctx = zmq.Context()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(cluster.endpoints[0])
    try:
        s.send(wire.pack_requests(0, 0, [[wire.PING, 1]]))
        assert s.poll(5000)
        rep = wire.unpack_replies(s.recv())
        assert rep[0][1] == wire.OK and rep[0][2][2] == 1     # nshards
    finally:
        s.close(0)
        ctx.term()


def test_tombstones_per_session_stay_bounded(tmp_path):
    """RELEASEs of transactions a session never started (a client committing
    everywhere, retries after a restart) tombstone them; a session keeps only
    the latest MAX_TOMBSTONES, however many it sends."""
    import threading

    from lockmgr.service.shard.core import MAX_TOMBSTONES
    from lockmgr.service.shard.server import Shard
    sh = Shard("tcp://127.0.0.1:0", str(tmp_path))
    th = threading.Thread(target=sh.serve_forever, daemon=True)
    th.start()
    r = RawSocket(sh.endpoint)
    try:
        hello(r, 0xAB)
        n = MAX_TOMBSTONES + 500
        seq = 2
        for base in range(0, n, 500):
            r.send([[wire.RELEASE, seq + k, 10_000 + base + k, True] for k in range(500)])
            got = 0
            while got < 500:
                got += len(r.recv())
            seq += 500
        # a late LOCK of a recently released id is refused; the session is healthy
        rep = r.call([wire.LOCK, seq, 10_000 + n - 1, ["t"], X, False, None, 0])
        assert rep[1] == wire.E_ABORTED
        assert r.call([wire.LOCK, seq + 1, 5, ["t"], X, False, None, 0])[1] == wire.OK
    finally:
        r.close()
        sh.stop()
        th.join(5)
        assert not th.is_alive()
        sess = sh.core._sessions[0xAB]
        sh.close()
    assert len(sess.tombs) == len(sess.tomb_order) == MAX_TOMBSTONES


def test_loop_reads_first_and_sleeps_on_the_socket_only_when_nothing_waits(tmp_path):
    """The loop's reads and waits (Shard.run_once over zdirect.Conn): a turn
    whose read finds nothing sleeps on the socket's ZMQ_FD (edge-triggered); the
    next turn after such a read (``_idle``) sleeps without reading first, and a
    send since (a reply) clears ``_idle``, so that turn reads first. Frames that
    arrive while the loop sleeps (turns of up to a minute) are answered at once:
    a lost wake-up would leave them unanswered for the minute."""
    import threading

    from lockmgr.service.shard.server import Shard
    sh = Shard("tcp://127.0.0.1:0", str(tmp_path))
    r = RawSocket(sh.endpoint)
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            sh.run_once(60_000)

    th = None
    try:
        sh.run_once(0)
        assert sh._idle                       # nothing came: the read found nothing
        sh.core.reply((b"nobody",), [0, wire.OK, []])    # a send (dropped by the ROUTER: no such peer)
        sh._flush()
        assert not sh._idle
        sh.run_once(0)
        assert sh._idle
        th = threading.Thread(target=loop, daemon=True)
        th.start()
        hello(r, 0xAB)
        for seq in range(2, 12):
            assert r.call([wire.LOCK, seq, 7, ["t", seq], X, False, None, 0], timeout=30)[1] == wire.OK
        assert r.call([wire.RELEASE, 12, 7, True], timeout=30)[1] == wire.OK
    finally:
        stop.set()
        if th is not None:
            r.send([[wire.PING, 13]])       # (wakes the last turn)
            th.join(30)
            assert not th.is_alive()
        r.close()
        sh.close()
