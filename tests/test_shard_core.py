"""The sans-IO shard core, driven by hand: decoded requests in, replies out, and
time moved only by the test (no sockets, no clock, no sleeps). Leases, lock
wait timeouts, the per-call request budget and cross-shard deadlock detection
between several cores in one process."""

import random

import pytest

from lockmgr.service import wire
from lockmgr.service.shard.core import ShardCore

X, S, IX = 5, 3, 2


class Sim:
    """Several shard cores, one manual clock, peer messages delivered by hand."""

    def __init__(self, n=1, *, probe_delay=0.010, seed=1):
        rnd = random.Random(seed)
        self.now = 1000.0
        self.cores = [ShardCore(epoch=1, index=i, nshards=n, probe_delay=probe_delay, peers=None, now=self.now,
                                random_bytes=lambda k: rnd.randbytes(k)) for i in range(n)]
        for c in self.cores:
            if n > 1:
                c.probes.set_peers([f"inproc://sim-{i}" for i in range(n)])
        self.inbox = {}          # (core, conn) -> [reply, ...]
        self.seq = {}

    def call(self, i, conn, sid, typ, *args, budget=64):
        """One request; returns its reply if it came at once, else None (parked)."""
        core = self.cores[i]
        seq = self.seq.get((i, conn, sid), 1)
        self.seq[(i, conn, sid)] = seq + 1
        core.now = self.now
        core.frame((conn,), sid, 0, [[typ, seq, *args]], budget)
        core.process_woken()
        self._collect()
        return self.take(i, conn, seq)

    def take(self, i, conn, seq):
        lst = self.inbox.get((i, conn), [])
        for rep in lst:
            if rep[0] == seq:
                lst.remove(rep)
                return rep
        return None

    def _collect(self):
        for i, c in enumerate(self.cores):
            for prefix, reps in c.take_replies().items():
                self.inbox.setdefault((i, prefix[0]), []).extend(reps)

    def advance(self, dt, step=0.001):
        """Move time forward by ``dt`` in steps; fire timers and deliver peer messages."""
        end = self.now + dt
        while self.now < end:
            self.now = min(end, self.now + step)
            for _ in range(100):
                moved = False
                for c in self.cores:
                    c.now = self.now
                    c.fire_timers(1000)
                    c.peer_messages()
                for i, c in enumerate(self.cores):
                    for dest, reqs in c.take_peer_messages().items():
                        d = self.cores[dest]
                        d.now = self.now
                        d.frame((f"peer{i}".encode(),), d.peer_sid, 0, reqs, 10_000)
                        d.peer_messages()
                        moved = True
                if not moved:
                    break
            self._collect()


def hello(sim, i, conn, sid, ttl_ms=2000):
    rep = sim.call(i, conn, sid, wire.HELLO, ttl_ms, "t")
    assert rep[1] == wire.OK, rep
    return rep


def test_a_lease_runs_out_by_the_clock_the_driver_gives():
    sim = Sim()
    hello(sim, 0, b"v", 11, ttl_ms=2000)
    hello(sim, 0, b"w", 12, ttl_ms=60_000)
    assert sim.call(0, b"v", 11, wire.LOCK, 101, ["db", "t", 1], X, False, None, 0)[1] == wire.OK
    assert sim.call(0, b"w", 12, wire.LOCK, 102, ["db", "t", 1], X, False, None, 0) is None   # waits
    sim.advance(1.9)
    assert sim.inbox.get((0, b"w")) in (None, [])          # V's lease still runs: W waits
    sim.call(0, b"v", 11, wire.HEARTBEAT)                   # renews V from now (t = +1.9)
    sim.advance(1.95)
    assert sim.inbox.get((0, b"w")) in (None, [])
    sim.advance(0.1)                                        # past +1.9 + 2.0: V expires, W is granted
    (rep,) = sim.inbox[(0, b"w")]
    assert rep[1] == wire.OK and rep[2][0] > 0
    assert sim.call(0, b"v", 11, wire.HELD, 101)[1] == wire.E_SESSION_EXPIRED


