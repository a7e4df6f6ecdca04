"""Notices pushed by a shard (wire.PUSH_SEQ; docs/protocol.md, "Notices"): the
core sends them once to the session's connection, uncached; the client engine
hands them to the handler registered for their kind, and reads them promptly
while someone wants them, even when no call is outstanding."""

import threading

import pytest

from lockmgr import Mode
from lockmgr.service import wire
from lockmgr.service.client.ops import _drive
from lockmgr.service.shard.core import ShardCore

from helpers import ScriptedShard, Waiter, shard_of, wait_until_waiting

NSHARDS = 2


def _hello(core, prefix=b"c1", sid=11):
    core.frame(prefix, sid, 1, [[wire.HELLO, 1, 10_000, "t"]], 100)
    core.take_replies()
    return core._sessions[sid]


def test_core_push_goes_to_the_sessions_connection_once_and_is_not_cached():
    core = ShardCore(epoch=1)
    sess = _hello(core)
    core.push(sess, [wire.N_TXN_LOST, 5, wire.E_DEADLOCK, "gone"])
    assert core.take_replies() == {b"c1": [[wire.PUSH_SEQ, wire.OK, [wire.N_TXN_LOST, 5, wire.E_DEADLOCK, "gone"]]]}
    assert core.take_replies() == {}
    assert wire.PUSH_SEQ not in sess.cache
    assert core.counters["pushes"] == 1


def test_core_push_to_an_ended_session_sends_nothing():
    core = ShardCore(epoch=1)
    sess = _hello(core)
    core.frame(b"c1", 11, 2, [[wire.CLOSE, 2]], 100)
    core.take_replies()
    core.push(sess, [wire.N_TXN_LOST, 5, wire.E_DEADLOCK, "gone"])
    assert core.take_replies() == {}
    assert core.counters["pushes"] == 0


# ------------------------------------------------------------ a live cluster

@pytest.fixture(scope="module")
def cluster_options():
    return {"shards": NSHARDS, "partition_depth": 2, "probe_delay": 0.01, "probe_interval": 0.05}


def _row(shard, tag):
    i = 0
    while True:
        p = ("db", f"push_{tag}_{i}")
        if shard_of(p, NSHARDS) == shard:
            return p + (1,)
        i += 1


def _raw_lock(core, s, path, mode):
    """A bare LOCK of ``core``'s transaction on shard ``s``: unlike Transaction.lock
    it does not release the transaction's other shards when refused (a deadlock
    victim's client would race the shards' VICTIM message with its own RELEASE)."""
    res, = yield [(s, wire.LOCK, [core.wid, list(path), int(mode), False, None, core.touched.get(s, 0)], None)]
    if isinstance(res, BaseException):
        raise res
    return res


def _deadlock_victim_holding_on_another_shard(client, tag):
    """t2 (the younger) holds b on shard 1 and waits for a on shard 0, closing a
    cycle with t1: the victim's shard 0 ends its wait, and shard 1, where t2 holds
    b without waiting, drops it and pushes N_TXN_LOST. (t2's wait is a bare LOCK,
    so only the shards release b: the notice is certain.)"""
    a, b = _row(0, tag + "a"), _row(1, tag + "b")
    t1, t2 = client.begin("t1"), client.begin("t2")
    t1.lock(a)
    t2.lock(b)
    g1 = Waiter(lambda: (t1.lock(b), t1.commit()))
    wait_until_waiting(client, t1, 5.0, poll=0.002)
    g2 = Waiter(lambda: _drive(client._eng, _raw_lock(t2._c, 0, a, Mode.X)))
    assert g2.outcome() == "DeadlockDetected"
    assert g1.outcome() == "ok"
    return t2


@pytest.mark.service
def test_a_victim_not_waiting_on_a_shard_is_pushed_to_its_client(cluster):
    client = cluster.connect(request_timeout=5.0)
    eng = client._eng
    got = []
    ev = threading.Event()

    def on_lost(shard, payload):
        got.append((shard, payload))
        ev.set()

    try:
        eng.on_push(wire.N_TXN_LOST, on_lost)
        eng.want_pushes(1)
        t2 = _deadlock_victim_holding_on_another_shard(client, "w")
        assert ev.wait(5.0), "no N_TXN_LOST notice within 5 s"
        (shard, payload), = got
        assert shard == 1
        assert payload[:3] == [wire.N_TXN_LOST, t2.id, wire.E_DEADLOCK]
        assert "deadlock victim" in payload[3]
        assert eng.pushes >= 1
    finally:
        client.close()


