"""Client lock caching (issue 15; docs/service.md, "Lock caching").

A caching client (``connect(cache_locks=True)``) keeps a committed
transaction's locks held by a carrier; later transactions of the client get
them locally (no message, same token); a conflicting request makes the shard
call back (N_CACHE_REVOKE) and the client gives the lock up (CACHE_GIVEUP) at
once if idle, else when the using transaction ends. The Transaction suite runs
on a caching client too (tests/test_transaction_api.py, "cluster-cached").
"""

import asyncio
import os
import random
import signal
import threading
import time

import pytest

from lockmgr import LocalCluster, Mode
from lockmgr.errors import DeadlockDetected, LockNotAvailable
from lockmgr.service import wire
from lockmgr.service.client.aio import connect as aconnect

from helpers import Waiter, shard_of, wait_until, wait_until_waiting

pytestmark = pytest.mark.service

S, X, IS, IX = Mode.S, Mode.X, Mode.IS, Mode.IX


def sent(client):
    """Requests this client has sent so far (every shard; the engine's seq counters)."""
    return sum(client._eng._seq) - client._eng.n


def shard_stats(client, key):
    return sum(s.get(key, 0) for s in client.stats())


@pytest.fixture
def cached(cluster):
    c = cluster.connect(cache_locks=True)
    yield c
    c.close()


@pytest.fixture
def plain(cluster):
    c = cluster.connect()
    yield c
    c.close()


def test_hot_key_costs_no_round_trip_after_the_first(cached):
    rows = [("db", "hot", k) for k in range(4)]
    toks = []
    with cached.transaction() as t:
        toks.append([t.lock(r, X) for r in rows])
    before = sent(cached)
    for _ in range(50):
        with cached.transaction() as t:
            toks.append([t.lock(r, X) for r in rows])
            assert t.lock(rows[0], S) == toks[0][0]        # a weaker mode: covered
    assert sent(cached) == before                           # not one message for 50 transactions
    assert all(tk == toks[0] for tk in toks)                # the same tokens: the locks never changed hands
    st = cached.cache_stats()
    assert st["hits"] == 50 * 5 and st["entries"] == 4 and st["carriers"] == 1 and st["idle"] == 1


def test_lock_many_from_the_cache(cached):
    items = [(("db", "many", k), X) for k in range(3)]
    with cached.transaction() as t:
        first = t.lock_many(items)
    before = sent(cached)
    with cached.transaction() as t:
        assert t.lock_many(items) == first
        assert sent(cached) == before      # nothing sent
        assert t.held() == {("db",): IX, ("db", "many"): IX, **{p: X for p, _ in items}}


def test_conflicting_client_gets_the_lock_within_one_callback(cached, plain):
    r = ("db", "cb", 1)
    with cached.transaction() as t:
        a = t.lock(r, X)
    s0 = sent(plain)
    t0 = time.perf_counter()
    with plain.transaction() as u:
        b = u.lock(r, X, timeout=5)
    took = time.perf_counter() - t0
    assert b > a                              # a new holder: a new token
    assert sent(plain) - s0 == 2              # its LOCK and RELEASE: no retry, nothing else
    assert took < 1.0, took                   # one callback round trip (~1 ms here), not a timeout
    st = cached.cache_stats()
    assert st["revokes"] == 1 and st["giveups"] == 1 and st["entries"] == 0
    assert shard_stats(plain, "cache_revokes") >= 1
    with cached.transaction() as t:           # back to the cache owner: yet another token
        assert t.lock(r, X) > b


def test_try_lock_of_a_cached_lock_succeeds_once_it_is_given_up(cached, plain):
    r = ("db", "try", 1)
    with cached.transaction() as t:
        t.lock(r, X)
    u = plain.begin()
    if not u.try_lock(r, X):                  # refused, but the refusal revokes it
        wait_until(lambda: cached.cache_stats()["entries"] == 0, what="the lock given up")
        assert u.try_lock(r, X)
    u.commit()


