"""Watches (issue 15): ``Client.watch`` sees every change of a node in order, or
a RESET saying some may have been missed; ``wait_free``; the shard side
(WATCH/UNWATCH, N_WATCH notices, quotas) on a bare ShardCore."""

import asyncio
import os
import signal
import threading
import time

import pytest

import lockmgr
from lockmgr import LocalCluster, Mode, QuotaExceeded
from lockmgr.service import wire
from lockmgr.service.client.watch import GRANTED, INITIAL, MODE, RELEASED, RESET, WAITERS
from lockmgr.service.shard.core import ShardCore
from lockmgr.service.shard.quotas import Quotas

from helpers import Waiter, shard_of, wait_until

# ------------------------------------------------------------ the shard core

def _hello(core, prefix=b"c1", sid=11):
    core.frame(prefix, sid, 1, [[wire.HELLO, 1, 10_000, "t"]], 100)
    core.take_replies()
    return core._sessions[sid]


def _call(core, req, prefix=b"c1", sid=11):
    core.frame(prefix, sid, req[1], [req], 100)
    core.process_woken()
    return core.take_replies().get(prefix, [])


def test_core_watch_pushes_each_state_change_with_consecutive_seqs():
    core = ShardCore(epoch=1)
    _hello(core)
    path = ["db", "t", 1]
    (rep,) = _call(core, [wire.WATCH, 2, path])
    assert rep[1] == wire.OK
    wid, seq, holders, nwait = rep[2]
    assert (seq, holders, nwait) == (0, [], 0)
    out = _call(core, [wire.LOCK, 3, 100, path, Mode.X, False, None, 0])
    assert out[0][0] == 3 and out[0][1] == wire.OK
    assert out[1] == [wire.PUSH_SEQ, wire.OK, [wire.N_WATCH, wid, 1, [[100, Mode.X]], 0]]
    out = _call(core, [wire.LOCK, 4, 101, path, Mode.S, False, None, 0])       # waits: no answer yet
    assert out == [[wire.PUSH_SEQ, wire.OK, [wire.N_WATCH, wid, 2, [[100, Mode.X]], 1]]]
    out = _call(core, [wire.RELEASE, 5, 100, True])
    notices = [r[2] for r in out if r[0] == wire.PUSH_SEQ]
    assert notices == [[wire.N_WATCH, wid, 3, [[101, Mode.S]], 0]]
    # an unchanged node pushes nothing; no watch, no notice
    assert [r for r in _call(core, [wire.HEARTBEAT, 6]) if r[0] == wire.PUSH_SEQ] == []
    assert _call(core, [wire.UNWATCH, 7, wid]) == [[7, wire.OK, []]]
    assert not core.watches.by_key and not core.has_replies
    out = _call(core, [wire.RELEASE, 8, 101, True])
    assert [r for r in out if r[0] == wire.PUSH_SEQ] == []
    (rep,) = _call(core, [wire.UNWATCH, 9, wid])
    assert rep[1] == wire.E_NO_WATCH


def test_core_watch_bad_input_and_quotas_change_nothing():
    core = ShardCore(epoch=1, quotas=Quotas(watches_per_session=2, watches=3))
    _hello(core)
    assert _call(core, [wire.WATCH, 2])[0][1] == wire.E_PROTOCOL
    assert _call(core, [wire.WATCH, 3, "db"])[0][1] == wire.E_INVALID
    assert _call(core, [wire.WATCH, 4, [1.5]])[0][1] == wire.E_INVALID
    assert _call(core, [wire.UNWATCH, 5, "x"])[0][1] == wire.E_PROTOCOL
    assert not core.watches.by_key
    assert _call(core, [wire.WATCH, 6, ["a"]])[0][1] == wire.OK
    assert _call(core, [wire.WATCH, 7, ["a"]])[0][1] == wire.OK
    rep = _call(core, [wire.WATCH, 8, ["b"]])[0]
    assert rep[1] == wire.E_QUOTA and "watches_per_session=2" in rep[2]
    _hello(core, b"c2", 12)
    assert _call(core, [wire.WATCH, 2, ["c"]], b"c2", 12)[0][1] == wire.OK
    rep = _call(core, [wire.WATCH, 3, ["d"]], b"c2", 12)[0]
    assert rep[1] == wire.E_QUOTA and "watches=3" in rep[2]
    # a session's end drops its watches
    _call(core, [wire.CLOSE, 9])
    assert set(core.watches.by_key) == {("c",)} and core.watches.count == 1


# ------------------------------------------------------------ a live cluster

@pytest.fixture(scope="module")
def cluster_options():
    return {"shards": 2, "partition_depth": 2}


def _row(shard, tag, n=1):
    i = 0
    while True:
        p = ("db", f"w_{tag}_{i}")
        if shard_of(p, 2) == shard:
            return p + (n,)
        i += 1


