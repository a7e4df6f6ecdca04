"""Releases that don't wait: ``commit(wait=False)``, ``abort(wait=False)`` and
``unlock(resource, wait=False)`` return at once; the release leaves with the
client's next frame to the shard (or within a few ms), so the same client's
later requests find the lock released; a failure is raised by the next call;
``close()`` sends what is queued; a killed client's queued releases are covered
by its lease. (Under dropped, duplicated and reordered messages:
tests/test_service_proxy.py.)"""

import asyncio
import subprocess
import sys
import threading

import msgpack
import pytest
import zmq

import lockmgr
import lockmgr.aio
from lockmgr import InvalidRequest, LockManager, LockNotAvailable, Mode
from lockmgr.service import wire

from helpers import wait_until

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def cluster_options():
    return {"shards": 2, "partition_depth": 2}


def test_the_clients_next_request_finds_the_lock_released(cluster):
    with cluster.connect() as c:
        for k in range(50):
            r = ("db", "nw", k % 3)
            t = c.begin()
            t.lock(r, Mode.X)
            t.commit(wait=False)
            assert t.state == "committed"
            t2 = c.begin()
            t2.lock(r, Mode.X, nowait=True)          # no LockNotAvailable: the release went first
            t2.abort(wait=False)
        t3 = c.begin()
        t3.lock(("db", "nw", 9), Mode.X)
        t3.lock(("db", "nw", 10), Mode.X)
        t3.unlock(("db", "nw", 10), wait=False)
        assert t3.held() == {("db",): Mode.IX, ("db", "nw"): Mode.IX, ("db", "nw", 9): Mode.X}
        t3.commit()


def test_a_failed_nowait_release_is_raised_by_the_next_call(cluster):
    with cluster.connect() as c:
        t = c.begin()
        t.lock(("db", "nf", 1), Mode.X)
        t.unlock(("db", "nf", 2), wait=False)        # not held: the shard refuses it
        t.held()                                     # a round trip: the refusal has come back
        with pytest.raises(InvalidRequest, match="does not hold"):
            t.lock(("db", "nf", 3), Mode.X)
        t.lock(("db", "nf", 3), Mode.X)              # raised once; the session goes on
        t.commit()


def test_close_sends_the_queued_releases(cluster):
    with cluster.connect() as other:
        for k in range(5):
            c = cluster.connect()
            t = c.begin()
            t.lock(("db", "nc", k), Mode.X)
            t.commit(wait=False)
            c.close()
            o = other.begin()
            o.lock(("db", "nc", k), Mode.X, nowait=True)
            o.commit()


CHILD = r"""
import os, signal, sys, lockmgr
c = lockmgr.connect(sys.argv[1], session_ttl=1.0)
t = c.begin()
t.lock(("db", "nk", 1), lockmgr.Mode.X)
print("locked", flush=True)
t.commit(wait=False)
os.kill(os.getpid(), signal.SIGKILL)     # the release may or may not have left
"""


def test_a_killed_clients_queued_release_is_covered_by_its_lease(cluster):
    p = subprocess.run([sys.executable, "-c", CHILD, ",".join(cluster.endpoints)], capture_output=True, text=True,
                       timeout=60)
    assert "locked" in p.stdout
    with cluster.connect() as c:
        t = c.begin()
        t.lock(("db", "nk", 1), Mode.X, timeout=10)      # granted at the latest when the lease runs out
        t.commit()


def test_aio_nowait_commit(cluster):
    async def main():
        async with await lockmgr.aio.connect(cluster.endpoints) as ac:
            for k in range(20):
                t = ac.begin()
                await t.lock(("db", "na", k % 2), Mode.X)
                await t.commit(wait=False)
                t2 = ac.begin()
                await t2.lock(("db", "na", k % 2), Mode.X, nowait=True)
                await t2.abort(wait=False)
    asyncio.run(main())
    with cluster.connect() as c:
        wait_until(lambda: not [r for r in c.snapshot() if r.resource[:2] == ("db", "na")], 10,
                   "the asyncio client's no-wait releases")


