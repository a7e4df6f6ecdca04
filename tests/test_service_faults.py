"""Faults on purpose: a client stopped past its lease (SIGSTOP), a shard
SIGKILLed and restarted, many threads and an asyncio client at once, and a
Jepsen-style history check of hold intervals and fencing tokens.

Every process is started here and stopped by PID; every wait is bounded."""

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import lockmgr
from lockmgr import (
    DeadlockDetected,
    LocalCluster,
    LockError,
    LockTimeout,
    Mode,
    SessionExpired,
    ShardUnavailable,
    TransactionAborted,
)

from helpers import tables_on
from jepsen import check_history

pytestmark = pytest.mark.service

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import sys, lockmgr
c = lockmgr.connect(sys.argv[1], session_ttl=1.0, request_timeout=2.0)
t = c.begin()
t.lock(("db", "t", 1), lockmgr.Mode.X)
u = c.begin()
u.lock(("db", "u", 1), lockmgr.Mode.S)
print("LOCKED", flush=True)
sys.stdin.readline()          # the test SIGSTOPs us here, then SIGCONTs and writes a line
for call in (lambda: t.lock(("db", "t", 2)), t.commit, u.abort, lambda: c.begin()):
    try:
        call()
        print("OK", flush=True)
    except lockmgr.SessionExpired as e:
        print("SessionExpired", flush=True)
    except Exception as e:
        print("OTHER", type(e).__name__, e, flush=True)