def _kinds(w, n, timeout=5.0):
    out = []
    for _ in range(n):
        ev = w.get(timeout)
        assert ev is not None, f"no event within {timeout}s after {out}"
        out.append(ev)
    return out


@pytest.mark.service
def test_watch_sees_every_change_in_order(cluster):
    a = cluster.connect(request_timeout=5.0)
    b = cluster.connect(request_timeout=5.0)
    row = _row(1, "order")
    try:
        with b.watch(row) as w:
            (ev,) = _kinds(w, 1)
            assert ev.kind == INITIAL and ev.holders == {} and ev.waiters == 0 and ev.shard == 1
            t1 = a.begin()
            t1.lock(row, Mode.S)
            t2 = a.begin()
            t2.lock(row, Mode.S)
            g = Waiter(lambda: (lambda t: (t.lock(row, Mode.X), t.commit()))(a.begin()))
            t1.commit()
            t2.commit()
            g.get()
            evs = _kinds(w, 7)
            kinds = [(e.kind, e.txn, e.mode) for e in evs]
            assert kinds[:2] == [(GRANTED, t1.id, Mode.S), (GRANTED, t2.id, Mode.S)]
            assert kinds[2][0] == WAITERS and evs[2].waiters == 1
            assert kinds[3] == (RELEASED, t1.id, Mode.S)
            assert kinds[4][:1] == (RELEASED,) and kinds[4][1] == t2.id
            assert kinds[5][0] == GRANTED and kinds[5][2] == Mode.X
            seqs = [e.seq for e in evs]
            assert seqs == sorted(seqs) and seqs[0] == 1
            assert evs[-1].kind in (WAITERS, RELEASED)
            assert w.resets == 0
        # closed: iteration ends
        with pytest.raises(StopIteration):
            next(w)
    finally:
        a.close()
        b.close()


@pytest.mark.service
def test_watch_mode_change_and_group_mode(cluster):
    a = cluster.connect(request_timeout=5.0)
    row = _row(0, "mode")
    try:
        with a.watch(row) as w:
            _kinds(w, 1)
            t = a.begin()
            t.lock(row, Mode.IS)
            t.lock(row, Mode.X)
            evs = _kinds(w, 2)
            assert [(e.kind, e.mode) for e in evs] == [(GRANTED, Mode.IS), (MODE, Mode.X)]
            assert evs[-1].group_mode == Mode.X
            t.commit()
            assert _kinds(w, 1)[0].group_mode == Mode.NL
    finally:
        a.close()


@pytest.mark.service
def test_wait_free_returns_when_the_mode_could_be_granted(cluster):
    a = cluster.connect(request_timeout=5.0)
    b = cluster.connect(request_timeout=5.0)
    row = _row(0, "free")
    try:
        assert b.wait_free(row, Mode.X, timeout=1.0) is True
        t = a.begin()
        t.lock(row, Mode.S)
        assert b.wait_free(row, Mode.S, timeout=1.0) is True       # compatible
        t0 = time.monotonic()
        assert b.wait_free(row, Mode.X, timeout=0.2) is False
        assert 0.15 < time.monotonic() - t0 < 2.0
        g = Waiter(lambda: b.wait_free(row, Mode.X, timeout=10))
        time.sleep(0.05)
        t.commit()
        assert g.get() is True
        # nothing was queued by wait_free: the shard never saw a lock of b
        with pytest.raises(lockmgr.InvalidRequest):
            b.wait_free(row, "Q")
        with pytest.raises(lockmgr.InvalidRequest):
            b.wait_free(row, Mode.X, timeout=-1)
    finally:
        a.close()
        b.close()


@pytest.mark.service
def test_a_lost_notice_is_a_reset():
    """A gap in the watch's numbers (a notice lost on the way) makes the client watch
    again: a RESET event with the state then."""
    with LocalCluster(1) as c:
        a = c.connect(request_timeout=5.0)
        b = c.connect(request_timeout=5.0)
        try:
            with b.watch(("db", "gap", 1)) as w:
                _kinds(w, 1)
                core = w._core
                with b._eng._mu:
                    core.seq[0] += 1           # as if notice 1 had been lost
                t = a.begin()
                t.lock(("db", "gap", 1), Mode.X)
                (ev,) = _kinds(w, 1)
                assert ev.kind == RESET and ev.holders == {t.id: Mode.X} and w.resets == 1
                t.commit()
                (ev,) = _kinds(w, 1)
                assert ev.kind == RELEASED and ev.seq == 1
        finally:
            a.close()
            b.close()


