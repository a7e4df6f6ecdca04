"""Session state listeners, the new session after LOST, and the per-transaction
lock-lost notice (``on_lost``, ``valid_for``): issue 15, docs/service.md
("Session states and listeners").

Each test that stops or kills a shard has a LocalCluster of its own (shards
stopped by PID); TTLs are short so every fault plays out in about a second.
"""

import asyncio
import os
import queue
import signal
import threading
import time

import pytest

import lockmgr
from lockmgr import LocalCluster, Mode, SessionExpired, SessionState as _S  # noqa: F401
from lockmgr.errors import DeadlockDetected, TransactionAborted

from helpers import Waiter, shard_of, wait_until_waiting

pytestmark = pytest.mark.service

TTL = 0.6


class Recorder:
    """A listener that records states; ``next()`` waits for the next one (bounded)."""

    def __init__(self):
        self.q = queue.Queue()
        self.seen = []
        self.threads = set()

    def __call__(self, state):
        self.threads.add(threading.current_thread().name)
        self.seen.append(state)
        self.q.put(state)

    def next(self, timeout=10.0):
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no state change within {timeout}s (seen {self.seen})") from None


def _row(n, shard, nshards, tag):
    i = 0
    while True:
        p = ("db", f"{tag}{i}")
        if shard_of(p, nshards) == shard:
            return p + (n,)
        i += 1


@pytest.fixture
def one_shard(tmp_path):
    with LocalCluster(1, data_dir=str(tmp_path), grace=0.3) as c:
        yield c