def test_a_wait_times_out_at_its_deadline_and_not_before():
    sim = Sim()
    hello(sim, 0, b"a", 21, ttl_ms=600_000)
    sim.call(0, b"a", 21, wire.LOCK, 201, ["r"], X, False, None, 0)
    assert sim.call(0, b"a", 21, wire.LOCK, 202, ["r"], S, False, 250, 0) is None
    sim.advance(0.249)
    assert not sim.inbox.get((0, b"a"))
    sim.advance(0.002)
    (rep,) = sim.inbox[(0, b"a")]
    assert rep[1] == wire.E_TIMEOUT


def test_a_frame_is_handled_budget_requests_at_a_time_in_order():
    sim = Sim()
    core = sim.cores[0]
    hello(sim, 0, b"a", 31, ttl_ms=600_000)
    reqs = [[wire.LOCK, 10 + k, 300 + k, ["b", k], X, False, None, 0] for k in range(10)]
    core.frame((b"a",), 31, 0, reqs, 4)
    assert len(core.take_replies()[(b"a",)]) == 4 and core.backlog
    assert core.resume(4) is True
    assert [r[0] for r in core.take_replies()[(b"a",)]] == [14, 15, 16, 17]
    assert core.resume(4) is False
    assert [r[0] for r in core.take_replies()[(b"a",)]] == [18, 19]


def test_timers_fire_budget_at_a_time():
    sim = Sim()
    core = sim.cores[0]
    for k in range(10):
        hello(sim, 0, f"c{k}".encode(), 40 + k, ttl_ms=1000)
    core.now = sim.now + 5
    assert core.fire_timers(3) is True
    assert core.counters["sessions_expired"] == 3
    assert core.fire_timers(100) is False
    assert core.counters["sessions_expired"] == 10


def test_a_cross_shard_deadlock_is_found_between_cores_in_one_process():
    """T1 holds a row on shard 0 and waits on shard 1; T2 the other way round.
    With the probe delay at 10 ms, stepping time by hand finds the cycle; the
    youngest (T2) is the victim and is aborted on both shards."""
    sim = Sim(2)
    hello(sim, 0, b"c", 51, ttl_ms=600_000)
    hello(sim, 1, b"c", 51, ttl_ms=600_000)
    t1, t2 = 1 << 40, (1 << 40) + 1
    assert sim.call(0, b"c", 51, wire.LOCK, t1, ["a", 1], X, False, None, 0)[1] == wire.OK
    assert sim.call(1, b"c", 51, wire.LOCK, t2, ["b", 1], X, False, None, 0)[1] == wire.OK
    assert sim.call(1, b"c", 51, wire.LOCK, t1, ["b", 1], X, False, None, 0) is None
    assert sim.call(0, b"c", 51, wire.LOCK, t2, ["a", 1], X, False, None, 0) is None
    sim.advance(0.2)
    # T2 (younger) was the victim on shard 0, where it waited; T1 got b.1 on shard 1
    (victim,) = sim.inbox[(0, b"c")]
    assert victim[1] == wire.E_DEADLOCK and str(t2) in victim[2]
    # on shard 1, T2 held b.1 without waiting there: its client is told at once (a
    # notice), and T1 is granted b.1
    notices = [r for r in sim.inbox[(1, b"c")] if r[0] == wire.PUSH_SEQ]
    (granted,) = [r for r in sim.inbox[(1, b"c")] if r[0] != wire.PUSH_SEQ]
    assert granted[1] == wire.OK
    assert notices == [[wire.PUSH_SEQ, wire.OK, [wire.N_TXN_LOST, t2, wire.E_DEADLOCK, notices[0][2][3]]]]
    assert sim.cores[1].txn(t2) is None and sim.cores[0].txn(t2) is None
    reports = sim.cores[0].probes.reports or sim.cores[1].probes.reports
    assert reports and reports[-1]["victim"] == t2 and reports[-1]["kind"] == "distributed"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_runs_repeat_exactly_from_a_seed(seed):
    """Same seed, same inputs, same times: the same replies (session secrets included)."""
    def run():
        sim = Sim(2, seed=seed)
        out = [hello(sim, i, b"x", 61, ttl_ms=5000)[2] for i in range(2)]
        rnd = random.Random(seed)
        for _k in range(200):
            i = rnd.randrange(2)
            tid = (1 << 40) + rnd.randrange(6)
            op = rnd.random()
            if op < 0.7:
                rep = sim.call(i, b"x", 61, wire.LOCK, tid, ["r", rnd.randrange(3)], rnd.choice([S, X]), False,
                               rnd.choice([None, 50]), 0)
            else:
                rep = sim.call(i, b"x", 61, wire.RELEASE, tid, False)
            out.append(rep)
            sim.advance(rnd.choice([0.0, 0.005, 0.03]))
        out.append(sorted(sim.inbox.items()))
        return out

    assert run() == run()


