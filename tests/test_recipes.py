"""Recipes (issue 15): leader election with killed leaders, the counting
semaphore's bound, the read-write lock."""

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import lockmgr
from lockmgr import Mode
from lockmgr.recipes import Leadership, ReadWriteLock, Semaphore

from helpers import Waiter

pytestmark = pytest.mark.service

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TTL = 1.0

CANDIDATE = r"""
import sys, time, lockmgr
c = lockmgr.connect(sys.argv[1], session_ttl=float(sys.argv[2]), request_timeout=0.5, name=sys.argv[3])
print("READY", flush=True)
with c.leadership("election") as lead:
    print("LEADER", lead.token, time.monotonic(), flush=True)
    lead.lost.wait()
    print("LOST", flush=True)
"""


@pytest.fixture(scope="module")
def cluster_options():
    return {"shards": 2, "partition_depth": 2}


def test_five_candidates_one_leader_at_a_time_and_a_new_one_within_the_ttl(cluster):
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", CANDIDATE, ",".join(cluster.endpoints), str(TTL), f"c{k}"],
                              env=env, stdout=subprocess.PIPE) for k in range(5)]
    out = queue.Queue()

    def reader(p):
        for raw in p.stdout:
            out.put((p, raw.decode().split()))

    for p in procs:
        threading.Thread(target=reader, args=(p,), daemon=True).start()

    def lines(timeout):
        """(proc, line) read within ``timeout`` s, or None."""
        try:
            return out.get(timeout=timeout)
        except queue.Empty:
            return None

    try:
        ready = 0
        killed_at = 0.0
        leaders = []       # (proc, token, elected at)
        deadline = time.monotonic() + 30
        while len(leaders) < 5:
            assert time.monotonic() < deadline, f"only {len(leaders)} leaders"
            got = lines(5.0)
            assert got is not None, "no candidate spoke within 5 s"
            p, line = got
            if line[0] == "READY":
                ready += 1
                continue
            assert line[0] == "LEADER", line
            tok, at = int(line[1]), float(line[2])
            if leaders:
                prev, prev_tok, _ = leaders[-1]
                assert prev.poll() is not None, "a second leader while the first was alive"
                assert tok > prev_tok                      # the fencing token grows
                assert at - killed_at < TTL + 1.0, at - killed_at   # a new leader within the TTL (+ slack)
            leaders.append((p, tok, at))
            if len(leaders) < 5:
                # nobody else is elected while this one lives (a short look), then kill it
                extra = lines(0.2)
                assert extra is None or extra[1][0] == "READY", extra
                if extra is not None:
                    ready += 1
                killed_at = time.monotonic()
                p.send_signal(signal.SIGKILL)
                p.wait()
        assert len({p.pid for p, _, _ in leaders}) == 5
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_leadership_in_threads_resign_and_lost(cluster):
    clients = [cluster.connect(session_ttl=5.0, request_timeout=5.0) for _ in range(3)]
    log = []
    mu = threading.Lock()
    holding = [0]

    def run(c):
        with c.leadership("threads") as lead:
            with mu:
                holding[0] += 1
                assert holding[0] == 1
                log.append(lead.token)
            assert lead.is_leader and lead.valid_for() > 0 and not lead.lost.is_set()
            time.sleep(0.05)
            with mu:
                holding[0] -= 1
        assert lead.lost.is_set() and not lead.is_leader

    try:
        ws = [Waiter(lambda c=c: run(c)) for c in clients]
        for w in ws:
            w.get(20)
        assert len(log) == 3 and log == sorted(log)
        with pytest.raises(lockmgr.InvalidRequest):
            Leadership(clients[0], 1.5)
        with pytest.raises(lockmgr.LockTimeout):
            with clients[0].leadership("held"):
                with clients[1].leadership("held", timeout=0.1):
                    pass
    finally:
        for c in clients:
            c.close()


def test_leader_lost_is_set_when_the_session_expires(tmp_path):
    with lockmgr.LocalCluster(1, data_dir=str(tmp_path)) as c:
        cl = c.connect(session_ttl=TTL, request_timeout=0.3)
        try:
            with cl.leadership("x") as lead:
                os.kill(c.pids[0], signal.SIGSTOP)
                try:
                    assert lead.lost.wait(5.0)
                    assert not lead.is_leader and lead.valid_for() == 0.0
                finally:
                    os.kill(c.pids[0], signal.SIGCONT)
        finally:
            cl.close()


def test_semaphore_never_admits_more_than_its_limit(cluster):
    limit, nthreads, rounds = 2, 6, 3
    clients = [cluster.connect(request_timeout=5.0) for _ in range(3)]
    mu = threading.Lock()
    active = [0]
    peak = [0]
    tokens = []
    rng = random.Random(15)
    holds = [rng.uniform(0.005, 0.03) for _ in range(nthreads * rounds)]

    def worker(k):
        c = clients[k % len(clients)]
        for r in range(rounds):
            sem = Semaphore(c, "pool", limit)
            assert sem.acquire(timeout=20)
            with mu:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
                assert active[0] <= limit
                tokens.append((sem.slot, sem.token))
            time.sleep(holds[k * rounds + r])
            with mu:
                active[0] -= 1
            sem.release()

    try:
        ws = [Waiter(lambda k=k: worker(k)) for k in range(nthreads)]
        for w in ws:
            w.get(60)
        assert peak[0] == limit
        assert len(tokens) == nthreads * rounds
        for slot in range(limit):      # per slot, tokens grow
            toks = [t for s, t in tokens if s == slot]
            assert toks == sorted(toks)
        sem = Semaphore(clients[0], "pool2", 1)
        other = Semaphore(clients[1], "pool2", 1)
        with sem:
            assert other.acquire(blocking=False) is False
            assert other.acquire(timeout=0.1) is False
        assert other.acquire(blocking=False) is True
        other.release()
        with pytest.raises(lockmgr.InvalidRequest):
            Semaphore(clients[0], "bad", 0)
    finally:
        for c in clients:
            c.close()


def test_read_write_lock(cluster):
    a, b = cluster.connect(request_timeout=5.0), cluster.connect(request_timeout=5.0)
    try:
        rw_a, rw_b = ReadWriteLock(a, "cfg"), ReadWriteLock(b, "cfg")
        with rw_a.read() as r1, rw_b.read() as r2:        # readers share
            assert r1.token > 0 and r2.token > 0 and r1.valid_for() > 0
            with pytest.raises(lockmgr.LockTimeout):
                rw_b.write(timeout=0.1)
        with rw_a.write() as w:
            assert w.token > max(r1.token, r2.token)
            with pytest.raises(lockmgr.LockTimeout):
                rw_b.read(timeout=0.1)
        assert w.lost.is_set()
        t = b.begin()
        assert t.try_lock(("__rwlock__", "cfg"), Mode.X)
        t.commit()
    finally:
        a.close()
        b.close()