"""


def _readline(proc, timeout):
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        assert sel.select(timeout), "child did not answer in time"
        return proc.stdout.readline().decode().strip()
    finally:
        sel.close()


def test_sigstopped_client_loses_its_lease(cluster):
    env = dict(os.environ, PYTHONPATH=ROOT)
    child = subprocess.Popen([sys.executable, "-c", CHILD, ",".join(cluster.endpoints)], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert _readline(child, 20) == "LOCKED"
        os.kill(child.pid, signal.SIGSTOP)
        with cluster.connect() as other:
            t = other.begin()
            t0 = time.monotonic()
            tok = t.lock(("db", "t", 1), Mode.X, timeout=15)   # granted once the child's lease runs out
            waited = time.monotonic() - t0
            assert tok > 0 and 0.5 < waited < 15
            os.kill(child.pid, signal.SIGCONT)
            child.stdin.write(b"go\n")
            child.stdin.flush()
            # the old session's transactions raise SessionExpired; begin() opens a new
            # session (issue 15: the client needs no rebuild)
            assert [_readline(child, 20) for _ in range(4)] == ["SessionExpired"] * 3 + ["OK"]
            t.commit()
    finally:
        os.kill(child.pid, signal.SIGCONT)
        child.kill()
        child.wait()


def test_shard_killed_and_restarted():
    # grace=0: no grace period, so nothing is reclaimed (tests/test_service_reclaim.py has the rest)
    with LocalCluster(2, partition_depth=2, grace=0) as c:
        client = c.connect(session_ttl=10.0, request_timeout=1.0)
        row = ("db", tables_on(1, 2)[0], 0)
        t = client.begin()
        tok1 = t.lock(row, Mode.X)
        epoch1 = client._eng.epoch[1]
        c.kill(1)
        with pytest.raises(ShardUnavailable):
            t.lock(row[:2] + (99,), Mode.X)
        c.restart(1)
        # the client reopens its session on the restarted shard (new epoch);
        # a new transaction works there and its token is larger than before
        deadline = time.monotonic() + 15
        while True:
            u = client.begin()
            try:
                tok2 = u.lock(row, Mode.X)
                break
            except ShardUnavailable:
                u.abort()
                assert time.monotonic() < deadline, "shard did not come back"
        assert client._eng.epoch[1] > epoch1
        assert tok2 > tok1                                   # fencing tokens keep increasing
        # the old transaction's locks on shard 1 were lost: it is aborted, clearly
        with pytest.raises(TransactionAborted, match="restarted"):
            t.lock(row[:2] + (100,), Mode.X)
        with pytest.raises(TransactionAborted):
            t.commit()
        u.commit()
        client.close()


def test_many_threads_and_an_asyncio_client(cluster):
    """X locks guard counters: no lost updates across 6 threads sharing one
    client, 2 threads with their own clients, and 16 asyncio tasks."""
    counters = {}
    keys = [("db", "t", k) for k in range(12)]   # one shard: every deadlock is local (found at once)
    errors = []
    per_worker = 40

    def bump(key, by):
        v = counters.get(key, 0)
        time.sleep(0)                 # invite a race if the lock did not exclude
        counters[key] = v + by

    def run_sync(client, seed):
        rnd = random.Random(seed)
        done = 0
        deadline = time.monotonic() + 60
        while done < per_worker and time.monotonic() < deadline:
            a, b = rnd.sample(keys, 2)
            t = client.begin()
            try:
                t.lock(a, Mode.X, timeout=2)
                t.lock(b, Mode.X, timeout=2)
                bump(a, 1)
                bump(b, 1)
                t.commit()
                done += 1
            except (DeadlockDetected, LockTimeout):
                t.abort()
            except Exception as e:  # recorded; the test fails below
                errors.append(e)
                return

    async def run_async(aclient, seed):
        rnd = random.Random(seed)
        done = 0
        deadline = time.monotonic() + 60
        while done < per_worker // 4 and time.monotonic() < deadline:
            a, b = rnd.sample(keys, 2)
            t = aclient.begin()
            try:
                await t.lock(a, Mode.X, timeout=2)
                await t.lock(b, Mode.X, timeout=2)
                bump(a, 1)
                bump(b, 1)
                await t.commit()
                done += 1
            except (DeadlockDetected, LockTimeout):
                await t.abort()

    async def async_main():
        async with await lockmgr.aio.connect(cluster.endpoints) as ac:
            await asyncio.gather(*(run_async(ac, 100 + i) for i in range(16)))

    shared = cluster.connect()
    own = [cluster.connect() for _ in range(2)]
    ths = [threading.Thread(target=run_sync, args=(shared, i)) for i in range(6)]
    ths += [threading.Thread(target=run_sync, args=(own[i], 50 + i)) for i in range(2)]
    ths.append(threading.Thread(target=lambda: asyncio.run(async_main())))
    for th in ths:
        th.start()
    for th in ths:
        th.join(120)
        assert not th.is_alive()
    assert not errors, errors
    total = 2 * (8 * per_worker + 16 * (per_worker // 4))
    assert sum(counters.values()) == total
    shared.close()
    for o in own:
        o.close()


def test_jepsen_history(cluster):
    """Clients record every hold interval (monotonic clock, taken inside the
    true hold) with its token. No two incompatible holds overlap on a resource,
    and of two incompatible holds the later one has the larger token (between
    compatible holds, which may overlap, recorded intervals say nothing about
    grant order)."""
    history = []
    hl = threading.Lock()
    resources = [("db", "j", k) for k in range(4)] + [("jr",)]
    errors = []

    def client_loop(seed):
        rnd = random.Random(seed)
        with cluster.connect() as c:
            for _ in range(40):
                t = c.begin()
                r = rnd.choice(resources)
                m = Mode.X if rnd.random() < 0.6 else Mode.S
                try:
                    tok = t.lock(r, m, timeout=3)
                    start = time.monotonic()
                    time.sleep(rnd.random() * 0.002)
                    end = time.monotonic()
                    t.commit()
                    with hl:
                        history.append((r, m, tok, start, end))
                except (LockTimeout, DeadlockDetected):
                    t.abort()
                except LockError as e:
                    errors.append(e)

    ths = [threading.Thread(target=client_loop, args=(i,)) for i in range(8)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(120)
        assert not th.is_alive()
    assert not errors, errors
    assert len(history) > 200
    for hs in check_history(history).values():
        xs = [h[2] for h in hs if h[1] == Mode.X]
        assert xs == sorted(xs) and len(set(xs)) == len(xs)


@pytest.mark.parametrize("endpoint, text", [
    ("tcp://127.0.0.1", "needs a host and a port"),
    ("tcp://127.0.0.1:0", "needs a host and a port"),
    ("tcp://127.0.0.1:70000", "needs a host and a port"),
    ("tcp://:7400", "needs a host and a port"),
    ("http://127.0.0.1:7400", "transport 'http' is not supported"),
    ("ipc://", "needs a path"),
    ("127.0.0.1:7400", "is not a ZeroMQ endpoint"),
])
def test_bad_endpoints_are_invalid_requests(endpoint, text):
    with pytest.raises(lockmgr.InvalidRequest, match=text):
        lockmgr.connect(endpoint)
    with pytest.raises(lockmgr.InvalidRequest, match=text):
        asyncio.run(lockmgr.aio.connect(["tcp://127.0.0.1:7400", endpoint]))


PARENT = r"""
import sys, lockmgr
c = lockmgr.LocalCluster(2)
c.__enter__()
print(" ".join(str(p) for p in c.pids), flush=True)
sys.stdin.readline()          # SIGKILLed here: no clean-up runs
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _kill_the_parent_and_wait_for_its_shards(src, within, busy=0.0):
    """Run ``src`` (it starts a LocalCluster and prints the shard pids), SIGKILL it
    ``busy`` seconds later, and assert that its shards are gone ``within`` seconds."""
    parent = subprocess.Popen([sys.executable, "-c", src], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.abspath(__file__))})
    pids = []
    try:
        pids = [int(p) for p in _readline(parent, 60).split()]
        assert pids and all(_alive(p) for p in pids)
        time.sleep(busy)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + within
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids), "shards outlived the process that started them"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_shards_stop_when_the_cluster_process_is_killed():
    _kill_the_parent_and_wait_for_its_shards(PARENT, within=10)