def test_a_used_cached_lock_is_given_up_when_its_transaction_ends(cached, plain):
    r = ("db", "used", 1)
    with cached.transaction() as t:
        t.lock(r, X)
    t = cached.begin()
    assert t.lock(r, X) > 0                   # from the cache: in use now
    u = plain.begin()
    w = Waiter(lambda: u.lock(r, X, timeout=10))
    wait_until_waiting(plain, u)
    wait_until(lambda: cached.cache_stats()["revokes"] == 1, what="the callback")
    assert not w.done.is_set()                # (the callback arrived; t still uses the lock)
    assert t.lock(r, S) > 0                   # still t's, locally
    t.commit()
    assert w.get() > 0
    u.commit()
    assert cached.cache_stats()["entries"] == 0


def test_same_client_conflicting_transactions_do_not_share_a_cached_lock(cached):
    r = ("db", "self", 1)
    with cached.transaction() as t:
        t.lock(r, X)
    t1 = cached.begin()
    t1.lock(r, X)                             # from the cache (t1 adopted the carrier)
    t2 = cached.begin()                       # another carrier: goes to the shard and waits
    assert t1.id != t2.id
    w = Waiter(lambda: t2.lock(r, S, timeout=10))
    wait_until_waiting(cached, t2)
    assert not w.done.is_set()
    t1.commit()
    assert w.get() > 0
    t2.commit()


def test_own_idle_cache_makes_way_without_a_callback(cached):
    r = ("db", "way", 1)
    t1, t2 = cached.begin(), cached.begin()   # two carriers
    t1.lock(r, X)
    t1.commit()                               # r cached, idle, in t1's carrier
    assert t2.lock(r, X, nowait=True) > 0     # given up ahead of the request, in the same frame
    t2.commit()
    assert cached.cache_stats()["revokes"] == 0


def test_deadlock_through_a_used_cached_lock(cached, plain):
    r1, r2 = ("db", "dl1", 1), ("db", "dl2", 1)
    with cached.transaction() as t:
        t.lock(r1, X)
    a = cached.begin()
    assert a.lock(r1, X) > 0                  # from the cache: a is an ordinary holder of r1
    b = plain.begin()
    b.lock(r2, X)
    wb = Waiter(lambda: b.lock(r1, X, timeout=20))
    wait_until_waiting(plain, b)
    wa = Waiter(lambda: a.lock(r2, X, timeout=20))
    outcomes = sorted([wa.outcome(), wb.outcome()])
    assert outcomes == ["DeadlockDetected", "ok"], outcomes
    victim = a if wa.outcome() != "ok" else b
    winner = b if victim is a else a
    assert victim.id == max(a.id, b.id)       # the youngest (by the ids the shards see)
    winner.commit()
    assert cached.cache_stats()["carriers"] == (1 if winner is a else 0)


def test_an_idle_cached_lock_is_never_part_of_a_cycle(cached, plain):
    r1, r2 = ("db", "idle1", 1), ("db", "idle2", 1)
    with cached.transaction() as t:
        t.lock(r1, X)                         # cached, idle
    b = plain.begin()
    b.lock(r2, X)
    wb = Waiter(lambda: b.lock(r1, X, timeout=20))
    assert wb.get() > 0                       # the idle lock was given up: no cycle
    a = cached.begin()
    wa = Waiter(lambda: a.lock(r2, X, timeout=20))
    wait_until_waiting(cached, a)
    b.commit()
    assert wa.get() > 0
    a.commit()
    assert plain.deadlocks() == [] or all(d["victim"] not in (a.id, b.id) for d in plain.deadlocks())


