"""The service against the embedded manager, on random operation sequences.

A Hypothesis state machine drives pairs of transactions, one in an embedded
``LockManager`` and its twin in a 3-shard ``LocalCluster`` (partition depth
2), with the same non-blocking operations: ``lock(..., nowait=True)``,
``lock_many(..., nowait=True)``, ``unlock``, ``commit``, ``abort``. Resources
lie above the partition depth (``("db",)``: strong locks there go to every
shard), at it (tables) and below it (rows), on tables owned by different
shards. After every step both sides must have answered alike (granted,
``LockNotAvailable`` or ``InvalidRequest``) and every live transaction must
hold exactly the same locks (``held()``) in both. Tokens differ by design
(each shard numbers its own grants) and are not compared; that they
increase is tested elsewhere.

A second machine adds blocking ``lock()`` calls (one thread per
transaction) on the nodes at or below the partition depth: who waits, who is
granted on a release (FIFO, conversions first), which transaction is the
deadlock victim (the youngest of the cycle, also when the cycle spans
shards) must be the same on both sides. The differences by design are in
docs/service.md.
"""

import queue
import threading
import time

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lockmgr import DeadlockDetected, InvalidRequest, LockError, LockManager, LockNotAvailable, Mode

from helpers import shard_of

NSHARDS, DEPTH = 3, 2

pytestmark = pytest.mark.service


def _owner(table):
    return shard_of(("db", table), NSHARDS, DEPTH)


# two tables on different shards, so a strong lock on ("db",) spans shards that differ
TABLES = ["t1", "t2"]
assert _owner("t1") != _owner("t2")
RESOURCES = [("db",)] + [("db", t) for t in TABLES] + [("db", t, r) for t in TABLES for r in (1, 2)] + ["solo"]
MODES = [Mode.IS, Mode.IX, Mode.S, Mode.SIX, Mode.X]

_cluster = None


@pytest.fixture(scope="module")
def cluster_options():
    return {"shards": NSHARDS, "partition_depth": DEPTH}


@pytest.fixture(scope="module", autouse=True)
def _module_cluster(cluster):
    """The state machines are built by Hypothesis, not by pytest: they reach
    the module's cluster through this global."""
    global _cluster
    _cluster = cluster
    yield cluster
    _cluster = None


def _outcome(fn):
    try:
        fn()
        return "ok"
    except LockNotAvailable:
        return "not available"
    except InvalidRequest:
        return "invalid"


class ServiceMatchesEmbedded(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.mgr = LockManager()
        self.client = _cluster.connect(request_timeout=10.0)
        self.pairs = []          # [(embedded txn, service txn)], live ones

    def teardown(self):
        for e, s in self.pairs:
            e.abort()
            s.abort()
        self.client.close()

    @precondition(lambda self: len(self.pairs) < 3)
    @rule()
    def begin(self):
        self.pairs.append((self.mgr.begin(), self.client.begin()))

    @precondition(lambda self: self.pairs)
    @rule(k=st.integers(0, 2), res=st.sampled_from(RESOURCES), mode=st.sampled_from(MODES))
    def lock(self, k, res, mode):
        e, s = self.pairs[k % len(self.pairs)]
        a = _outcome(lambda: e.lock(res, mode, nowait=True))
        b = _outcome(lambda: s.lock(res, mode, nowait=True))
        assert a == b, (res, mode, a, b)

    @precondition(lambda self: self.pairs)
    @rule(k=st.integers(0, 2),
          items=st.lists(st.tuples(st.sampled_from(RESOURCES), st.sampled_from(MODES)), min_size=1, max_size=4))
    def lock_many(self, k, items):
        e, s = self.pairs[k % len(self.pairs)]
        a = _outcome(lambda: e.lock_many(items, nowait=True))
        b = _outcome(lambda: s.lock_many(items, nowait=True))
        assert a == b, (items, a, b)
        if a == "not available":
            # documented difference: the service locks the items of different shards
            # in parallel, so items after the failing one may be held there too
            self.pairs.remove((e, s))
            e.abort()
            s.abort()

    @precondition(lambda self: self.pairs)
    @rule(k=st.integers(0, 2), res=st.sampled_from(RESOURCES))
    def unlock(self, k, res):
        e, s = self.pairs[k % len(self.pairs)]
        a = _outcome(lambda: e.unlock(res))
        b = _outcome(lambda: s.unlock(res))
        assert a == b, (res, a, b)

    @precondition(lambda self: self.pairs)
    @rule(k=st.integers(0, 2), commit=st.booleans())
    def finish(self, k, commit):
        e, s = self.pairs.pop(k % len(self.pairs))
        if commit:
            e.commit()
            s.commit()
        else:
            e.abort()
            s.abort()

    @invariant()
    def same_locks(self):
        for e, s in self.pairs:
            assert e.held() == s.held()
        self.mgr._table._check()


ServiceMatchesEmbedded.TestCase.settings = settings(
    max_examples=300, stateful_step_count=30, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow])