@pytest.mark.service
def test_a_notice_arriving_while_the_client_is_idle_is_read_without_a_call(cluster):
    """The notice comes after the victim's own call has returned: nothing is
    outstanding, so only the housekeeper's watch on the sockets can read it."""
    client = cluster.connect(request_timeout=5.0)
    eng = client._eng
    ev = threading.Event()
    try:
        eng.on_push(wire.N_TXN_LOST, lambda shard, payload: ev.set())
        eng.want_pushes(1)
        _deadlock_victim_holding_on_another_shard(client, "idle")
        # no call from here on: the notice must be read by the housekeeper
        assert ev.wait(5.0)
    finally:
        client.close()


@pytest.mark.service
def test_notices_of_unknown_kinds_and_without_a_handler_are_ignored(cluster):
    client = cluster.connect(request_timeout=5.0)
    eng = client._eng
    try:
        eng.want_pushes(1)
        _deadlock_victim_holding_on_another_shard(client, "nohandler")
        t = client.begin()
        t.lock(_row(0, "after"), Mode.X)        # the client goes on working
        t.commit()
        with eng._mu:
            eng._on_push(0, wire.OK, [99, "future kind"])
            eng._on_push(0, wire.OK, "not a list")
            eng._on_push(0, wire.E_INVALID, [wire.N_TXN_LOST])
        with pytest.raises(ValueError):
            eng.want_pushes(-2)
        assert eng._push_wanted == 1
    finally:
        client.close()


@pytest.mark.service
def test_a_failing_handler_is_logged_and_the_client_goes_on(cluster, caplog):
    client = cluster.connect(request_timeout=5.0)
    eng = client._eng
    ev = threading.Event()

    def bad(shard, payload):
        ev.set()
        raise RuntimeError("handler bug")

    try:
        eng.on_push(wire.N_TXN_LOST, bad)
        eng.want_pushes(1)
        _deadlock_victim_holding_on_another_shard(client, "bad")
        assert ev.wait(5.0)
        t = client.begin()
        t.lock(_row(1, "after_bad"), Mode.X)
        t.commit()
    finally:
        client.close()
    assert any("notice handler failed" in r.getMessage() for r in caplog.records)


# ------------------------------------------------ a scripted shard (no timing luck)

def _engine_with_fake_shard(want):
    from lockmgr.service.client.engine import _Engine
    fake = ScriptedShard()
    eng = fake.serve_hello(lambda: _Engine([fake.endpoint], 60.0, 2, 5.0, "push-test"))
    got = []
    ev = threading.Event()

    def handler(shard, payload):
        got.append(payload)
        ev.set()

    eng.on_push(wire.N_TXN_LOST, handler)
    if want:
        eng.want_pushes(1)
    return fake, eng, got, ev


@pytest.mark.parametrize("want", [True, False])
def test_a_notice_to_an_idle_client_is_read_at_once_only_while_wanted(want):
    """Nothing is outstanding: while notices are wanted the housekeeper reads one
    as it arrives; otherwise it waits for the next socket use (a heartbeat, at
    ttl/4 = 15 s here)."""
    fake, eng, got, ev = _engine_with_fake_shard(want)
    try:
        fake.send([[wire.PUSH_SEQ, wire.OK, [wire.N_TXN_LOST, 3, wire.E_DEADLOCK, "idle"]]])
        assert ev.wait(2.0) is want
        if want:
            assert got == [[wire.N_TXN_LOST, 3, wire.E_DEADLOCK, "idle"]]
    finally:
        eng.shutdown()
        fake.close()


def test_a_notice_behind_an_answer_is_read_when_the_caller_lets_go():
    """The answer and a notice arrive back to back: the caller takes its answer and
    leaves; the notice is read then (the owner drains before letting go) or by the
    housekeeper, never left in the socket."""
    fake, eng, got, ev = _engine_with_fake_shard(True)
    try:
        for k in range(20):
            ev.clear()
            th = threading.Thread(target=lambda: eng.call_many([(0, wire.HEARTBEAT, [], 0)]))
            th.start()
            (typ, seq), = fake.recv()
            assert typ == wire.HEARTBEAT
            fake.send([[seq, wire.OK, [7]]])
            fake.send([[wire.PUSH_SEQ, wire.OK, [wire.N_TXN_LOST, k, wire.E_DEADLOCK, "behind"]]])
            th.join(5.0)
            assert ev.wait(2.0), f"notice {k} was not read"
        assert [p[1] for p in got] == list(range(20))
    finally:
        eng.shutdown()
        fake.close()
