"""Regression tests for the safety bugs found from outside (lease clock under
load, forged requests on another session, decisions made by someone else,
bad FAULTS, an unkillable busy shard, error replies that echo their input).

Attacks come from raw DEALER sockets speaking the wire format; what the user
sees is checked through the clients."""

import asyncio
import os
import signal
import threading
import time

import msgpack
import pytest
import zmq

import lockmgr
from lockmgr import LocalCluster, LockError, Mode, TransactionAborted
from lockmgr.errors import TransactionCommitted
from lockmgr.service import wire
from lockmgr.service.admin import request as send_admin
from lockmgr.service.shard.server import Shard
from lockmgr.service.shard.timers import TimerKind

from helpers import RawSocket, slow_frame

X = int(Mode.X)


@pytest.fixture(scope="module")
def one():
    with LocalCluster(1, partition_depth=2) as c:
        yield c


@pytest.fixture
def raw(one):
    r = RawSocket(one.endpoints[0])
    yield r
    r.close()


def row(i):
    return ("db", "safety", i)


# ------------------------------------------------------------ 1. lease clock

class _StepClock:
    """A clock for an in-process shard: fixed at ``now``; once ``ticking``, each
    read is one second later than the one before (a shard so slow that time
    passes between any two steps)."""

    def __init__(self, now):
        self.now = now
        self.ticking = False

    def __call__(self):
        if self.ticking:
            self.now += 1.0
        return self.now


def _serve_until_answered(shard, r, n=1):
    reps = []
    for _ in range(500):
        shard.run_once(10)
        while r.s.poll(0):
            reps.extend(r.recv())
        if len(reps) >= n:
            return reps
    raise AssertionError("no answer from the in-process shard")


def test_each_frame_renews_its_lease_from_when_it_is_handled(tmp_path):
    """Two heartbeats queued one behind the other: the second is handled later, so
    its session's lease must run from that later time (it may have been sent after
    the first was handled), not from the time the drain began."""
    clock = _StepClock(1000.0)
    shard = Shard("tcp://127.0.0.1:0", str(tmp_path), clock=clock)
    r = RawSocket(shard.endpoint)
    try:
        for sid in (71, 72):
            r.session = sid
            r.send([[wire.HELLO, 1, 60_000, "v"]])
            assert _serve_until_answered(shard, r)[0][1] == wire.OK
        s1, s2 = shard.core._sessions[71], shard.core._sessions[72]
        r.session = 71
        r.send([[wire.HEARTBEAT, 2]])
        r.session = 72
        r.send([[wire.HEARTBEAT, 2]])
        time.sleep(0.2)                 # both frames reach the shard's queue (nothing to wait on)
        clock.ticking = True
        assert [rep[1] for rep in _serve_until_answered(shard, r, 2)] == [wire.OK, wire.OK]
        assert s2.expires > s1.expires, "both leases renewed from the drain's start"
    finally:
        r.close()
        shard.close()


def _slow_frame():
    # about 1 MiB of empty arrays in requests that are refused once decoded: each
    # costs the shard a fraction of a second
    return msgpack.packb([wire.VERSION, 0, 0, [[[]] * 65536 for _ in range(16)]])


@pytest.mark.slow
def test_holder_knows_its_lease_is_gone_before_anyone_else_gets_its_lock():
    """V (2 s TTL) holds X; W waits for it; 24 connections flood the shard with
    frames that are slow to refuse, so V's heartbeats (fair-queued behind one
    frame of each) are handled more than a TTL late and the shard expires V.
    When W is granted, V's client must already consider its session expired:
    the client always gives up first."""
    one = LocalCluster(1, partition_depth=2)     # its own: the flood keeps it busy for a while
    v = one.connect(session_ttl=2.0)
    w = one.connect(session_ttl=60.0)
    floods = [RawSocket(one.endpoints[0]) for _ in range(24)]
    try:
        tv = v.begin()
        tv.lock(row(1), Mode.X)
        got = {}
        granted = threading.Event()

        def waiter():
            tw = w.begin()
            try:
                got["token"] = tw.lock(row(1), Mode.X, timeout=60)
                got["at"] = time.monotonic()
                eng = v._eng
                got["v_lease_end"] = min(eng._lease_base) + eng.lease
                got["v_expired"] = v.expired
            except LockError as e:
                got["error"] = e
            granted.set()

        th = threading.Thread(target=waiter)
        th.start()
        frame = _slow_frame()
        for _ in range(3):
            for f in floods:
                f.s.send(frame)
        assert granted.wait(90), "W was never granted"
        th.join(10)
        assert "error" not in got, got.get("error")
        assert got["v_expired"], "W got V's lock while V's client still believed its lease"
        assert got["v_lease_end"] <= got["at"]
        with pytest.raises(lockmgr.SessionExpired):
            tv.lock(row(2), Mode.X)
    finally:
        for f in floods:
            f.close()
        one.stop()
        w.close()
        v.close()


