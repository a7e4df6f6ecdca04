"""The asyncio client's event loop as the owner of the sockets
(lockmgr.service.client.engine._LoopDriver; docs/service.md ("Client engine")): hand-overs between
the loop, synchronous threads of the same client and the housekeeper, a
loop that stops while it owns the sockets, cancellation, lock waits longer
than the lease, a shard that stops answering."""

import asyncio
import os
import signal
import threading
import time

import pytest

import lockmgr
import lockmgr.aio
from lockmgr import LocalCluster, LockTimeout, Mode
from lockmgr.service.client.engine import _LoopDriver
from lockmgr.service.wire import ShardUnavailable

pytestmark = pytest.mark.service


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_loop_owns_the_sockets_and_lets_go_when_idle(cluster):
    async def main():
        async with await lockmgr.aio.connect(cluster.endpoints) as ac:
            eng = ac._eng
            owners = []

            async def worker(k):
                for i in range(30):
                    async with ac.transaction() as t:
                        await t.lock(("db", "aio", k, i), Mode.X)
                        owners.append(type(eng._owner))
            await asyncio.gather(*(worker(k) for k in range(8)))
            assert _LoopDriver in owners            # the loop served its own calls
            await asyncio.sleep(0.05)
            assert eng._owner is None                # and let go once idle
            assert not eng._driver.attached
    run(main())


def test_answered_calls_leave_no_garbage_and_no_timers_behind(cluster):
    """An asyncio call is freed when its transaction is done: no reference
    cycle (the future once held the call that holds it), and the retry timers
    of answered calls are swept out of the heap as it grows (each kept a call,
    its arguments and future alive for a retry interval, and the full
    collections that walked them stalled every task of the loop)."""
    import gc

    from lockmgr.service.client.engine import _HEAP_SWEEP_MIN

    async def main():
        async with await lockmgr.aio.connect(cluster.endpoints) as ac:
            eng = ac._eng

            async def worker(k, n):
                for i in range(n):
                    t = ac.begin()
                    await t.lock(("db", "gc", k, i), Mode.X, timeout=5.0)
                    await t.commit()
            await asyncio.gather(*(worker(k, 10) for k in range(8)))
            gc.collect()
            gc.disable()
            try:
                await asyncio.gather(*(worker(k, 250) for k in range(8)))      # 4,000 calls
                assert len(eng._heap) <= 2 * _HEAP_SWEEP_MIN + 16, len(eng._heap)
                found = gc.collect()
            finally:
                gc.enable()
            assert found < 200, f"{found} objects in reference cycles after 2,000 transactions"
    run(main())


def test_sync_threads_and_tasks_share_one_engine(cluster):
    """Threads calling the sync API of the very engine the loop owns: no
    lost update, no hang (the loop promotes a waiting thread)."""
    counters = {}
    keys = [("db", "share", k) for k in range(6)]

    def bump(key):
        v = counters.get(key, 0)
        time.sleep(0)
        counters[key] = v + 1

    async def main():
        async with await lockmgr.aio.connect(cluster.endpoints) as ac:
            sync = ac._sync

            def thread(n):
                for i in range(25):
                    key = keys[(n + i) % len(keys)]
                    with sync.transaction() as t:
                        t.lock(key, Mode.X, timeout=10)
                        bump(key)

            async def task(n):
                for i in range(25):
                    key = keys[(n + i) % len(keys)]
                    async with ac.transaction() as t:
                        await t.lock(key, Mode.X, timeout=10)
                        bump(key)
                        await asyncio.sleep(0)

            loop = asyncio.get_running_loop()
            ths = [loop.run_in_executor(None, thread, n) for n in range(3)]
            await asyncio.gather(*ths, *(task(n) for n in range(6)))
    run(main())
    assert sum(counters.values()) == 9 * 25


def test_blocking_sync_call_on_the_loop_thread_while_the_loop_owns(cluster):
    """A coroutine that calls the sync API (blocking its own loop) while
    the loop owns the sockets takes them back instead of deadlocking."""
    async def main():
        async with await lockmgr.aio.connect(cluster.endpoints) as ac:
            other = ac.begin()
            await other.lock(("db", "blk", 1), Mode.X)
            waiter = ac.begin()
            wait_task = asyncio.ensure_future(waiter.lock(("db", "blk", 1), Mode.X, timeout=10))
            await asyncio.sleep(0.05)
            assert isinstance(ac._eng._owner, _LoopDriver)   # a call outstanding: the loop owns
            t = ac._sync.begin()
            t.lock(("db", "blk", 2), Mode.X)                  # blocks the loop; must not hang
            t.commit()
            await other.commit()
            await wait_task
            await waiter.commit()
    run(main(), timeout=30)