test_service_matches_embedded = pytest.mark.slow(ServiceMatchesEmbedded.TestCase)


def test_a_refused_strong_lock_leaves_what_was_held(cluster):
    """S on ("db",) goes to every shard in order; it converts the IS held on
    t2's shard, then meets another transaction's IX on t1's shard (later in
    shard order) and is refused: the conversion is undone, so nothing of the
    S is left anywhere (before DOWNGRADE, the S stayed on t2's shard)."""
    assert _owner("t2") < _owner("t1")
    IS, X, S = Mode.IS, Mode.X, Mode.S
    with cluster.connect() as c:
        t, u = c.begin(), c.begin()
        t.lock(("db", "t2", 1), S)                 # IS on ("db",) on t2's shard
        u.lock(("db", "t1", 1), X)                 # IX on ("db",) on t1's shard
        with pytest.raises(LockNotAvailable):
            t.lock(("db",), S, nowait=True)
        assert t.held() == {("db",): IS, ("db", "t2"): IS, ("db", "t2", 1): S}
        v = c.begin()
        v.lock(("db", "t2", 2), X, nowait=True)     # IX on ("db",) there: not blocked by a leftover S
        for x in (t, u, v):
            x.commit()


# ------------------------------------------------------------ with waits

class _Actor:
    """One thread running one transaction's calls, one at a time (a call may
    block in a lock wait; the test thread watches it from outside)."""

    def __init__(self, txn):
        self.txn = txn
        self.q = queue.Queue()
        self.running = False
        self.outcome = None
        self.th = threading.Thread(target=self._loop, daemon=True)
        self.th.start()

    def _loop(self):
        while True:
            fn = self.q.get()
            if fn is None:
                return
            self.outcome = _outcome2(fn)
            self.running = False

    def submit(self, fn):
        self.running = True
        self.outcome = None
        self.q.put(fn)

    def stop(self):
        self.q.put(None)
        self.th.join(10)
        assert not self.th.is_alive(), "an actor did not stop"


def _outcome2(fn):
    try:
        fn()
        return "ok"
    except DeadlockDetected:
        return "deadlock"
    except LockError as e:       # e.g. TransactionAborted: the test's teardown aborted a waiter
        return type(e).__name__


# Nodes at or below the partition depth: each lives on one shard, whose table
# orders its queue exactly as the embedded one. (A strong lock on a node above
# it waits shard by shard, so it holds its place in the queues only of the
# shards it has reached: a request on another shard can pass it where the
# embedded manager would queue it behind. No incompatible grant either way;
# the non-blocking machine above covers those nodes.)
WAIT_RESOURCES = [("db", t) for t in TABLES] + [("db", t, r) for t in TABLES for r in (1, 2)]