# ----------------------------------------------------- 2. forged requests

def test_requests_on_another_sessions_id_are_refused_and_change_nothing(one):
    holder = one.connect()
    victim = one.connect()
    attacker = RawSocket(one.endpoints[0], session=victim.session_id)
    try:
        th = holder.begin()
        tok_holder = th.lock(row(10), Mode.X)
        tv = victim.begin()
        tv.lock(row(11), Mode.X)
        # forged LOCKs under the victim's session, seqs 1..2000: refused, cache untouched
        for base in range(1, 2001, 500):
            attacker.send([[wire.LOCK, seq, tv.id, list(row(12)), X, False, None, 0]
                           for seq in range(base, base + 500)])
        seen = 0
        while seen < 2000:
            for _seq, status, msg in attacker.recv():
                assert status == wire.E_UNKNOWN_SESSION, msg
                assert "bound to another connection" in msg
                seen += 1
        # an ack far ahead, and a RELEASE of the victim's transaction
        assert attacker.call([wire.HEARTBEAT, 3], ack=2 ** 62)[1] == wire.E_UNKNOWN_SESSION
        assert attacker.call([wire.RELEASE, 4, tv.id, False])[1] == wire.E_UNKNOWN_SESSION
        # a HELLO without the secret, or with a wrong one, does not take the session over
        assert attacker.call([wire.HELLO, 5, 10_000, "x"])[1] == wire.E_UNKNOWN_SESSION
        assert attacker.call([wire.HELLO, 6, 10_000, "x", 12345])[1] == wire.E_UNKNOWN_SESSION
        # the victim sees nothing of it: its locks, its next lock (really queued behind
        # the holder, not a cached forgery), held()
        assert tv.held()[row(11)] is Mode.X
        with pytest.raises(lockmgr.LockNotAvailable):
            tv.lock(row(10), Mode.X, nowait=True)
        tok = tv.lock(row(13), Mode.X)
        assert tok > tok_holder
        th.commit()
        assert tv.lock(row(10), Mode.X) > tok_holder
        tv.commit()
    finally:
        attacker.close()
        victim.close()
        holder.close()


def test_a_reconnected_client_rebinds_its_session_with_the_secret(one):
    a = RawSocket(one.endpoints[0], session=0x5151)
    b = RawSocket(one.endpoints[0], session=0x5151)
    try:
        rep = a.call([wire.HELLO, 1, 10_000, "a"])
        assert rep[1] == wire.OK and len(rep[2]) == 6
        secret = rep[2][4]
        assert rep[2][5] == 0                  # grace_left_ms: not a shard in a grace period
        assert a.call([wire.LOCK, 2, 99, list(row(20)), X, False, None, 0])[1] == wire.OK
        # b is another connection: refused until it shows the secret
        assert b.call([wire.HELD, 3, 99])[1] == wire.E_UNKNOWN_SESSION
        rep = b.call([wire.HELLO, 4, 10_000, "a", secret])
        assert rep[1] == wire.OK and rep[2][4] == secret
        held = b.call([wire.HELD, 5, 99])
        assert held[1] == wire.OK and [list(row(20)), X] in held[2]
        # now the old connection is the stranger
        assert a.call([wire.RELEASE, 6, 99, False])[1] == wire.E_UNKNOWN_SESSION
        assert b.call([wire.RELEASE, 7, 99, False])[1] == wire.OK
        assert b.call([wire.CLOSE, 8])[1] == wire.OK
    finally:
        a.close()
        b.close()