@pytest.mark.service
def test_watch_survives_a_shard_restart_and_a_lost_session(tmp_path):
    with LocalCluster(1, data_dir=str(tmp_path), grace=0.3) as c:
        a = None
        b = c.connect(request_timeout=0.3, session_ttl=0.6)
        try:
            with b.watch(("db", "rs", 1)) as w:
                _kinds(w, 1)
                c.restart(0)
                (ev,) = _kinds(w, 1, timeout=10)       # watched again on the new shard (or session)
                assert ev.kind == RESET
                a = c.connect(request_timeout=0.5, session_ttl=2.0)
                t = a.begin()
                t.lock(("db", "rs", 1), Mode.X, timeout=10)
                (ev,) = _kinds(w, 1)
                assert ev.kind == GRANTED and ev.txn == t.id
                t.commit()
                assert _kinds(w, 1)[0].kind == RELEASED
                # the session is lost (the shard stopped past the TTL): a new one, watched again
                os.kill(c.pids[0], signal.SIGSTOP)
                try:
                    time.sleep(1.0)
                finally:
                    os.kill(c.pids[0], signal.SIGCONT)
                ev = _kinds(w, 1, timeout=10)[0]
                assert ev.kind == RESET and b.renewals >= 1
        finally:
            if a is not None:
                a.close()
            b.close()


@pytest.mark.service
def test_quota_and_bad_resource(tmp_path):
    with LocalCluster(1, quotas="watches_per_session=1") as c:
        a = c.connect(request_timeout=5.0)
        try:
            with pytest.raises(lockmgr.InvalidRequest):
                a.watch(("db", 1.5))
            w = a.watch(("db", "q", 1))
            with pytest.raises(QuotaExceeded, match="watches_per_session=1"):
                a.watch(("db", "q", 2))
            w.close()
            w2 = a.watch(("db", "q", 2))           # the quota counts open watches only
        finally:
            a.close()
        # closing the client ends its watches' iteration
        assert [ev.kind for ev in w2] == [INITIAL]


@pytest.mark.service
def test_asyncio_watch_and_wait_free(cluster):
    async def main():
        ac = await lockmgr.aio.connect(cluster.endpoints, request_timeout=5.0)
        a = cluster.connect(request_timeout=5.0)
        row = _row(1, "aio")
        try:
            w = await ac.watch(row)
            async with w:
                ev = await w.get(5)
                assert ev.kind == INITIAL
                t = a.begin()
                t.lock(row, Mode.X)
                ev = await w.get(5)
                assert ev.kind == GRANTED
                assert await ac.wait_free(row, Mode.S, timeout=0.1) is False
                waiter = asyncio.ensure_future(ac.wait_free(row, Mode.S, timeout=10))
                await asyncio.sleep(0.05)
                await asyncio.get_running_loop().run_in_executor(None, t.commit)
                assert await waiter is True
                ev = await w.get(5)
                assert ev.kind == RELEASED
        finally:
            a.close()
            await ac.close()

    asyncio.run(main())


def test_no_watch_no_cost_in_the_core():
    """With no watch the core's take_replies and has_replies read one empty dict."""
    core = ShardCore(epoch=1)
    _hello(core)
    assert core._watched == {} and not core.has_replies
    assert threading.active_count() >= 1


@pytest.mark.service
def test_a_node_above_the_partition_depth_is_watched_on_every_shard(cluster):
    a = cluster.connect(request_timeout=5.0)
    b = cluster.connect(request_timeout=5.0)
    try:
        with b.watch(("db_above",)) as w:
            evs = _kinds(w, 2)
            assert sorted(e.shard for e in evs) == [0, 1] and {e.kind for e in evs} == {INITIAL}
            t = a.begin()
            t.lock(("db_above",), Mode.S)           # a strong lock above the depth: every shard
            evs = _kinds(w, 2)
            assert sorted(e.shard for e in evs) == [0, 1]
            assert {(e.kind, e.txn, e.mode) for e in evs} == {(GRANTED, t.id, Mode.S)}
            assert not w.free(Mode.X) and w.free(Mode.IS)
            t.commit()
            assert {e.kind for e in _kinds(w, 2)} == {RELEASED}
            assert w.free(Mode.X)
    finally:
        a.close()
        b.close()


@pytest.mark.service
def test_watches_leave_nothing_behind(cluster):
    """Closed watches (and one refused) leave no watch on the shard, no count of
    notice users and no registry entry; close() of the client stops its threads."""
    a = cluster.connect(request_timeout=5.0)
    eng = a._eng
    before = eng._push_wanted
    ws = [a.watch(_row(k % 2, f"leak{k}")) for k in range(5)]
    assert eng._push_wanted == before + 5 and eng.watchers == 5
    for w in ws:
        w.close()
        w.close()                               # idempotent
    assert eng._push_wanted == before and eng.watchers == 0
    assert not eng.watch_registry.by_wid and not eng.watch_registry.cores
    wait_until(lambda: sum(st["watches"] for st in a.stats()) == 0, 5.0, "UNWATCHes to land")
    th = eng._thread
    a.close()
    assert not th.is_alive()