class Recorder:
    """A fake shard that answers HELLO and records the request types of each frame."""

    def __init__(self):
        self.ctx = zmq.Context()
        self.s = self.ctx.socket(zmq.ROUTER)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.bind("tcp://127.0.0.1:0")
        self.endpoint = self.s.getsockopt_string(zmq.LAST_ENDPOINT)
        self.frames = []

    def serve(self, n):
        for _ in range(n):
            assert self.s.poll(5000)
            ident, frame = self.s.recv_multipart()
            _, _, _, reqs = msgpack.unpackb(frame, raw=False)
            self.frames.append([(r[0], r[-1]) for r in reqs])
            reps = []
            for typ, seq, *_rest in reqs:
                if typ == wire.HELLO:
                    reps.append([seq, wire.OK, [1, 0, 1, 2, 77]])
                elif typ == wire.LOCK:
                    reps.append([seq, wire.OK, [1 << 40 | seq, 0, 1]])
                elif not (typ == wire.RELEASE and _rest[-1] is True):
                    reps.append([seq, wire.OK, []])
            if reps:
                self.s.send_multipart([ident, wire.pack_replies(reps)])

    def close(self):
        self.s.close(0)
        self.ctx.term()


def test_a_nowait_release_travels_before_the_next_request():
    """The shard sees the quiet RELEASE (flagged true) no later than the LOCK
    the client sends after it -- in the same frame when the LOCK leaves first."""
    rec = Recorder()
    try:
        th = threading.Thread(target=rec.serve, args=(3,), daemon=True)
        th.start()
        c = lockmgr.connect(rec.endpoint, request_timeout=5.0)
        t = c.begin()
        t.lock(("db", "x", 1), Mode.X)
        t.commit(wait=False)
        c.begin().lock(("db", "x", 2), Mode.X)
        th.join(10)
        flat = [r for f in rec.frames for r in f]
        quiet = flat.index((wire.RELEASE, True))
        second_lock = [i for i, r in enumerate(flat) if r[0] == wire.LOCK][1]
        assert quiet < second_lock, rec.frames
        c._eng.shutdown()
    finally:
        rec.close()


def test_the_embedded_manager_accepts_wait():
    mgr = LockManager()
    t = mgr.begin()
    t.lock(("a", 1), Mode.X)
    t.lock(("a", 2), Mode.X)
    t.unlock(("a", 2), wait=False)
    t.commit(wait=False)
    assert t.state == "committed"
    t2 = mgr.begin()
    t2.lock(("a", 1), Mode.X, nowait=True)       # released at once, as always here
    t2.abort(wait=False)
    assert mgr.snapshot() == []
    with pytest.raises(LockNotAvailable):         # the keyword changes nothing else
        t3, t4 = mgr.begin(), mgr.begin()
        t3.lock("z", Mode.X)
        t4.lock("z", Mode.X, nowait=True)


@pytest.mark.parametrize("bad", ["no", 0, None, 1.0])
def test_wait_must_be_a_bool(cluster, bad):
    mgr = LockManager()
    et = mgr.begin()
    et.lock("e", Mode.X)
    with cluster.connect() as c:
        t = c.begin()
        t.lock(("db", "nb", 1), Mode.X)
        for call in (lambda: t.commit(wait=bad), lambda: t.abort(wait=bad),
                     lambda: t.unlock(("db", "nb", 1), wait=bad), lambda: et.commit(wait=bad),
                     lambda: et.abort(wait=bad), lambda: et.unlock("e", wait=bad)):
            with pytest.raises(InvalidRequest, match="wait must be True or False"):
                call()
        assert t.state == "active" and et.state == "active"    # nothing changed
        assert t.held()[("db", "nb", 1)] is Mode.X
        t.commit()
        et.commit()