def test_sigstop_past_the_lease_suspended_lost_then_a_new_session(one_shard):
    c = one_shard
    cl = c.connect(session_ttl=TTL, request_timeout=0.3)
    rec = Recorder()
    lost = []
    lost_ev = threading.Event()
    try:
        cl.add_listener(rec)
        t = cl.begin()
        tok = t.lock(("db", "x", 1), Mode.X)
        assert tok > 0
        t.on_lost(lambda err: (lost.append(err), lost_ev.set()))
        assert 0 < t.valid_for() <= TTL
        t_idle = cl.begin()          # active, no lock: aborting it later still says SessionExpired
        old_session = cl.session_id
        os.kill(c.pids[0], signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            assert rec.next() is _S.SUSPENDED
            assert rec.next() is _S.LOST
            t_lost = time.monotonic()
            # the lease runs out by the client's clock: at most a TTL after the stop
            assert t_lost - t0 < TTL + 0.5
            assert lost_ev.wait(2.0), "on_lost was not called"
            assert time.monotonic() - t_lost < 0.5
            assert isinstance(lost[0], SessionExpired)
            assert t.valid_for() == 0.0
        finally:
            os.kill(c.pids[0], SIGCONT)
        # a listener wants the session back: the client opens a new one on its own
        assert rec.next() is _S.CONNECTED
        assert cl.session_id != old_session and cl.renewals == 1
        # the old transaction keeps raising SessionExpired; new ones work
        with pytest.raises(SessionExpired):
            t.lock(("db", "x", 2), Mode.X)
        with pytest.raises(SessionExpired):
            t.commit()
        t.abort()                    # (finished: a no-op, as ever)
        with pytest.raises(SessionExpired):
            t_idle.abort()
        u = cl.begin()
        tok2 = u.lock(("db", "x", 1), Mode.X, timeout=5)     # the old session's X is gone
        assert tok2 > tok
        assert u.valid_for() > 0
        u.commit()
        assert rec.seen == [_S.SUSPENDED, _S.LOST, _S.CONNECTED]
        assert rec.threads == {"lockmgr-client-notify"}
    finally:
        cl.close()


SIGCONT = signal.SIGCONT


def test_a_short_stop_is_suspended_then_reconnected(one_shard):
    c = one_shard
    cl = c.connect(session_ttl=1.2, request_timeout=0.3)
    rec = Recorder()
    try:
        cl.add_listener(rec)
        t = cl.begin()
        t.lock(("db", "y", 1), Mode.X)
        os.kill(c.pids[0], signal.SIGSTOP)
        try:
            assert rec.next() is _S.SUSPENDED
            assert cl.state is _S.SUSPENDED
        finally:
            os.kill(c.pids[0], SIGCONT)
        assert rec.next() is _S.RECONNECTED
        assert cl.state is _S.CONNECTED
        t.lock(("db", "y", 2), Mode.X)           # the same session: every lock still held
        t.commit()
        assert rec.seen == [_S.SUSPENDED, _S.RECONNECTED] and cl.renewals == 0
    finally:
        cl.close()


def test_sigkill_and_restart_within_the_lease_reclaims_suspended_reconnected(tmp_path):
    # (the grace period must outlast the client's next heartbeat, ttl/4, which finds the restart)
    with LocalCluster(1, data_dir=str(tmp_path), grace=2.0) as c:
        cl = c.connect(session_ttl=2.0, request_timeout=0.5)
        rec = Recorder()
        try:
            cl.add_listener(rec)
            t = cl.begin()
            t.lock(("db", "z", 1), Mode.X)
            lost = threading.Event()
            t.on_lost(lambda err: lost.set())
            c.restart(0)            # SIGKILL, then a new start (a new epoch) on the same endpoint
            assert rec.next() is _S.SUSPENDED       # the shard does not know the session: reclaim
            assert rec.next() is _S.RECONNECTED     # reclaimed: the same session, its locks
            t.lock(("db", "z", 2), Mode.X)
            t.commit()
            assert not lost.is_set()
            assert rec.seen == [_S.SUSPENDED, _S.RECONNECTED]
        finally:
            cl.close()


def test_sigkill_past_the_lease_lost_then_connected_after_restart(tmp_path):
    with LocalCluster(1, data_dir=str(tmp_path), grace=0.2) as c:
        cl = c.connect(session_ttl=TTL, request_timeout=0.3)
        rec = Recorder()
        try:
            cl.add_listener(rec)
            t = cl.begin()
            t.lock(("db", "k", 1), Mode.X)
            c.kill(0)
            assert rec.next() is _S.SUSPENDED
            assert rec.next() is _S.LOST
            with pytest.raises(lockmgr.ShardUnavailable):
                cl.begin()                  # no shard to open a new session with (yet)
            c.restart(0)
            assert rec.next() is _S.CONNECTED
            u = cl.begin()
            u.lock(("db", "k", 1), Mode.X, timeout=5)
            u.commit()
            with pytest.raises(SessionExpired):
                t.lock(("db", "k", 2), Mode.X)
            assert rec.seen == [_S.SUSPENDED, _S.LOST, _S.CONNECTED]
        finally:
            cl.close()


def test_without_listeners_the_new_session_opens_at_the_next_begin(one_shard):
    c = one_shard
    cl = c.connect(session_ttl=TTL, request_timeout=0.3)
    try:
        t = cl.begin()
        t.lock(("db", "w", 1), Mode.X)
        os.kill(c.pids[0], signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 10
            while not cl.expired and time.monotonic() < deadline:
                time.sleep(0.02)
            assert cl.expired
        finally:
            os.kill(c.pids[0], SIGCONT)
        assert cl.renewals == 0 and cl.expired          # nothing opened it yet
        with pytest.raises(SessionExpired):
            t.lock(("db", "w", 2), Mode.X)
        u = cl.begin()                                   # opens the new session
        assert cl.renewals == 1 and not cl.expired
        u.lock(("db", "w", 1), Mode.X, timeout=5)
        u.commit()
        with pytest.raises(SessionExpired):
            t.commit()
    finally:
        cl.close()


# ----------------------------------------------------- on_lost: a deadlock victim

@pytest.fixture(scope="module")
def cluster_options():
    return {"shards": 2, "partition_depth": 2, "probe_delay": 0.01, "probe_interval": 0.05}


def test_on_lost_fires_for_a_victim_not_waiting_on_a_shard(cluster):
    """t2 holds b on shard 1 and waits on shard 0 where it closes a cycle: shard 1
    drops its lock and pushes N_TXN_LOST; on_lost fires with DeadlockDetected."""
    client = cluster.connect(request_timeout=5.0)
    try:
        a, b = _row(1, 0, 2, "lost_a"), _row(1, 1, 2, "lost_b")
        t1, t2 = client.begin("t1"), client.begin("t2")
        t1.lock(a)
        t2.lock(b)
        got = queue.Queue()
        t2.on_lost(got.put)
        t1.on_lost(got.put)
        g1 = Waiter(lambda: (t1.lock(b), t1.commit()))
        wait_until_waiting(client, t1, 5.0, poll=0.002)
        g2 = Waiter(lambda: t2.lock(a))
        assert g2.outcome() == "DeadlockDetected"
        assert g1.outcome() == "ok"
        err = got.get(timeout=5.0)
        assert isinstance(err, (DeadlockDetected, TransactionAborted)), err
        assert t2.valid_for() == 0.0
        assert got.empty()          # t1 committed: its locks were released, not lost
    finally:
        client.close()


def test_on_lost_after_the_end_never_fires_and_bad_input_is_refused(cluster):
    client = cluster.connect(request_timeout=5.0)
    try:
        t = client.begin()
        t.lock(_row(1, 0, 2, "fin"), Mode.S)
        fired = []
        t.on_lost(fired.append)
        t.commit()
        assert t.valid_for() == 0.0
        u = client.begin()
        u.on_lost(fired.append)            # finished, never began: nothing
        with pytest.raises(lockmgr.InvalidRequest):
            u.on_lost("not callable")
        with pytest.raises(lockmgr.InvalidRequest):
            client.add_listener(42)
        with pytest.raises(lockmgr.InvalidRequest):
            client.remove_listener(print)
        u.abort()
    finally:
        client.close()
    assert fired == []


def test_close_tells_on_lost_and_stops_the_notification_thread(cluster):
    client = cluster.connect(request_timeout=5.0)
    t = client.begin()
    t.lock(_row(2, 1, 2, "close"), Mode.X)
    got = []
    t.on_lost(got.append)
    client.add_listener(lambda s: None)
    th = client._eng._dispatch.thread
    client.close()
    assert len(got) == 1 and isinstance(got[0], SessionExpired)
    assert th is None or not th.is_alive()


def test_asyncio_listener_lost_event_and_new_session(tmp_path):
    async def main():
        with LocalCluster(1, data_dir=str(tmp_path), grace=0.2) as c:
            ac = await lockmgr.aio.connect(c.endpoints, session_ttl=TTL, request_timeout=0.3)
            states = asyncio.Queue()
            ac.add_listener(states.put_nowait)
            t = ac.begin()
            await t.lock(("db", "a", 1), Mode.X)
            assert t.valid_for() > 0
            ev = t.lost
            os.kill(c.pids[0], signal.SIGSTOP)
            try:
                assert await asyncio.wait_for(states.get(), 10) is _S.SUSPENDED
                assert await asyncio.wait_for(states.get(), 10) is _S.LOST
                await asyncio.wait_for(ev.wait(), 2)
                assert isinstance(t.lost_error, SessionExpired)
            finally:
                os.kill(c.pids[0], SIGCONT)
            assert await asyncio.wait_for(states.get(), 10) is _S.CONNECTED
            with pytest.raises(SessionExpired):
                await t.lock(("db", "a", 2), Mode.X)
            u = ac.begin()
            await u.lock(("db", "a", 1), Mode.X, timeout=5)
            await u.commit()
            await ac.close()

    asyncio.run(main())


def test_an_answer_that_arrives_after_the_session_changed_is_released(cluster):
    """The race the generation check closes: a lock call of a transaction is out when
    the engine opens a new session; its answer may belong to the new session. The
    transaction raises SessionExpired and releases whatever it was granted."""
    from lockmgr.service.client.ops import _g_lock
    client = cluster.connect(request_timeout=5.0)
    try:
        t = client.begin()
        row = _row(3, 0, 2, "race")
        gen = _g_lock(t._c, row, Mode.X, None, False)
        specs = next(gen)
        results = client._eng.call_many(specs)          # granted (to this session)
        with client._eng._mu:
            client._eng.gen += 1                         # as if a new session had opened meanwhile
        with pytest.raises(SessionExpired, match="new transactions use a new one"):
            gen.send(results)
        assert t.state == "aborted"
        with client._eng._mu:
            client._eng.gen -= 1
        u = client.begin()
        assert u.lock(row, Mode.X, timeout=5) > 0       # the RELEASE went out: free again
        u.commit()
    finally:
        client.close()


def test_on_lost_fires_when_a_restarted_shard_cannot_give_the_locks_back(tmp_path):
    """A shard restarted without a grace period keeps nothing of the session: the
    client learns it at its next heartbeat (ttl/4) and on_lost fires then."""
    with LocalCluster(1, data_dir=str(tmp_path), grace=0) as c:
        cl = c.connect(session_ttl=2.0, request_timeout=0.5)
        try:
            t = cl.begin()
            t.lock(("db", "nogrc", 1), Mode.X)
            got = queue.Queue()
            t.on_lost(got.put)
            t0 = time.monotonic()
            c.restart(0)
            err = got.get(timeout=5.0)
            assert isinstance(err, (TransactionAborted, SessionExpired)), err
            assert time.monotonic() - t0 < 2.0          # within the TTL: at the next heartbeat
            assert t.valid_for() == 0.0
            with pytest.raises((TransactionAborted, SessionExpired)):
                t.lock(("db", "nogrc", 2), Mode.X)
            u = cl.begin()                               # the client goes on (a new session if need be)
            u.lock(("db", "nogrc", 1), Mode.X, timeout=5)
            u.commit()
        finally:
            cl.close()
