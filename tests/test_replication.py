"""Replica sets with leadership in etcd (issue 12; docs/replication.md).

Deterministic parts (the leadership logic against FakeEtcd and an injected
clock; the replication stream between a PrepareLog and a standby in one
process) run everywhere; the process-level tests start their own etcd (Debian's
etcd-server) and replica processes on 127.0.0.1 and stop them by PID."""

import asyncio
import os
import shutil
import signal
import threading
import time

import pytest
import zmq

import lockmgr.aio
from lockmgr import Mode
from lockmgr.errors import InvalidRequest, LockError
from lockmgr.service.etcd import EtcdClient, EtcdUnavailable, FakeEtcd, Watcher
from lockmgr.service.replica import Leadership, keys
from lockmgr.service.replication import Follower, Replicator, StandbyLog
from lockmgr.wal import PrepareLog

from helpers import FencedStore, Waiter, tables_on, wait_until, wait_until_waiting


def _need_etcd():
    if shutil.which("etcd") is None:
        msg = "the etcd binary is missing: apt-get install etcd-server (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


# ---------------------------------------------------------------- leadership (deterministic)

def test_leadership_election_lease_and_epochs():
    clock = Clock()
    etcd = FakeEtcd(clock)
    a = Leadership(etcd, "c", 0, 0, ttl=2.0, margin=0.2, clock=clock)
    b = Leadership(etcd, "c", 0, 1, ttl=2.0, margin=0.2, clock=clock)
    assert a.campaign() == 1
    assert b.campaign() is None                  # the key is taken
    assert a.valid() and not b.valid()
    clock.t += 1.0
    assert a.renew() is True
    clock.t += 1.7
    assert a.valid()                             # renewed at 101.0: valid until 102.8
    clock.t += 0.2
    assert not a.valid()                         # past ttl - margin without a renewal: stop granting
    # etcd unreachable: renew() cannot tell; still not valid, not lost
    etcd.down = True
    assert a.renew() is None and not a.lost
    etcd.down = False
    clock.t += 0.5                               # the lease (101.0 + 2) has expired in etcd
    assert b.campaign() == 2                     # a new epoch, by compare-and-swap
    assert a.renew() is False and a.lost         # the old primary learns it lost
    assert not a.valid()
    assert etcd.get(keys("c", 0).epoch).value == "2"


def test_leadership_resumes_after_etcd_returns_within_the_lease():
    clock = Clock()
    etcd = FakeEtcd(clock)
    a = Leadership(etcd, "c", 1, 0, ttl=2.0, margin=0.2, clock=clock)
    assert a.campaign() == 1
    etcd.down = True
    clock.t += 1.0
    assert a.renew() is None
    clock.t += 0.9
    assert not a.valid()                         # could have expired by now: grants stop
    etcd.down = False
    # (etcd extends leases when it comes back; the fake's lease ran out at 102.0)
    clock.t -= 0.2
    assert a.renew() is True and a.valid()


def test_fake_etcd_cas_and_prefix():
    clock = Clock()
    etcd = FakeEtcd(clock)
    assert etcd.cas("/k", None, "1")
    assert not etcd.cas("/k", None, "1")
    assert not etcd.cas("/k", "0", "2")
    assert etcd.cas("/k", "1", "2")
    etcd.put("/k2", "x")
    assert [kv.key for kv in etcd.get_prefix("/k")] == ["/k", "/k2"]
    etcd.down = True
    with pytest.raises(EtcdUnavailable):
        etcd.get("/k")


def test_fake_etcd_watch_sees_puts_deletes_and_lease_expiry():
    clock = Clock()
    etcd = FakeEtcd(clock)
    st = etcd.watch("/a/", prefix=True, idle=5.0)
    etcd.put("/a/x", "1")
    etcd.put("/b", "2")                          # not under the prefix
    assert [(e.type, e.kv.key, e.kv.value) for e in st.next()] == [("PUT", "/a/x", "1")]
    lease = etcd.grant(2)
    etcd.put("/a/y", "v", lease)
    assert st.next()[0].kv.lease == lease
    clock.t += 3
    etcd.tick()                                  # the lease expires: its key is deleted, watchers hear it
    assert [(e.type, e.kv.key) for e in st.next()] == [("DELETE", "/a/y")]
    etcd.down = True                             # etcd lost: the stream breaks
    with pytest.raises(EtcdUnavailable):
        st.next()
    with pytest.raises(EtcdUnavailable):
        etcd.watch("/a/")