class FakeShard:
    """A ROUTER that answers HELLO and HEARTBEAT properly and every other request
    with ``payload`` (a malformed answer)."""

    def __init__(self, payload):
        self.ctx = zmq.Context()
        self.s = self.ctx.socket(zmq.ROUTER)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.bind("tcp://127.0.0.1:0")
        self.endpoint = self.s.getsockopt_string(zmq.LAST_ENDPOINT)
        self.payload = payload
        self.stop = threading.Event()
        self.th = threading.Thread(target=self.run, daemon=True)
        self.th.start()

    def run(self):
        while not self.stop.is_set():
            if not self.s.poll(20):
                continue
            ident, frame = self.s.recv_multipart()
            _, sid, ack, reqs = msgpack.unpackb(frame, raw=False)
            reps = []
            for typ, seq, *_args in reqs:
                if typ == wire.HELLO:
                    reps.append([seq, wire.OK, [1, 0, 1, 2, 4242]])
                elif typ == wire.HEARTBEAT:
                    reps.append([seq, wire.OK, [1]])
                elif typ == wire.CLOSE:
                    reps.append([seq, wire.OK, []])
                else:
                    reps.append([seq, wire.OK, self.payload])
            self.s.send_multipart([ident, wire.pack_replies(reps)])

    def close(self):
        self.stop.set()
        self.th.join(5)
        self.s.close(0)
        self.ctx.term()


@pytest.mark.parametrize("payload", [7, None, "x", ["x", 1, 2], [1, 2], {"a": 1}, [[1], 2, 3], [[[1], 9]]])
def test_a_malformed_answer_is_a_lock_error_never_a_type_error(payload):
    fake = FakeShard(payload)
    try:
        with lockmgr.connect(fake.endpoint, request_timeout=2.0) as c:
            t = c.begin(gtrid="g")
            for call in (lambda: t.lock(row(1), Mode.X), lambda: t.lock_many([(row(1), Mode.X)]), t.held,
                         c.snapshot, c.wait_for_graph, c.indoubt):
                with pytest.raises(LockError) as ei:
                    call()
                assert "malformed answer" in str(ei.value)
    finally:
        fake.close()


# -------------------------------------- 3. decisions made by someone else

@pytest.fixture(scope="module")
def two():
    with LocalCluster(2, partition_depth=2) as c:
        yield c


@pytest.mark.parametrize("asked_commit", [False, True])
def test_coordinator_learns_the_decision_another_client_made(two, asked_commit):
    coord = two.connect()
    stranger = two.connect()
    try:
        t = coord.begin(gtrid=f"sfty-{asked_commit}-{os.getpid()}")
        t.lock_many([(("db", "a", 1), Mode.X), (("db", "b", 2), Mode.X)])
        t.prepare()
        stranger.resolve(t.gtrid, not asked_commit)        # the other outcome
        if asked_commit:
            with pytest.raises(TransactionAborted, match="aborted by another resolver"):
                t.commit()
            assert t.state == "aborted"
        else:
            with pytest.raises(TransactionCommitted, match="committed by another resolver"):
                t.abort()
            assert t.state == "committed"
        assert t.gtrid not in coord.recover()
        # the same outcome again is still fine (idempotent) and says nothing
        stranger.resolve(t.gtrid, not asked_commit)
    finally:
        stranger.close()
        coord.close()


def test_aio_abort_reports_a_commit_made_elsewhere(two):
    gtrid = f"sfty-aio-{os.getpid()}"

    async def main():
        async with await lockmgr.aio.connect(two.endpoints) as c:
            t = c.begin(gtrid=gtrid)
            await t.lock(("db", "a", 7), Mode.X)
            await t.prepare()
            with two.connect() as stranger:
                stranger.resolve(gtrid, True)
            with pytest.raises(TransactionCommitted):
                await t.abort()
            assert t.state == "committed"

    asyncio.run(main())


def test_embedded_abort_reports_a_commit_by_resolve(tmp_path):
    with lockmgr.LockManager(data_dir=str(tmp_path)) as mgr:
        t = mgr.begin(gtrid="emb-1")
        t.lock(("db", "t", 1), Mode.X)
        t.prepare()
        mgr.resolve("emb-1", True)
        with pytest.raises(TransactionCommitted):
            t.abort()
        assert t.state == "committed"
        t2 = mgr.begin(gtrid="emb-2")
        t2.lock(("db", "t", 2), Mode.X)
        t2.prepare()
        mgr.resolve("emb-2", False)
        with pytest.raises(TransactionAborted, match="aborted by LockManager.resolve"):
            t2.commit()
        # the owner's own decision, then abort(): still the documented no-op
        t3 = mgr.begin(gtrid="emb-3")
        t3.lock(("db", "t", 3), Mode.X)
        t3.prepare()
        t3.abort()
        t3.abort()
        assert t3.state == "aborted"


