"""The compiled shard core against its .py source, side by side.

lockmgr/service/shard/core.py is compiled by Cython with C types from
core.pxd (setup.py, lockmgr/_compiled.py); its .py source stays the
reference. Here both run in one process -- the module as imported (compiled
where it was built) and the same file loaded from source under another name --
and get the same random request streams: good and bad requests, retries,
replays below the acknowledged sequence number, quiet releases, waits and
their timeouts, lease expiry. After every step their replies, their tables and
their counters must be equal. (On the pure-Python run, LOCKMGR_PUREPYTHON=1,
both are the source: the test then checks only itself.)

The client's compiled modules are compared with their sources end to end:
``test_client_builds_agree`` runs one random transaction script through a
compiled client and cluster and through an all-source one.
"""

import os
import random
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import lockmgr.service.shard.core as compiled_core
from lockmgr._compiled import load_source
from lockmgr.service import wire
from lockmgr.service.shard.server import _unpack_requests

source_core = load_source("lockmgr.service.shard.core", "lockmgr.service.shard._core_from_source")

SESSIONS = [(b"c1", 11), (b"c2", 12), (b"c3", 13)]
PATHS = [["db"], ["db", "t"], ["db", "t", 1], ["db", "t", 2], ["db", "u", 1], ["other"]]
TXNS = [101, 102, 103, 104, 105]


def _bad_request(rnd, seq):
    """A request a confused or hostile client might send."""
    return rnd.choice([
        [wire.LOCK, seq, 101, ["db"], 9, False, None, 0],               # bad mode
        [wire.LOCK, seq, 0, ["db"], 5, False, None, 0],                 # bad txn id
        [wire.LOCK, seq, 101, [1.5], 5, False, None, 0],                # bad component
        [wire.LOCK, seq, 101, ["db"], 5, False, -3, 0],                 # bad timeout
        [wire.LOCK, seq, 101],                                          # short
        [wire.LOCK_MANY, seq, 101, [[["db"], 5], ["x"]], False, None, 0],
        [wire.LOCK_MANY, seq, 101, "items", False, None, 0],
        [wire.UNLOCK, seq, 101, {"a": 1}, False],
        [wire.RELEASE, seq, "txn", True],
        [wire.DOWNGRADE, seq, 101, ["db"], 0],
        [wire.HELD, seq],
        [999, seq],
        ["LOCK", seq],
        [wire.LOCK, seq, -5, ["db"], 5, False, None, 0],
    ])


def _request(rnd, seq):
    tid = rnd.choice(TXNS)
    path = rnd.choice(PATHS)
    kind = rnd.random()
    if kind < 0.35:
        return [wire.LOCK, seq, tid, path, rnd.randint(1, 5), rnd.random() < 0.3,
                rnd.choice([None, 0, 5, 50]), 0]
    if kind < 0.45:
        items = [[rnd.choice(PATHS), rnd.randint(1, 5)] for _ in range(rnd.randint(1, 4))]
        return [wire.LOCK_MANY, seq, tid, items, rnd.random() < 0.3, rnd.choice([None, 10]), 0]
    if kind < 0.55:
        return [wire.UNLOCK, seq, tid, path, rnd.random() < 0.3] + ([True] if rnd.random() < 0.3 else [])
    if kind < 0.75:
        return [wire.RELEASE, seq, tid, rnd.random() < 0.5] + ([True] if rnd.random() < 0.4 else [])
    if kind < 0.8:
        return [wire.DOWNGRADE, seq, tid, path, rnd.randint(1, 5)]
    if kind < 0.87:
        return [wire.HELD, seq, tid]
    if kind < 0.9:
        return [wire.HEARTBEAT, seq]
    return _bad_request(rnd, seq)


class Pair:
    """The two builds of the core, fed alike."""

    def __init__(self, seed):
        self.now = 100.0
        self.cores = []
        for mod in (compiled_core, source_core):
            rb = random.Random(seed)
            self.cores.append(mod.ShardCore(epoch=3, probe_delay=0.010, now=self.now,
                                            random_bytes=lambda k, rb=rb: rb.randbytes(k)))
        self.seq = {sid: 1 for _, sid in SESSIONS}
        self.sent = {sid: [] for _, sid in SESSIONS}      # requests sent, for retries

    def frame(self, conn, sid, ack, reqs, budget=64):
        # through the wire as the server decodes it (LOCK_MANY items packed for the C table)
        _, ack2, reqs2 = _unpack_requests(wire.pack_requests(sid, ack, reqs))
        out = []
        for core in self.cores:
            core.now = self.now
            _, ack3, reqs3 = _unpack_requests(wire.pack_requests(sid, ack, reqs))
            core.frame((conn,), sid, ack3, reqs3, budget)
            while core.resume(budget):
                pass
            core.process_woken()
            out.append(core.take_replies())
        self.check(out)

    def advance(self, dt):
        self.now += dt
        out = []
        for core in self.cores:
            core.now = self.now
            while core.fire_timers(64):
                pass
            core.peer_messages()
            out.append(core.take_replies())
        self.check(out)

    def check(self, out):
        a, b = out
        assert a == b
        ca, cb = self.cores
        assert ca.table.snapshot() == cb.table.snapshot()
        assert dict(ca.counters) == dict(cb.counters)
        assert ca.handled == cb.handled and len(ca.backlog) == len(cb.backlog)

    def run(self, rnd, steps):
        for conn, sid in SESSIONS:
            self.frame(conn, sid, 0, [[wire.HELLO, self.next_seq(sid), 5000, f"client-{sid}"]])
        for _ in range(steps):
            conn, sid = rnd.choice(SESSIONS)
            r = rnd.random()
            if r < 0.06:
                self.advance(rnd.choice([0.001, 0.02, 0.2]))
                continue
            if r < 0.09:
                self.advance(6.0)                                    # past the TTL: sessions expire
                continue
            if r < 0.12 and self.sent[sid]:                          # a retry of something sent
                self.frame(conn, sid, 0, [rnd.choice(self.sent[sid])])
                continue
            if r < 0.14:                                             # a frame from a stranger's connection
                self.frame(b"intruder", sid, 0, [_request(rnd, self.next_seq(sid))])
                continue
            if r < 0.16:                                             # a replay under a raised ack
                self.frame(conn, sid, self.seq[sid], [_request(rnd, 1)])
                continue
            if r < 0.18:                                             # HELLO again (re-open after expiry)
                self.frame(conn, sid, 0, [[wire.HELLO, self.next_seq(sid), 5000, f"client-{sid}"]])
                continue
            reqs = [_request(rnd, self.next_seq(sid)) for _ in range(rnd.choice([1, 1, 1, 2, 5]))]
            self.sent[sid].extend(reqs)
            self.frame(conn, sid, 0, reqs, budget=rnd.choice([64, 64, 2]))

    def next_seq(self, sid):
        s = self.seq[sid]
        self.seq[sid] = s + 1
        return s