def test_requests_after_a_close_in_the_same_frame_are_not_executed():
    sim = Sim()
    core = sim.cores[0]
    hello(sim, 0, b"z", 81, ttl_ms=60_000)
    core.frame((b"z",), 81, 0, [[wire.LOCK, 10, 801, ["r"], X, False, None, 0], [wire.CLOSE, 11],
                                [wire.LOCK, 12, 802, ["s"], X, False, None, 0]], 64)
    reps = {r[0]: r for r in core.take_replies()[(b"z",)]}
    assert reps[10][1] == wire.OK and reps[11][1] == wire.OK
    assert reps[12][1] == wire.E_SESSION_EXPIRED
    assert core.txn(802) is None and core.txn(801) is None     # CLOSE released 801; 802 never ran


def test_a_delayed_probe_for_a_cycle_that_is_gone_aborts_nobody():
    """Every peer message arrives 150 ms late (the FAULTS hook); the cycle ends
    (T1 times out after 60 ms) before any probe could confirm it: no one is
    aborted as a deadlock victim, and nothing is reported. Time moves by hand."""
    sim = Sim(2)
    for c in sim.cores:
        c.probes._a_faults([{"delay_ms": 150}])
    hello(sim, 0, b"c", 91, ttl_ms=600_000)
    hello(sim, 1, b"c", 91, ttl_ms=600_000)
    t1, t2 = 1 << 41, (1 << 41) + 1
    assert sim.call(0, b"c", 91, wire.LOCK, t1, ["a", 1], X, False, None, 0)[1] == wire.OK
    assert sim.call(1, b"c", 91, wire.LOCK, t2, ["b", 1], X, False, None, 0)[1] == wire.OK
    assert sim.call(1, b"c", 91, wire.LOCK, t1, ["b", 1], X, False, 60, 0) is None      # times out at +60 ms
    assert sim.call(0, b"c", 91, wire.LOCK, t2, ["a", 1], X, False, None, 0) is None
    sim.advance(0.059)
    assert not sim.inbox.get((1, b"c")) and not sim.inbox.get((0, b"c"))
    sim.advance(0.002)
    (timeout,) = sim.inbox.pop((1, b"c"))
    assert timeout[1] == wire.E_TIMEOUT
    sim.call(1, b"c", 91, wire.RELEASE, t1, False)          # T1 gives up: the cycle is gone
    sim.call(0, b"c", 91, wire.RELEASE, t1, False)
    (granted,) = [r for r in sim.inbox.pop((0, b"c")) if r[1] != wire.OK or r[2] != []]
    assert granted[1] == wire.OK                             # T2 got a.1
    sim.advance(1.0)                                         # every delayed message arrives
    assert sum(c.counters["probes_sent"] for c in sim.cores) > 0     # probes did go (late)
    for c in sim.cores:
        assert c.counters["deadlocks_found"] == 0 and not c.probes.reports
    assert sim.cores[0].txn(t2) is not None                  # T2 was not aborted


class FakeLog:
    """A prepare log in memory: records are durable when the test says so."""

    def __init__(self):
        self.resolved = {}
        self.fsyncs = self.compactions = 0
        self.tickets = []
        self.ended = set()

    def live_records(self):
        return {}

    def live_sessions(self):
        return {}

    def submit(self, record):
        from lockmgr.wal import Ticket
        tk = Ticket(record)
        self.tickets.append(tk)
        return tk