# ---------------------------------------------------------------- the replication stream (one process)

def _pump(follower, until, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the standby did not catch up"
        follower.poll(10)


def test_stream_snapshot_records_and_standby_loss(tmp_path):
    ctx = zmq.Context.instance()
    members_published = []
    rep = Replicator(ctx, "tcp://127.0.0.1:0", epoch=7, replica=0, sync_standbys=1, sync_timeout=0.3,
                     set_members=lambda m: members_published.append(list(m)))
    plog = PrepareLog(str(tmp_path / "p"), epoch=7, replicator=rep)
    rep.attach(plog)
    try:
        plog.append_sync({"t": "epoch", "epoch": 7, "replica": 0})
        plog.append_sync({"t": "prepare", "gtrid": "before", "txn": 1, "locks": [], "fmt": "path"})
        slog = StandbyLog(str(tmp_path / "s"))
        f = Follower(ctx, slog, 0, 1, "inc1")
        f.follow(rep.endpoint, 7)
        _pump(f, lambda: f.synced)
        assert set(slog.live) == {"before"} and slog.last_epoch["epoch"] == 7
        # a prepare is acknowledged only once the standby has it on disk: the standby's
        # poll runs in a thread while the primary waits
        stop = threading.Event()
        th = threading.Thread(target=lambda: [f.poll(10) for _ in iter(stop.is_set, True)])
        th.start()
        try:
            wait_until(lambda: "1:inc1" in rep.members, 5, "the standby in the sync set")
            plog.append_sync({"t": "prepare", "gtrid": "after", "txn": 2, "locks": [], "fmt": "path"},
                             timeout=5)
            assert "after" in StandbyLog(str(tmp_path / "s")).live      # on the standby's disk
            plog.append_sync({"t": "resolve", "gtrid": "before", "commit": True}, timeout=5)
        finally:
            stop.set()
            th.join()
        assert set(slog.live) == {"after"}
        assert ["0", "1:inc1"] != members_published[-1] and "1:inc1" in members_published[-1]
        # the standby stops answering: after sync_timeout it leaves the sync set (published
        # first), then the record is acknowledged degraded
        f.close()
        t0 = time.monotonic()
        plog.append_sync({"t": "prepare", "gtrid": "lonely", "txn": 3, "locks": [], "fmt": "path"}, timeout=5)
        assert time.monotonic() - t0 >= 0.25
        assert "1:inc1" not in rep.members and "1:inc1" not in members_published[-1]
        assert rep.counters["repl_degraded"] >= 1
        # with on_standby_loss="fail" the next one is refused, loudly
        rep.on_standby_loss = "fail"
        with pytest.raises(LockError, match="required"):
            plog.append_sync({"t": "prepare", "gtrid": "refused", "txn": 4, "locks": [], "fmt": "path"},
                             timeout=5)
    finally:
        plog.close()
        rep.close()


# ---------------------------------------------------------------- processes (own etcd)

@pytest.fixture
def rcluster(tmp_path):
    _need_etcd()
    from lockmgr import LocalCluster
    made = []

    def make(**kw):
        kw.setdefault("shards", 2)
        kw.setdefault("replicas", 2)
        kw.setdefault("lease_ttl", 1.0)      # (etcd runs with short raft timers: 1 s leases hold)
        # a standby slow to acknowledge on a busy 2-core CI machine would leave the sync set (safe, but
        # then it may not take over); the loss of a standby is tested in-process above
        kw.setdefault("sync_timeout", 3.0)
        kw.setdefault("data_dir", str(tmp_path / f"cluster{len(made)}"))    # (its logs stay for a failure)
        c = LocalCluster(**kw)
        made.append(c)
        return c
    yield make
    for c in made:
        c.stop()


@pytest.mark.service
def test_watch_over_the_gateway_and_the_watchers_fallback(tmp_path):
    """POST /v3/watch streams the changes (a lease's end included); a Watcher rings
    when its stream is made, at each change, when etcd is lost (then every
    ``retry`` seconds: the slow poll) and when etcd is back."""
    _need_etcd()
    import queue

    from lockmgr.service.cluster import terminate
    from lockmgr.service.repcluster import start_etcd
    proc, url = start_etcd(str(tmp_path / "etcd"))
    w = None
    try:
        etcd = EtcdClient(url)
        st = etcd.watch("/w/", prefix=True)
        etcd.put("/w/a", "1")
        etcd.put("/x", "elsewhere")
        lease = etcd.grant(1)
        etcd.put("/w/b", "2", lease)
        got = []
        while len(got) < 2:
            got += [(e.type, e.kv.key, e.kv.value) for e in st.next()]
        assert got == [("PUT", "/w/a", "1"), ("PUT", "/w/b", "2")]
        etcd.revoke(lease)
        assert [(e.type, e.kv.key) for e in st.next()] == [("DELETE", "/w/b")]
        st.close()
        with pytest.raises(EtcdUnavailable):
            st.next()

        rings: "queue.Queue" = queue.Queue()
        w = Watcher(etcd, "/w/a", rings.put, retry=0.1)
        assert rings.get(timeout=5) is None and w.healthy        # made: read the state again
        etcd.put("/w/a", "2")
        assert [e.kv.value for e in rings.get(timeout=5)] == ["2"]
        port = int(url.rsplit(":", 1)[1])
        terminate([proc])                                         # etcd lost
        assert rings.get(timeout=5) is None
        assert rings.get(timeout=5) is None and not w.healthy     # the slow poll rings on
        proc, _ = start_etcd(str(tmp_path / "etcd"), port=port)
        wait_until(lambda: w.healthy, 10, "the watch to be made again")
        etcd.put("/w/a", "3")
        while True:
            r = rings.get(timeout=5)
            if r is not None:
                break
        assert [e.kv.value for e in r] == ["3"] and w.streams >= 2
    finally:
        if w is not None:
            w.close()
        terminate([proc])


@pytest.mark.service
def test_machine_loss_with_wipe(rcluster):
    c = rcluster()
    [t0] = tables_on(0, 2)
    [t1] = tables_on(1, 2)
    cl = c.connect(session_ttl=10)
    p = cl.begin(gtrid="xfer-1")
    p.lock(("db", t0, 1), Mode.X)
    p.lock(("db", t1, 1), Mode.X)
    p.prepare()
    a = cl.begin()
    tok0 = a.lock(("db", t0, 2), Mode.X)
    tok1 = a.lock(("db", t1, 2), Mode.X)
    old = c.primary(0)
    k0 = time.monotonic()
    c.kill(0, wipe=True)
    new = c.wait_primary(0, c.lease_ttl + 5, exclude=old)
    took = time.monotonic() - k0
    assert new != old
    assert took <= c.lease_ttl + 1.0 + 0.5, took     # TTL + 1 s (+ the poll of this test)
    # the active transaction's locks are reclaimed with their tokens, and it commits
    assert a.lock(("db", t0, 2), Mode.X) == tok0
    assert a.lock(("db", t1, 2), Mode.X) == tok1
    a.commit()
    # lockmgr status --etcd --cluster: the new primary, the lost replica down
    from lockmgr.cli.replstatus import replica_rows
    rows, primaries = replica_rows(c.etcd_url, c.cluster_name, 2.0)
    by = {(r["shard"], r["replica"]): r for r in rows}
    assert by[(0, new)]["role"] == "primary" and by[(0, new)]["lag"] == 0
    assert by[(0, old)]["role"] == "DOWN"
    assert primaries[0] == c.endpoints[0][new]
    assert {by[(1, j)]["role"] for j in range(2)} == {"primary", "standby"}
    assert all(by[(1, j)]["in_sync"] for j in range(2))
    cl2 = c.connect()
    docs = {d["gtrid"]: d for d in cl2.indoubt()}
    assert list(docs) == ["xfer-1"] and cl2.recover() == ["xfer-1"]
    assert ("db", t0, 1) in docs["xfer-1"]["locks"] and ("db", t1, 1) in docs["xfer-1"]["locks"]
    assert sorted(docs["xfer-1"]["shards"]) == [0, 1]
    b = cl2.begin()
    with pytest.raises(LockError):
        b.lock(("db", t0, 1), Mode.X, timeout=0.2)    # still held by the prepared transaction
    b.abort()
    cl2.resolve("xfer-1", True)
    assert cl2.recover() == []
    b = cl2.begin()
    assert b.lock(("db", t0, 1), Mode.X, timeout=2) > tok0     # tokens keep growing
    b.commit()
    cl.close()
    cl2.close()


class Increments:
    """``threads`` threads that read-increment-write one key of a FencedStore under
    an X lock (the token fences the write) until ``stop()``, counting the writes."""

    def __init__(self, cl, threads, timeout):
        self.cl = cl
        self.timeout = timeout
        self.store = FencedStore()
        self.writes = 0
        self.errors = []
        self.progress = threading.Condition()
        self._stop = threading.Event()
        self._ths = [threading.Thread(target=self._run) for _ in range(threads)]
        for th in self._ths:
            th.start()

    def _run(self):
        store = self.store
        while not self._stop.is_set():
            t = self.cl.begin()
            try:
                tok = t.lock(("db", "ctr", 0), Mode.X, timeout=self.timeout)
                if store.write("ctr", store.read("ctr") + 1, tok):
                    with self.progress:
                        self.writes += 1
                        self.progress.notify_all()
                t.commit()
            except LockError as e:
                self.errors.append(repr(e))
                try:
                    t.abort()
                except LockError:
                    pass

    def wait_for(self, n, timeout, what):
        """Until ``n`` more writes than now are done (woken by each write)."""
        with self.progress:
            target = self.writes + n
            assert self.progress.wait_for(lambda: self.writes >= target, timeout), f"no {n} writes {what}"

    def stop(self):
        self._stop.set()
        for th in self._ths:
            th.join(30)
        assert not any(th.is_alive() for th in self._ths)

    def check(self):
        assert self.store.refused == 0
        assert self.store.read("ctr") == self.writes                 # no lost update
        toks = self.store.tokens["ctr"]
        assert toks == sorted(set(toks))                             # tokens only grew


@pytest.mark.service
@pytest.mark.slow
def test_split_brain_sigstop_fenced_store(rcluster):
    c = rcluster(shards=1, replicas=2)
    cl = c.connect(session_ttl=15, request_timeout=10)
    work = Increments(cl, threads=3, timeout=10)
    try:
        work.wait_for(20, 10, "before the pause")
        old = c.primary(0)
        pid = c.pid(0)
        os.kill(pid, signal.SIGSTOP)
        try:
            new = c.wait_primary(0, c.lease_ttl + 5, exclude=old)
            work.wait_for(20, 15, "on the new primary")
        finally:
            os.kill(pid, signal.SIGCONT)
        work.wait_for(20, 15, "after the old primary resumed")
        assert c.primary(0) == new
    finally:
        work.stop()
    cl.close()
    work.check()                                 # no refused write, no lost update, tokens only grew
    # the old primary stepped down to a standby
    from lockmgr.service import admin, wire
    def stepped_down():
        try:
            return admin.request(c.endpoints[0][old], wire.REPL_ROLE, (), timeout=1)["role"] == "standby"
        except LockError:
            return False
    wait_until(stepped_down, 15, "the old primary to step down")
    role = admin.request(c.endpoints[0][old], wire.REPL_ROLE, (), timeout=5)
    assert role["stepdowns"] >= 1 and role["primary"] == c.endpoints[0][new]


@pytest.mark.service
@pytest.mark.slow
def test_etcd_killed_grants_stop_and_resume(rcluster):
    c = rcluster(shards=1, replicas=2)
    cl = c.connect(session_ttl=30, request_timeout=1.0)
    p = cl.begin(gtrid="kept")
    p.lock(("db", "t", 1), Mode.X)
    p.prepare()
    c.stop_etcd()
    k0 = time.monotonic()
    # grants stop within the lease TTL: a nowait lock eventually gets no answer
    stopped_at = None
    while time.monotonic() - k0 < c.lease_ttl + 3:
        t = cl.begin()
        try:
            t.lock(("db", "t", 2), Mode.X, timeout=0.5)
            t.commit()
        except LockError:
            stopped_at = time.monotonic() - k0
            try:
                t.abort()
            except LockError:
                pass
            break
    # (a lock that got no answer fails after the request timeout, 1 s)
    assert stopped_at is not None and stopped_at <= c.lease_ttl + 1.0 + 1.0, stopped_at
    c.start_etcd()
    deadline = time.monotonic() + 20
    while True:                                                  # grants resume
        t = cl.begin()
        try:
            assert t.lock(("db", "t", 3), Mode.X, timeout=5) > 0
            t.commit()
            break
        except LockError:
            assert time.monotonic() < deadline, "grants did not resume after etcd came back"
            try:
                t.abort()
            except LockError:
                pass
    assert cl.recover() == ["kept"]                              # no lost prepare
    cl.resolve("kept", False)
    cl.close()


FAILOVERS = 20


@pytest.mark.service
@pytest.mark.slow
def test_repeated_failovers_tokens_grow(rcluster):
    """FAILOVERS failovers back and forth (the primary SIGKILLed, or stopped: its
    lease revoked, in turn; the old one restarted as a standby) while threads run
    read-increment-write on a fenced store: tokens only grow, no lost update; a
    transaction prepared before each failover is never lost."""
    c = rcluster(shards=1, replicas=2, grace=5)
    cl = c.connect(session_ttl=30, request_timeout=8)     # (the watch re-points the client well before)
    work = Increments(cl, threads=2, timeout=15)
    gtrids = []
    epochs = []
    try:
        for k in range(FAILOVERS):
            work.wait_for(3, 20, f"before failover {k}")
            p = cl.begin(gtrid=f"g{k}")
            p.lock(("db", "prepared", k), Mode.X, timeout=15)
            p.prepare()                                      # acknowledged: on both replicas' disks
            gtrids.append(f"g{k}")
            old = c.primary(0)
            if k % 2 == 0:
                c.kill(0)                                    # a crash: the lease runs out in etcd
            else:
                c.terminate(0)                               # a stop: the primary revokes its lease
            new = c.wait_primary(0, c.lease_ttl + 5, exclude=old)
            epochs.append(c.leader(0)["epoch"])
            c.restart(0, replica=old)                        # back, as a standby (writes go on meanwhile)
            c.wait_in_sync(0, 10)                            # ... and a member: the next failover can go to it
            assert c.primary(0) == new
        work.wait_for(3, 20, "after the last failover")
    finally:
        work.stop()
    assert epochs == sorted(set(epochs))                         # a new epoch each time
    work.check()                                                 # tokens only grew, no lost update
    assert work.errors == []                                     # and no transaction of it failed
    assert sorted(cl.recover()) == sorted(gtrids)                # no lost prepare
    for g in gtrids:
        cl.resolve(g, True)
    assert cl.recover() == []
    cl.close()


@pytest.mark.service
@pytest.mark.slow
def test_standby_dead_with_on_standby_loss_fail(rcluster):
    c = rcluster(shards=1, replicas=2, sync_timeout=0.5, on_standby_loss="fail")
    cl = c.connect(session_ttl=30, request_timeout=10)
    p = cl.begin(gtrid="ok-1")
    p.lock(("db", "t", 1), Mode.X)
    p.prepare()                                   # on both disks
    standby = 1 - c.primary(0)
    c.kill(0, replica=standby)
    q = cl.begin(gtrid="refused-1")
    q.lock(("db", "t", 2), Mode.X)
    with pytest.raises(LockError, match="not durable|required"):
        q.prepare()                               # refused, loudly: never acknowledged on one disk
    q.abort()
    c.restart(0, replica=standby)
    c.wait_in_sync(0, 10)
    r = cl.begin(gtrid="ok-2")
    r.lock(("db", "t", 3), Mode.X)
    r.prepare()
    assert sorted(cl.recover()) == ["ok-1", "ok-2"]      # the refused one is not in doubt anywhere
    # the primary is lost: the standby (in sync again) has both prepares
    old = c.primary(0)
    c.kill(0, wipe=True)
    c.wait_primary(0, c.lease_ttl + 5, exclude=old)
    cl2 = c.connect()
    assert sorted(cl2.recover()) == ["ok-1", "ok-2"]
    # with "fail", decisions need a standby too: the wiped machine comes back empty, a new
    # member once it has the new primary's snapshot
    c.restart(0, replica=old)
    c.wait_in_sync(0, 10)
    cl2.resolve("ok-1", True)
    cl2.resolve("ok-2", False)
    cl.close()
    cl2.close()


@pytest.mark.service
def test_cross_shard_deadlock_found_before_and_after_a_failover(rcluster):
    """Deadlock probes in replica sets: each primary takes its peers' endpoints from
    etcd's leader keys and follows them, so a cycle across the two shards is found
    (one victim, DeadlockDetected) before and after shard 0's primary moves."""
    c = rcluster()
    [t0] = tables_on(0, 2)
    [t1] = tables_on(1, 2)
    cl = c.connect(session_ttl=10, request_timeout=10)

    def cycle(row):
        a = cl.begin()
        b = cl.begin()                               # younger: the victim
        a.lock(("db", t0, row), Mode.X)
        b.lock(("db", t1, row), Mode.X)
        wa = Waiter(lambda: a.lock(("db", t1, row), Mode.X, timeout=20))
        wait_until_waiting(cl, a)
        wb = Waiter(lambda: b.lock(("db", t0, row), Mode.X, timeout=20))
        # a lock timeout (20 s) would be LockTimeout: DeadlockDetected comes from the probes
        assert (wa.outcome(15), wb.outcome(15)) == ("ok", "DeadlockDetected")
        a.commit()
        b.abort()
        assert [r["kind"] for r in cl.deadlocks() if r["victim"] == b.id] == ["distributed"]

    cycle(1)
    old = c.primary(0)
    c.kill(0)
    new = c.wait_primary(0, c.lease_ttl + 5, exclude=old)
    c.wait_peers(10)                                 # shard 1 follows the move; the new primary knows shard 1
    from lockmgr.service import admin, wire
    role = admin.request(c.endpoints[0][new], wire.REPL_ROLE, (), timeout=5)
    assert role["peers"][0] == c.endpoints[0][new] != c.endpoints[0][old]
    cycle(2)
    cl.close()


@pytest.mark.service
def test_asyncio_client_follows_a_new_primary(rcluster):
    """lockmgr.aio.connect(etcd=, cluster=) follows a failover as the sync client does:
    the socket moves to the new primary, the transaction's lock is reclaimed with
    its token, and it commits."""
    c = rcluster(shards=1)

    async def main():
        loop = asyncio.get_running_loop()
        ac = await lockmgr.aio.connect(etcd=c.etcd_url, cluster=c.cluster_name, session_ttl=10,
                                       request_timeout=4)
        try:
            t = ac.begin()
            tok = await t.lock(("db", "t", 1), Mode.X)
            old = c.primary(0)
            await loop.run_in_executor(None, c.kill, 0)
            new = await loop.run_in_executor(None, c.wait_primary, 0, c.lease_ttl + 5, old)
            assert await t.lock(("db", "t", 1), Mode.X) == tok       # reclaimed there, same token
            await t.commit()
            assert ac.endpoints == [c.endpoints[0][new]]
            t2 = ac.begin()
            assert await t2.lock(("db", "t", 1), Mode.X, timeout=5) > tok    # a new epoch's token
            await t2.commit()
        finally:
            await ac.close()
    asyncio.run(asyncio.wait_for(main(), 30))


def test_options_replica_sets_do_not_implement_are_refused(tmp_path):
    """LocalCluster's options that a replicated cluster does not implement are an
    error naming them (before anything starts), never silently dropped."""
    from lockmgr import LocalCluster
    with pytest.raises(InvalidRequest, match="secure"):
        LocalCluster(1, replicas=2, data_dir=str(tmp_path), secure=True)
    with pytest.raises(InvalidRequest, match="metrics, quotas"):
        LocalCluster(1, replicas=2, data_dir=str(tmp_path), quotas="locks=10", metrics=True)
    with pytest.raises(InvalidRequest, match="no_such_option"):
        LocalCluster(1, replicas=2, data_dir=str(tmp_path), no_such_option=1)
    assert os.listdir(tmp_path) == []