def test_fencing_tokens_with_caching(cluster):
    """Two caching and one plain client take turns on one key from several threads
    (seeded): no two holds overlap, and the token never goes down; it stays the same
    only while one client holds the lock without anyone else in between."""
    rng = random.Random(15)
    key = ("db", "fence", 1)
    clients = [cluster.connect(cache_locks=True), cluster.connect(cache_locks=True), cluster.connect()]
    mu = threading.Lock()
    history = []                  # (client index, token) in hold order
    holder = [None]
    errors = []

    def worker(ci, seed):
        r = random.Random(seed)
        c = clients[ci]
        for _ in range(25):
            with c.transaction() as t:
                tok = t.lock(key, X, timeout=20)
                with mu:
                    if holder[0] is not None:
                        errors.append(f"overlap: {ci} with {holder[0]}")
                    holder[0] = ci
                    history.append((ci, tok))
                if r.random() < 0.3:
                    time.sleep(r.random() / 1000)
                with mu:
                    holder[0] = None

    threads = [threading.Thread(target=worker, args=(ci, rng.random())) for ci in (0, 0, 1, 2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not any(th.is_alive() for th in threads)
    assert not errors, errors[:3]
    assert len(history) == 100
    for (c0, t0), (c1, t1) in zip(history, history[1:]):
        assert t1 >= t0
        if c1 != c0:
            assert t1 > t0, "the lock changed hands with the same token"
    hits = clients[0].cache_stats()["hits"] + clients[1].cache_stats()["hits"]
    assert hits > 0
    for c in clients:
        c.close()


def test_bound_on_entries(cluster, plain):
    c = cluster.connect(cache_locks=True, cache_max_entries=5)
    try:
        rows = [("db", "bound", k) for k in range(20)]
        with c.transaction() as t:
            for r in rows:
                t.lock(r, X)
        st = c.cache_stats()
        assert st["entries"] == 5 and st["evictions"] == 15
        u = plain.begin()
        for r in rows[:15]:                   # the least recently used went first
            assert u.lock(r, X, timeout=5) > 0
        u.commit()
    finally:
        c.close()


def test_bound_on_idle_age(cluster, plain):
    c = cluster.connect(cache_locks=True, cache_max_idle=0.3)
    try:
        with c.transaction() as t:
            t.lock(("db", "age", 1), X)
        assert c.cache_stats()["entries"] == 1
        wait_until(lambda: c.cache_stats()["carriers"] == 0, timeout=5, what="the idle carrier to end")
        u = plain.begin()
        assert u.lock(("db", "age", 1), X, nowait=True) > 0    # released on the shard too
        u.commit()
    finally:
        c.close()


def test_close_releases_cached_locks(cluster, plain):
    c = cluster.connect(cache_locks=True)
    with c.transaction() as t:
        t.lock(("db", "close", 1), X)
    c.close()
    assert c.cache_stats()["entries"] == 0
    u = plain.begin()
    assert u.lock(("db", "close", 1), X, nowait=True) > 0
    u.commit()


def test_two_phase_commit_transactions_do_not_use_the_cache(cached):
    r = ("db", "xa", 1)
    with cached.transaction() as t:
        t.lock(r, S)
    t = cached.begin(gtrid="g-cache-1")
    before = cached.cache_stats()["hits"]
    t.lock(r, S)
    assert cached.cache_stats()["hits"] == before
    t.prepare()
    t.commit()


def test_lost_session_empties_the_cache():
    """SIGSTOP the shard past the client's lease: the session is lost, the cache is
    empty, and the shard (expiring the session itself) frees the locks. The client's
    next transaction runs in a new session (issue 15's listeners part), where the
    old session's cached lock is not served: it asks the shard and waits."""
    r = ("db", "lost", 1)
    with LocalCluster(1) as cl:
        c = cl.connect(cache_locks=True, session_ttl=1.0, request_timeout=0.5)
        with c.transaction() as t:
            old_token = t.lock(r, X)
        assert c.cache_stats()["entries"] == 1
        # (the housekeeper's sweep also empties the cache of a dead session, when it runs
        # before the new session opens; without it the new session itself must)
        c._eng.cache_tick = None
        pid = cl.pids[0]
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_until(lambda: c.expired, timeout=5, what="the lease to run out")
        finally:
            os.kill(pid, signal.SIGCONT)
        o = cl.connect()
        u = o.begin()
        assert u.lock(r, X, timeout=5) > old_token
        t = c.begin()                 # a new session (no cache_stats() call before it)
        assert c.renewals == 1
        with pytest.raises(LockNotAvailable):
            t.lock(r, X, nowait=True)
        assert c.cache_stats() == dict(c.cache_stats(), entries=0, hits=0)
        u.commit()
        assert t.lock(r, X, timeout=5) > old_token
        t.commit()
        with c.transaction() as t2:
            t2.lock(r, X)             # cached again, in the new session
        assert c.cache_stats()["hits"] == 1
        o.close()
        c.close()


def test_cached_locks_are_reclaimed_after_a_restart():
    """Cached (idle) locks come back with the session's other locks after a shard
    restart: the same tokens, still served from the cache, still revocable."""
    with LocalCluster(2, grace=10) as cl:
        c = cl.connect(cache_locks=True, session_ttl=5.0, request_timeout=3.0)
        o = cl.connect(session_ttl=5.0, request_timeout=3.0)
        r = ("db", "reclaim", 1)
        s = shard_of(r, 2)
        with c.transaction() as t:
            tok = t.lock(r, X)
        cl.restart(s)
        with c.transaction() as t:
            assert t.lock(("db", "reclaim", 2), X) > 0     # (a round trip: learns the restart)
            assert t.lock(r, X) == tok                     # reclaimed: same token, from the cache
        assert sum(st.get("reclaimed_txns", 0) for st in o.stats()) >= 1
        u = o.begin()
        assert u.lock(r, X, timeout=5) > tok               # revoked and given up as before
        u.commit()
        c.close()
        o.close()


def test_asyncio_client_caches_too(cluster):
    async def main():
        c = await aconnect(cluster.endpoints, cache_locks=True, partition_depth=2)
        try:
            async with c.transaction() as t:
                tok = await t.lock(("db", "aio", 1), X)
            before = sent(c._sync)
            for _ in range(20):
                async with c.transaction() as t:
                    assert await t.lock(("db", "aio", 1), X) == tok
            assert sent(c._sync) == before
            assert c.cache_stats()["hits"] == 20
        finally:
            await c.close()
    asyncio.run(main())


def test_shard_refuses_malformed_cache_requests(plain):
    eng = plain._eng
    res = eng.call_many([(0, wire.CACHE_GIVEUP, [1, "x"], 0.0), (0, wire.CACHE_ON, [1], 0.0),
                         (0, wire.CACHE_GIVEUP, [12345, [["db"]]], 0.0)])
    assert isinstance(res[0], Exception) and isinstance(res[1], Exception)
    assert res[2] == [0]                      # an unknown transaction: nothing to give up
    with pytest.raises(LockNotAvailable):     # (the session still works)
        t = plain.begin()
        t.lock(("db", "malformed", 1), X)
        u = plain.begin()
        u.lock(("db", "malformed", 1), X, nowait=True)


def test_deadlock_victim_carrier_is_dropped(cached, plain):
    """A victim's carrier ends (its locks released everywhere), and the client's
    next transaction starts a fresh one."""
    r1, r2 = ("db", "vd1", 1), ("db", "vd2", 1)
    b = plain.begin()                         # older than a's carrier: a is the victim
    with cached.transaction() as t:
        t.lock(r1, X)
    a = cached.begin()
    a.lock(r1, X)
    b.lock(r2, X)
    wb = Waiter(lambda: b.lock(r1, X, timeout=20))
    wait_until_waiting(plain, b)
    with pytest.raises(DeadlockDetected):
        a.lock(r2, X, timeout=20)
    assert wb.get() > 0
    b.commit()
    assert cached.cache_stats()["carriers"] == 0
    with cached.transaction() as t:
        assert t.lock(r1, X) > 0


# ------------------------------------------------- the shard's part, sans-IO

class _Core:
    """One ShardCore driven by hand (no sockets, a fixed clock)."""

    def __init__(self):
        from lockmgr.service.shard.core import ShardCore
        rnd = random.Random(15)
        self.core = ShardCore(epoch=1, now=100.0, random_bytes=lambda k: rnd.randbytes(k))
        self.seq = {}
        self.out = {}

    def call(self, conn, sid, typ, *args):
        seq = self.seq.get(sid, 1)
        self.seq[sid] = seq + 1
        self.core.frame((conn,), sid, 0, [[typ, seq, *args]], 64)
        self.core.process_woken()
        for prefix, reps in self.core.take_replies().items():
            self.out.setdefault(prefix[0], []).extend(reps)
        for rep in self.out.get(conn, []):
            if rep[0] == seq:
                self.out[conn].remove(rep)
                return rep
        return None

    def notices(self, conn):
        got = [r[2] for r in self.out.get(conn, []) if r[0] == wire.PUSH_SEQ]
        self.out[conn] = [r for r in self.out.get(conn, []) if r[0] != wire.PUSH_SEQ]
        return got


@pytest.mark.parametrize("nowait", [False, True])
def test_shard_revokes_a_caching_sessions_lock_and_grants_the_waiter_on_give_up(nowait):
    c = _Core()
    for conn, sid in ((b"a", 11), (b"b", 12)):
        assert c.call(conn, sid, wire.HELLO, 60_000, "t")[1] == wire.OK
    assert c.call(b"a", 11, wire.CACHE_ON)[1:] == [wire.OK, []]
    carrier = 1 << 50
    for k in (1, 2):
        assert c.call(b"a", 11, wire.LOCK, carrier, ["db", "t", k], X, False, None, 0)[1] == wire.OK
    rep = c.call(b"b", 12, wire.LOCK, 2 << 50, ["db", "t", 1], S, nowait, None, 0)
    if nowait:
        assert rep[1] == wire.E_NOT_AVAILABLE
    else:
        assert rep is None                                      # waits
    assert c.notices(b"a") == [[wire.N_CACHE_REVOKE, carrier, ["db", "t", 1], S]]
    assert c.notices(b"b") == []                                # (nothing for the waiter)
    # the client gives row 1 up (the table stays: row 2 is still cached below it)
    assert c.call(b"a", 11, wire.CACHE_GIVEUP, carrier, [["db", "t", 1]])[1:] == [wire.OK, [1]]
    if not nowait:
        (rep,) = [r for r in c.out[b"b"] if r[0] == 2]         # (seq 1 was the HELLO)
        assert rep[1] == wire.OK and rep[2][0] > 0              # granted by the give-up
    held = dict((tuple(p), m) for p, m in c.core.table.held(carrier))
    assert held == {("db",): IX, ("db", "t"): IX, ("db", "t", 2): X}
    # a request for the table in S conflicts with the carrier's IX there: revoked at that level
    assert c.call(b"b", 12, wire.LOCK, 3 << 50, ["db", "t"], S, True, None, 0)[1] == wire.E_NOT_AVAILABLE
    assert c.notices(b"a") == [[wire.N_CACHE_REVOKE, carrier, ["db", "t"], S]]
    # a give-up naming only the table finds the row below it itself
    assert c.call(b"a", 11, wire.CACHE_GIVEUP, carrier, [["db", "t"]])[2] == [2]
    assert [tuple(p) for p, _ in c.core.table.held(carrier)] == [("db",)]
    st = c.core.counters
    assert st["cache_sessions"] == 1 and st["cache_revokes"] >= 1 and st["cache_given_up"] == 3


def test_shard_sends_no_revoke_for_sessions_that_do_not_cache():
    c = _Core()
    for conn, sid in ((b"a", 11), (b"b", 12)):
        c.call(conn, sid, wire.HELLO, 60_000, "t")
    c.call(b"a", 11, wire.LOCK, 1 << 50, ["db", "t", 1], X, False, None, 0)
    assert c.call(b"b", 12, wire.LOCK, 2 << 50, ["db", "t", 1], X, False, None, 0) is None
    assert c.notices(b"a") == [] and c.core.counters["cache_revokes"] == 0