def test_two_phase_commit_in_a_core_with_the_log_in_the_tests_hands():
    """PREPARE is answered only once its record is durable; an expired session's
    prepared transaction keeps its locks; DECIDE releases them once durable."""
    log = FakeLog()
    core = ShardCore(epoch=1, log=log, now=0.0)

    def send(conn, sid, *req):
        core.frame((conn,), sid, 0, [list(req)], 64)
        core.process_woken()
        return {r[0]: r for reps in core.take_replies().values() for r in reps}

    def durable():
        core.durable(list(log.tickets))
        log.tickets.clear()
        core.frame((b"self",), 0, 0, [[wire.WAKE, 0]], 64)          # the driver's wake-up
        core.process_woken()

    assert send(b"c", 5, wire.HELLO, 1, 1000, "coord")[1][1] == wire.OK
    assert send(b"c", 5, wire.LOCK, 2, 77, ["db", "t", 1], X, False, None, 0)[2][1] == wire.OK
    assert send(b"c", 5, wire.PREPARE, 3, 77, "g-1", 0, [0]) == {}            # parked until durable
    assert [r["t"] for r in [tk.record for tk in log.tickets]] == ["session", "prepare"]   # the session's record too
    durable()
    assert core.take_replies()[(b"c",)][0][:2] == [3, wire.OK]
    core.now = 5.0                                                            # past the 1 s lease
    core.fire_timers(100)
    assert core.counters["sessions_expired"] == 1
    assert core.txn(77) is not None and core.table.mode_held(77, ("db", "t", 1)) == X   # still prepared
    assert send(b"o", 6, wire.HELLO, 1, 60_000, "other")[1][1] == wire.OK
    assert send(b"o", 6, wire.LOCK, 2, 88, ["db", "t", 1], X, True, None, 0)[2][1] == wire.E_NOT_AVAILABLE
    assert send(b"o", 6, wire.DECIDE, 3, "g-1", True) == {}                   # parked until durable
    durable()
    assert core.take_replies()[(b"o",)][0] == [3, wire.OK, ["resolved"]]
    assert core.txn(77) is None
    assert send(b"o", 6, wire.DECIDE, 4, "g-1", False)[4][2] == ["conflict", True]
    assert send(b"o", 6, wire.LOCK, 5, 88, ["db", "t", 1], X, True, None, 0)[5][1] == wire.OK


# ------------------------------------------------------- reclaim after a restart

def _restart_core(data_dir, grace, now):
    from lockmgr.wal import PrepareLog
    log = PrepareLog(str(data_dir))
    return ShardCore(epoch=log.epoch, log=log, now=now, grace=grace), log


def _send(core, conn, sid, *req):
    core.frame((conn,), sid, 0, [list(req)], 64)
    core.process_woken()
    while core.backlog:
        core.resume(64)
    return {r[0]: r for reps in core.take_replies().values() for r in reps}


