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
"""

import zlib

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lockmgr import InvalidRequest, LocalCluster, LockManager, LockNotAvailable, Mode
from lockmgr.paths import encode

NSHARDS, DEPTH = 3, 2


def _owner(table):
    return zlib.crc32(encode(("db", table))) % NSHARDS


# two tables on different shards, so a strong lock on ("db",) spans shards that differ
TABLES = ["t1", "t2"]
assert _owner("t1") != _owner("t2")
RESOURCES = [("db",)] + [("db", t) for t in TABLES] + [("db", t, r) for t in TABLES for r in (1, 2)] + ["solo"]
MODES = [Mode.IS, Mode.IX, Mode.S, Mode.SIX, Mode.X]

_cluster = None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    global _cluster
    with LocalCluster(NSHARDS, partition_depth=DEPTH) as c:
        _cluster = c
        yield c
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
test_service_matches_embedded = ServiceMatchesEmbedded.TestCase


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