# ------------------------------------------------ 4. FAULTS and timer errors

@pytest.mark.parametrize("plan", [{"drop_next": "x"}, {"drop_prob": 2}, {"delay_ms": -1}, {"types": [999]},
                                  {"seed": "s"}, {"bogus": 1}, [1, 2]])
def test_bad_faults_are_refused_and_the_shard_lives(two, plan):
    ep = two.endpoints[0]
    before = send_admin(ep, wire.FAULTS, [{}], key=two.cluster_key)
    assert before == {}
    with pytest.raises(lockmgr.InvalidRequest, match="FAULTS"):
        send_admin(ep, wire.FAULTS, [plan], key=two.cluster_key)
    # a cross-shard wait makes the probe timers run; the shard must keep answering
    with two.connect() as c:
        a, b = c.begin(), c.begin()
        a.lock(("db", "a", 100), Mode.X)
        b.lock(("db", "b", 100), Mode.X)
        with pytest.raises(lockmgr.LockTimeout):
            a.lock(("db", "b", 100), Mode.X, timeout=0.05)
        a.abort()
        b.abort()
    assert send_admin(ep, wire.PING, [])[1] == 0


def test_a_failing_timer_is_counted_not_fatal(tmp_path):
    shard = Shard("tcp://127.0.0.1:0", str(tmp_path), clock=_StepClock(50.0))
    try:
        def boom():
            raise RuntimeError("probe timer bug")
        shard.core.probes.on_timer = boom
        shard.core.add_timer(49.0, TimerKind.PROBE, None)
        shard.run_once(0)
        assert shard.counters["internal_errors"] == 1
        r = RawSocket(shard.endpoint)
        try:
            r.send([[wire.PING, 1]])
            assert _serve_until_answered(shard, r)[0][1] == wire.OK
        finally:
            r.close()
    finally:
        shard.close()


# --------------------------------------- 5. a busy shard still stops on SIGTERM

@pytest.mark.slow
def test_a_shard_busy_with_huge_frames_stops_on_sigterm():
    """Thirty 4 MiB frames queued (some 10-30 s of decoding): SIGTERM is honoured
    within a few turns, not after the shard has worked through all of them."""
    c = LocalCluster(1, partition_depth=2)
    r = None
    try:
        r = RawSocket(c.endpoints[0])
        assert r.call([wire.PING, 1])[1] == wire.OK
        frame = slow_frame()
        for _ in range(30):
            r.s.send(frame)
        time.sleep(1.0)            # the shard is well into them
        proc = c._procs[0]
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=8)       # raises if the shard first works through every frame
        assert time.monotonic() - t0 < 8
    finally:
        if r is not None:
            r.close()
        c.stop()


# ------------------------------------------ 6. errors never echo a huge input

def test_an_error_quotes_a_prefix_and_the_size(one, raw):
    rep = raw.call([wire.PING, 1])
    assert rep[1] == wire.OK
    big = [[]] * 60000
    rep = raw.call([wire.DECIDE, 3, big, True])          # needs a session: refused cheaply
    assert rep[1] != wire.OK and len(rep[2]) < 2000
    r2 = RawSocket(one.endpoints[0], session=0x999)
    try:
        assert r2.call([wire.HELLO, 1, 10_000, "e"])[1] == wire.OK
        rep = r2.call([wire.LOCK, 2, big, list(row(1)), X, False, None, 0])
        assert rep[1] == wire.E_INVALID and "(60000 elements)" in rep[2] and len(rep[2]) < 500
        rep = r2.call([wire.DECIDE, 3, "x" * 60000, True])
        assert rep[1] == wire.E_INVALID and "(60000 characters)" in rep[2] and len(rep[2]) < 500
        # over msgpack's limits: refused before the rest is decoded
        r2.s.send(msgpack.packb([wire.VERSION, 0x999, 0, [[wire.PING, 4, list(range(70000))]]]))
        (rep,) = r2.recv()
        assert rep[1] == wire.E_TOO_BIG and "max_array_len" in rep[2]
        r2.s.send(b"\x94\x01\x00\x00" + b"\x91" * 5000 + b"\x90")
        (rep,) = r2.recv()
        assert rep[1] == wire.E_TOO_BIG and "deeper" in rep[2]
        assert r2.call([wire.CLOSE, 5])[1] == wire.OK
    finally:
        r2.close()