def test_loop_stops_while_owning_then_sync_calls_still_work(cluster):
    """The loop stops with a lock wait outstanding (the driver owns the
    sockets); the housekeeper takes them over, sync calls on the same engine
    go on, and the stopped loop's stale readers let go when it runs again."""
    holder = cluster.connect()
    h = holder.begin()
    h.lock(("db", "stop", 1), Mode.X)
    loop = asyncio.new_event_loop()
    try:
        ac = loop.run_until_complete(lockmgr.aio.connect(cluster.endpoints))
        t = ac.begin()
        fut = loop.create_task(t.lock(("db", "stop", 1), Mode.X, timeout=30))
        loop.run_until_complete(asyncio.sleep(0.05))     # the wait is parked; the loop stops
        assert isinstance(ac._eng._owner, _LoopDriver)
        s = ac._sync.begin()
        t0 = time.monotonic()
        s.lock(("db", "stop", 2), Mode.X)
        s.commit()
        assert time.monotonic() - t0 < 5
        h.commit()                                       # grants the parked wait
        loop.run_until_complete(asyncio.wait_for(fut, 10))
        loop.run_until_complete(t.commit())
        for i in range(20):                              # the loop owns again, or is served
            loop.run_until_complete(_one(ac, ("db", "stop", 3, i)))
        loop.run_until_complete(ac.close())
    finally:
        loop.close()
        holder.close()


async def _one(ac, key):
    async with ac.transaction() as t:
        await t.lock(key, Mode.X)


def test_cancel_a_waiting_task_aborts_its_transaction(cluster):
    async def main():
        async with await lockmgr.aio.connect(cluster.endpoints) as ac:
            h = ac.begin()
            await h.lock(("db", "cancel", 1), Mode.X)
            w = ac.begin()
            task = asyncio.ensure_future(w.lock(("db", "cancel", 1), Mode.X))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert w.state == "aborted"
            await h.commit()
            for i in range(10):                      # the client goes on
                await _one(ac, ("db", "cancel", 2, i))
            snap = await ac.snapshot()
            assert not [r for r in snap if r.txn in (h.id, w.id)]
    run(main())


def test_lock_wait_longer_than_the_lease(cluster):
    """While the loop owns the sockets for a long lock wait, heartbeats
    (queued by the housekeeper, sent by the loop) keep the session alive."""
    holder = cluster.connect()
    h = holder.begin()
    h.lock(("db", "lease", 1), Mode.X)
    threading.Timer(1.5, h.commit).start()

    async def main():
        async with await lockmgr.aio.connect(cluster.endpoints, session_ttl=0.6) as ac:
            t = ac.begin()
            await t.lock(("db", "lease", 1), Mode.X)
            await t.commit()
            assert not ac.expired
    try:
        run(main(), timeout=20)
    finally:
        holder.close()


def test_loop_blocked_by_user_code_while_owning_keeps_the_session(cluster):
    """A task waits for a lock (the loop owns the sockets) while another task
    blocks the loop for longer than the lease: the housekeeper takes the
    sockets over and heartbeats go on; the wait is then granted."""
    holder = cluster.connect()
    h = holder.begin()
    h.lock(("db", "blocked", 1), Mode.X)
    threading.Timer(1.6, h.commit).start()

    async def main():
        async with await lockmgr.aio.connect(cluster.endpoints, session_ttl=0.6) as ac:
            t = ac.begin()
            wait = asyncio.ensure_future(t.lock(("db", "blocked", 1), Mode.X))
            await asyncio.sleep(0.05)
            assert isinstance(ac._eng._owner, _LoopDriver)
            time.sleep(1.2)                          # blocks the loop: 2x the TTL
            await wait
            await t.commit()
            assert not ac.expired
    try:
        run(main(), timeout=20)
    finally:
        holder.close()


def test_lock_timeout_through_the_loop(cluster):
    async def main():
        async with await lockmgr.aio.connect(cluster.endpoints) as ac:
            h = ac.begin()
            await h.lock(("db", "tmo", 1), Mode.X)
            w = ac.begin()
            t0 = time.monotonic()
            with pytest.raises(LockTimeout):
                await w.lock(("db", "tmo", 1), Mode.X, timeout=0.2)
            assert 0.15 < time.monotonic() - t0 < 3
            await w.abort()
            await h.commit()
    run(main())


def test_stopped_shard_fails_the_loops_calls(tmp_path):
    """A shard that stops answering (SIGSTOP): the loop's timer runs the
    heartbeat deadline and fails the outstanding call with ShardUnavailable."""
    with LocalCluster(1, data_dir=str(tmp_path)) as c:
        async def main():
            ac = await lockmgr.aio.connect(c.endpoints, request_timeout=0.5, session_ttl=5.0)
            await _one(ac, ("db", "x", 0))
            os.kill(c.pids[0], signal.SIGSTOP)
            try:
                t = ac.begin()
                t0 = time.monotonic()
                with pytest.raises(ShardUnavailable):
                    await t.lock(("db", "x", 1), Mode.X)
                assert time.monotonic() - t0 < 4
            finally:
                os.kill(c.pids[0], signal.SIGCONT)
            await ac.close()
        run(main(), timeout=30)