class ServiceMatchesEmbeddedWithWaits(RuleBasedStateMachine):
    """Blocking lock() calls too: a request that must wait waits on both sides;
    after every step the test waits (bounded) until each side has settled --
    every call finished or seen waiting -- and then requires the same set of
    waiting transactions, the same outcomes (granted, deadlock victim, ...) and
    the same locks. Grants on release follow the same FIFO order (conversions
    first), and a deadlock (found at once by the embedded manager; by the
    shard's own search or by probes across shards in the service) picks the
    same victim: the youngest."""

    def __init__(self):
        super().__init__()
        self.mgr = LockManager()
        self.client = _cluster.connect(request_timeout=10.0)
        self.pairs = []          # [(embedded actor, service actor)]

    def teardown(self):
        self._end_all()          # abort() wakes a waiting lock() on either side
        self.client.close()

    def _side(self, i):
        g = (self.mgr if i == 0 else self.client).wait_for_graph()
        return tuple((p[i].running, p[i].txn.id in g, p[i].outcome) for p in self.pairs)

    def _settle(self):
        """Wait until both sides agree: every call finished or seen waiting, with
        the same outcome. Overlapping cycles are the one allowed difference: which
        cycle is broken first decides how many victims there are (the embedded
        manager takes the cycles through the closing wait one by one; the probes
        of the service may close another one first), so when both sides chose
        victims and settled differently, both are ended and the run goes on with
        fresh transactions."""
        deadline = time.monotonic() + 10.0
        last, since = None, time.monotonic()
        while True:
            se, ss = self._side(0), self._side(1)
            now = time.monotonic()
            if (se, ss) != last:
                last, since = (se, ss), now
            if se == ss and all(not r or w for r, w, _ in se):
                break
            both_chose = any(o == "deadlock" for *_, o in se) and any(o == "deadlock" for *_, o in ss)
            if both_chose and now - since > 0.3 and all(not r or w for side in (se, ss) for r, w, _ in side):
                self._end_all()
                return
            if now > deadline:
                raise AssertionError(f"embedded {se} != service {ss}")
            time.sleep(0.002)
        for ae, as_ in list(self.pairs):
            if ae.outcome == "deadlock":      # the victim is aborted on both sides
                assert ae.txn.state == as_.txn.state == "aborted"
                self.pairs.remove((ae, as_))
                ae.stop()
                as_.stop()

    def _end_all(self):
        for ae, as_ in self.pairs:
            ae.txn.abort()
            as_.txn.abort()
        for ae, as_ in self.pairs:
            ae.stop()
            as_.stop()
        self.pairs = []

    def _idle(self):
        return [p for p in self.pairs if not p[0].running and not p[1].running]

    # No preconditions on the pairs: which pairs are idle, or still there after an
    # overlapping-cycle reset, depends on timing, and a precondition that reads it
    # made Hypothesis's draws differ between a run and its replay
    # (FlakyStrategyDefinition). The rules always draw the same data and do
    # nothing when there is nothing to do.
    @rule()
    def begin(self):
        if len(self.pairs) < 4:
            self.pairs.append((_Actor(self.mgr.begin()), _Actor(self.client.begin())))

    @rule(k=st.integers(0, 3), res=st.sampled_from(WAIT_RESOURCES), mode=st.sampled_from(MODES))
    def lock(self, k, res, mode):
        idle = self._idle()
        if not idle:
            return
        ae, as_ = idle[k % len(idle)]
        ae.submit(lambda: ae.txn.lock(res, mode))
        as_.submit(lambda: as_.txn.lock(res, mode))
        self._settle()

    @rule(k=st.integers(0, 3), commit=st.booleans())
    def finish(self, k, commit):
        idle = self._idle()
        if not idle:
            return
        ae, as_ = idle[k % len(idle)]
        self.pairs.remove((ae, as_))
        for a in (ae, as_):
            a.txn.commit() if commit else a.txn.abort()
            a.stop()
        self._settle()          # whoever waited for them is granted, in the same order

    @invariant()
    def same_locks(self):
        for ae, as_ in self._idle():
            assert ae.txn.held() == as_.txn.held()
        self.mgr._table._check()


ServiceMatchesEmbeddedWithWaits.TestCase.settings = settings(
    max_examples=120, stateful_step_count=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow])
test_service_matches_embedded_with_waits = pytest.mark.slow(ServiceMatchesEmbeddedWithWaits.TestCase)