BUSY_PARENT = r"""
import sys, zmq, lockmgr
from helpers import slow_frame
c = lockmgr.LocalCluster(1)
c.__enter__()
s = zmq.Context().socket(zmq.DEALER)
s.connect(c.endpoints[0])
frame = slow_frame()
for _ in range(30):           # some 10-30 s of decoding for the shard
    s.send(frame)
print(" ".join(str(p) for p in c.pids), flush=True)
sys.stdin.readline()          # SIGKILLed here: no clean-up runs
"""


@pytest.mark.slow
def test_a_busy_shard_stops_when_the_cluster_process_is_killed():
    """The --parent-pid check is honoured while the shard works through a queue
    of huge frames (each loop turn is bounded), not only once they are done."""
    _kill_the_parent_and_wait_for_its_shards(BUSY_PARENT, within=8, busy=1.0)


def test_serve_refuses_a_parent_pid_that_is_not_its_parent(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lockmgr", "serve", "--endpoint", "tcp://127.0.0.1:0",
                        "--data-dir", str(tmp_path / "d"), "--parent-pid", str(os.getppid())],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2 and "is not this process's parent" in r.stderr, (r.returncode, r.stderr)
    assert "READY" not in r.stdout


@pytest.mark.service
def test_client_logs_its_session_expiring(tmp_path, caplog):
    """The client logs one line (logger lockmgr.client) when its session expires:
    here a shard stopped (SIGSTOP) past the session's TTL."""
    import logging
    with LocalCluster(1, data_dir=str(tmp_path)) as c:
        cl = lockmgr.connect(c.endpoints, session_ttl=0.4, request_timeout=0.2)
        t = cl.begin()
        t.lock(("db", "x", 0), Mode.X)
        with caplog.at_level(logging.INFO, logger="lockmgr.client"):
            os.kill(c.pids[0], signal.SIGSTOP)
            try:
                deadline = time.monotonic() + 10
                while not cl._eng.lease_over() and time.monotonic() < deadline:
                    time.sleep(0.05)
                with pytest.raises(SessionExpired):
                    t.lock(("db", "x", 1), Mode.X)
            finally:
                os.kill(c.pids[0], signal.SIGCONT)
        lines = [r.getMessage() for r in caplog.records if r.name == "lockmgr.client"]
        assert any("expired" in m and f"{cl._eng.session:#x}" in m for m in lines), lines
        cl.close()