def test_the_compiled_core_is_the_compiled_one_where_required():
    if os.environ.get("LOCKMGR_REQUIRE_C") == "1":
        assert not compiled_core.__file__.endswith(".py")
    assert source_core.__file__.endswith(".py")
    assert source_core.ShardCore is not compiled_core.ShardCore


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2 ** 32 - 1))
def test_compiled_and_source_cores_agree(seed):
    Pair(seed).run(random.Random(seed), 150)


def test_compiled_and_source_cores_agree_long_run():
    Pair(7).run(random.Random(7), 3000)


_CLIENT_SCRIPT = r"""
import json, random, sys
import lockmgr
from lockmgr import LocalCluster, Mode
from lockmgr._compiled import compiled_modules
from lockmgr.rules import EPOCH_BITS
rnd = random.Random(int(sys.argv[1]))
trace = [sorted(k for k, v in compiled_modules().items() if v)]
def norm(x):
    if isinstance(x, (bool, str, type(None))):
        return x
    return ("token", x & ((1 << EPOCH_BITS) - 1)) if isinstance(x, int) else repr(x)
with LocalCluster(shards=2, partition_depth=2) as c:
    cl = lockmgr.connect(c.endpoints, partition_depth=2)
    paths = [("db",), ("db", "t"), ("db", "t", 1), ("db", "t", 2), ("db", "u", 1), ("db", "u", 2)]
    txns = [cl.begin() for _ in range(3)]
    for step in range(int(sys.argv[2])):
        i = rnd.randrange(len(txns))
        t = txns[i]
        op = rnd.random()
        try:
            if op < 0.45:
                r = norm(t.lock(rnd.choice(paths), Mode(rnd.randint(1, 5)), nowait=True))
            elif op < 0.55:
                r = [norm(x) for x in t.lock_many([(rnd.choice(paths), Mode(rnd.randint(1, 5))) for _ in range(3)],
                                                  nowait=True)]
            elif op < 0.65:
                r = norm(t.unlock(rnd.choice(paths), wait=rnd.random() < 0.5))
            elif op < 0.72:
                r = sorted((list(map(str, k)), int(v)) for k, v in t.held().items())
            elif op < 0.8:
                r = norm(t.lock(rnd.choice([("db", 7), 3.5, ("db", None)]), rnd.choice([Mode.X, 9])))
            else:
                (t.commit if rnd.random() < 0.5 else t.abort)(wait=rnd.random() < 0.5)
                r = t.state
                txns[i] = cl.begin()
        except lockmgr.LockError as e:
            r = type(e).__name__
        trace.append([step, i, op < 0.45, r])
    cl.close()
print(json.dumps(trace))
"""


def _client_trace(seed, steps, pure):
    env = dict(os.environ)
    env.pop("LOCKMGR_PUREPYTHON", None)
    if pure:
        env["LOCKMGR_PUREPYTHON"] = "1"
    out = subprocess.run([sys.executable, "-c", _CLIENT_SCRIPT, str(seed), str(steps)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return __import__("json").loads(out.stdout)


@pytest.mark.service
def test_client_builds_agree():
    """The same random transaction script (good and bad calls, no-wait releases,
    conflicts) through the compiled client against compiled shards, and through
    the .py sources of both: the same results, the same exceptions, the same
    tokens (their low bits: the epoch part differs between clusters)."""
    a = _client_trace(5, 300, pure=False)
    b = _client_trace(5, 300, pure=True)
    assert b[0] == []                                  # the reference run: every module from source
    if os.environ.get("LOCKMGR_REQUIRE_C") == "1":
        assert "lockmgr.service.client.engine" in a[0] and "lockmgr.service.shard.core" in a[0]
    assert a[1:] == b[1:]