def test_reclaim_grace_and_refusals_in_a_core(tmp_path):
    """Deterministic: session records in a real log; a restart enters the grace
    period; RECLAIM re-grants with the same tokens; a conflicting reclaim is
    refused; held LOCKs run when the last expected session has reclaimed; a
    reclaim after the grace period, or from two epochs back, is refused; bad
    RECLAIMs change nothing."""
    core, log = _restart_core(tmp_path, 5.0, 0.0)
    hello = _send(core, b"a", 7, wire.HELLO, 1, 2000, "a")[1]
    secret_a = hello[2][4]
    secret_b = _send(core, b"b", 8, wire.HELLO, 1, 3000, "b")[1][2][4]
    tok = _send(core, b"a", 7, wire.LOCK, 2, 70, ["db", "t", 1], X, False, None, 0)[2][2][0]
    _send(core, b"b", 8, wire.LOCK, 2, 80, ["db", "u", 1], X, False, None, 0)
    log.close()                                                  # the crash (records are on disk)
    core, log = _restart_core(tmp_path, None, 100.0)
    try:
        assert core.epoch == 2 and core.reclaim.in_grace and core.reclaim.grace == 3.0   # the largest TTL
        assert _send(core, b"a", 7, wire.HELLO, 1, 2000, "a")[1][1] == wire.E_PROTOCOL    # no secret
        assert _send(core, b"a2", 7, wire.HELLO, 1, 2000, "a", secret_a)[1][1] == wire.OK
        # a new session's LOCK waits (held) during the grace period
        assert _send(core, b"c", 9, wire.HELLO, 1, 2000, "c")[1][1] == wire.OK
        assert _send(core, b"c", 9, wire.LOCK, 2, 90, ["db", "v", 1], X, False, None, 0) == {}
        # bad RECLAIMs: nothing changes
        for bad in ([1, True], [2, True, []], [1, "yes", []], [1, True, [[70, [[["db", "t", 1], X, tok + (5 << 40)]]]]],
                    [1, True, [[70, [[["db", "t", 1], 9, tok]]]]], [1, True, [[70, [["db", X, tok]]]]]):
            rep = _send(core, b"a2", 7, wire.RECLAIM, 2, *bad)[2]
            assert rep[1] in (wire.E_PROTOCOL, wire.E_INVALID, wire.E_TOO_BIG), (bad, rep)
        assert core.table.snapshot() == []
        rep = _send(core, b"a2", 7, wire.RECLAIM, 3, 1, True, [[70, [[["db", "t", 1], X, tok]]],
                                                              [71, [[["db", "t", 1], S, 5]]]])[3]
        assert rep[1] == wire.OK and rep[2][0] == 2
        assert [r[0] for r in rep[2][1]] == [71] and "conflicts" in rep[2][1][0][1]     # refused, logged
        assert core.txn(71) is None and core.reclaim.notices
        assert core.table.lock(70, ("db", "t", 1), X) == tok     # the same token
        assert core.reclaim.in_grace                              # b is still awaited
        st = core._h_stats([])
        assert st["grace"] == 1 and st["grace_waiting"] == 1 and st["grace_waiting_sessions"][0][0] == 8
        # b comes back and reclaims: the grace period ends and the held LOCK runs
        assert _send(core, b"b2", 8, wire.HELLO, 1, 3000, "b", secret_b)[1][1] == wire.OK
        core.frame((b"b2",), 8, 0, [[wire.RECLAIM, 2, 1, True, [[80, [[["db", "u", 1], X, tok + 1]]]]]], 64)
        core.process_woken()
        while core.backlog:
            core.resume(64)
        out = {(prefix[0], r[0]): r for prefix, reps in core.take_replies().items() for r in reps}
        assert out[(b"b2", 2)][2] == [2, []]
        assert not core.reclaim.in_grace                          # every expected session reclaimed
        assert out[(b"c", 2)][1] == wire.OK and out[(b"c", 2)][2][0] > 2 << 40   # the held LOCK ran: new-epoch token
        late = _send(core, b"b2", 8, wire.RECLAIM, 3, 1, True, [[81, [[["db", "w", 1], X, 3]]]])[3]
        assert late[2][1][0][0] == 81 and "grace period" in late[2][1][0][1]
        assert core.table.mode_held(81, ("db", "w", 1)) == 0
        core.table._check()
    finally:
        log.close()
    core, log = _restart_core(tmp_path, 5.0, 200.0)                # a second restart: epoch 3
    try:
        assert _send(core, b"b3", 8, wire.HELLO, 1, 3000, "b", secret_b)[1][1] == wire.OK
        rep = _send(core, b"b3", 8, wire.RECLAIM, 2, 1, True, [[80, [[["db", "u", 1], X, tok + 1]]]])[2]
        assert "more than once" in rep[2][1][0][1]                 # the locks came from epoch 1, not 2
        core.now = 300.0
        core.fire_timers(100)
        assert not core.reclaim.in_grace
    finally:
        log.close()
