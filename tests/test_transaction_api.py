"""The Transaction API, written once against the fixture ``lm``.

``lm`` is an embedded LockManager on each backend; the service adds a cluster
target, so the same semantics are proven for both ways of running.
Only public API is used here (no snapshot()/stats(): those are per target).
"""

import itertools

import pytest

from lockmgr import (
    DeadlockDetected,
    InvalidRequest,
    LockError,
    LockNotAvailable,
    LockTimeout,
    Mode,
    TransactionAborted,
    compatible,
)

from helpers import Waiter, wait_until_waiting

M = [Mode.IS, Mode.IX, Mode.S, Mode.SIX, Mode.X]
NL, IS, IX, S, SIX, X = list(Mode)


@pytest.mark.parametrize("held,req", list(itertools.product(M, M)))
def test_matrix_cell(lm, held, req):
    t1, t2 = lm.begin(), lm.begin()
    t1.lock(("db", "tbl"), held)
    assert t2.try_lock(("db", "tbl"), req) == compatible(held, req)
    if not compatible(held, req):
        with pytest.raises(LockNotAvailable):
            t2.lock(("db", "tbl"), req, nowait=True)
        assert ("db", "tbl") not in t2.held()
    else:
        assert t2.held()[("db", "tbl")] == req
    t1.commit()
    t2.commit()


def test_hierarchy_takes_intention_locks(lm):
    with lm.transaction() as t:
        t.lock(("db", "orders", 42), X)
        assert t.held() == {("db",): IX, ("db", "orders"): IX, ("db", "orders", 42): X}
        t.lock(("db", "users", 7), S)
        assert t.held()[("db", "users")] == IS
        assert t.held()[("db",)] == IX  # already covered: left alone


def test_intention_on_ancestors_conflicts(lm):
    t1, t2 = lm.begin(), lm.begin()
    t1.lock(("db", "orders"), S)
    assert not t2.try_lock(("db", "orders", 1), X)      # needs IX on the table
    assert t2.try_lock(("db", "orders", 1), S)           # IS on the table is fine
    assert t2.held() == {("db",): IS, ("db", "orders"): IS, ("db", "orders", 1): S}
    t1.commit()
    t2.commit()


def test_conversion_takes_supremum(lm):
    t = lm.begin()
    t.lock(("db", "t"), S)
    t.lock(("db", "t", 1), X)
    assert t.held()[("db", "t")] == SIX
    t.abort()


def test_tokens(lm):
    t1 = lm.begin()
    a = t1.lock("r", S)
    assert a > 0
    assert t1.lock("r", S) == a          # covered: same token
    assert t1.lock("r", IS) == a
    b = t1.lock("r", X)                  # conversion: new, larger token
    assert b > a
    assert t1.lock("r", S) == b
    t1.commit()
    t2 = lm.begin()
    c = t2.lock("r", X)
    if caches(lm):
        assert c == b        # lock caching: the client's cache kept it (it never changed hands)
    else:
        assert c > b
    t2.commit()


def test_tokens_strictly_increase_per_resource(lm):
    seen = []
    for i in range(20):
        with lm.transaction() as t:
            seen.append(t.lock(("db", "k"), [S, X][i % 2]))
    assert seen == sorted(seen)
    if caches(lm):
        # lock caching: one new token for the first grant (S) and one for the conversion
        # to X; every later transaction reuses the cached X (the lock never changed hands)
        assert len(set(seen)) == 2
    else:
        assert len(set(seen)) == len(seen)


def caches(lm):
    """True for the client with lock caching on (the "cluster-cached" target)."""
    return getattr(lm, "_cache", None) is not None


def test_ids_increase(lm):
    ids = [lm.begin().id for _ in range(10)]
    assert ids == sorted(ids) and len(set(ids)) == 10


def test_bare_component_is_one_component_path(lm):
    t = lm.begin()
    t.lock("db", S)
    t.lock(7, S)
    t.lock(b"k", S)
    assert t.held() == {("db",): S, (7,): S, (b"k",): S}
    t.commit()


def test_int_and_str_components_differ(lm):
    t1, t2 = lm.begin(), lm.begin()
    t1.lock(("db", "orders", 42))
    assert t2.try_lock(("db", "orders", "42"))
    t1.commit()
    t2.commit()


def test_fifo_waiter_blocks_compatible_newcomer(lm):
    """S held, X waiting, a new S must queue behind the X (no starvation)."""
    r = ("db", "t", 1)
    t1, t2, t3 = lm.begin(), lm.begin(), lm.begin()
    t1.lock(r, S)
    w2 = Waiter(lambda: t2.lock(r, X))
    wait_until_waiting(lm, t2)
    assert not t3.try_lock(r, S)        # compatible with the holder, but X waits ahead
    w3 = Waiter(lambda: t3.lock(r, S))
    wait_until_waiting(lm, t3)
    t1.commit()
    assert w2.get() > 0
    assert not w3.done.is_set() or w3.error is not None
    t2.commit()
    assert w3.get() > 0
    t3.commit()


def test_conversion_served_before_new_requests(lm):
    r = ("db", "t", 1)
    t1, t2, t3 = lm.begin(), lm.begin(), lm.begin()
    t1.lock(r, S)
    t2.lock(r, S)
    w3 = Waiter(lambda: t3.lock(r, X))       # new request queues
    wait_until_waiting(lm, t3)
    w1 = Waiter(lambda: t1.lock(r, X))       # conversion: waits only for t2
    wait_until_waiting(lm, t1)
    t2.commit()
    assert w1.get() > 0                       # the conversion went first
    assert not w3.done.is_set()
    t1.commit()
    assert w3.get() > 0
    t3.commit()


def test_timeout_keeps_transaction_usable(lm):
    t1, t2 = lm.begin(), lm.begin()
    t1.lock("a")
    t2.lock("b")
    with pytest.raises(LockTimeout):
        t2.lock("a", timeout=0.05)
    assert t2.held() == {("b",): X}          # kept its other locks
    t2.lock("c")                             # still usable
    t1.commit()
    t2.lock("a", timeout=1)
    t2.commit()


def test_timeout_zero(lm):
    t1, t2 = lm.begin(), lm.begin()
    t1.lock("a")
    with pytest.raises(LockTimeout):
        t2.lock("a", timeout=0)
    t1.commit()
    t2.lock("a", timeout=0)
    t2.commit()


def test_timed_out_waiter_unblocks_those_behind(lm):
    r = "hot"
    t1, t2, t3 = lm.begin(), lm.begin(), lm.begin()
    t1.lock(r, S)
    w2 = Waiter(lambda: t2.lock(r, X, timeout=0.2))
    wait_until_waiting(lm, t2)
    w3 = Waiter(lambda: t3.lock(r, S))       # queued behind t2's X
    wait_until_waiting(lm, t3)
    with pytest.raises(LockTimeout):
        w2.get()
    assert w3.get() > 0                       # t2 left the queue; t3 joins t1
    t1.commit()
    t2.commit()
    t3.commit()


def test_nowait_changes_nothing(lm):
    t1, t2 = lm.begin(), lm.begin()
    t1.lock(("db", "t"), X)
    with pytest.raises(LockNotAvailable):
        t2.lock(("db", "t", 5), S, nowait=True)
    assert t2.held() == {}                   # not even the intention on "db"
    assert t2.try_lock(("db", "u", 1), X)
    t1.commit()
    t2.commit()


def test_deadlock_youngest_is_victim(lm):
    t1, t2 = lm.begin(), lm.begin()          # t2 is younger
    t1.lock("a")
    t2.lock("b")
    w2 = Waiter(lambda: t2.lock("a"))
    wait_until_waiting(lm, t2)
    assert t1.lock("b") > 0                   # t2 was the victim; t1 proceeds
    with pytest.raises(DeadlockDetected):
        w2.get()
    with pytest.raises(TransactionAborted):
        t2.lock("c")
    assert t2.held() == {}
    t1.commit()


def test_deadlock_closing_txn_is_victim_when_youngest(lm):
    t1, t2 = lm.begin(), lm.begin()
    t1.lock("a")
    t2.lock("b")
    w1 = Waiter(lambda: t1.lock("b"))
    wait_until_waiting(lm, t1)
    with pytest.raises(DeadlockDetected):
        t2.lock("a")
    assert w1.get() > 0
    t1.commit()
    t2.abort()                                # a no-op on an aborted transaction


def test_conversion_deadlock(lm):
    """Two S holders both converting to X."""
    t1, t2 = lm.begin(), lm.begin()
    t1.lock("r", S)
    t2.lock("r", S)
    w1 = Waiter(lambda: t1.lock("r", X))
    wait_until_waiting(lm, t1)
    with pytest.raises(DeadlockDetected):
        t2.lock("r", X)
    assert w1.get() > 0
    t1.commit()


def test_deadlock_through_queued_waiter(lm):
    """A cycle whose only link is FIFO queueing: D (IS) is compatible with the
    holder H (S) but queues behind B (IX). H -> D (X on d) -> B (queue) -> H."""
    th, tb, td = lm.begin(), lm.begin(), lm.begin()   # td is the youngest
    th.lock("r", S)
    td.lock("d", X)
    wb = Waiter(lambda: tb.lock("r", IX))             # B waits for H
    wait_until_waiting(lm, tb)
    wd = Waiter(lambda: td.lock("r", IS))             # D queues behind B
    wait_until_waiting(lm, td)
    wh = Waiter(lambda: th.lock("d", X))              # H waits for D: the cycle closes
    with pytest.raises(DeadlockDetected):
        wd.get()                                      # D, the youngest, is the victim
    assert wh.get() > 0                               # H gets d once D is gone
    assert not wb.done.is_set()
    th.commit()                                       # releases r: B is granted
    assert wb.get() > 0
    tb.commit()


def test_no_false_deadlock(lm):
    """A chain without a cycle is not a deadlock."""
    t1, t2, t3 = lm.begin(), lm.begin(), lm.begin()
    t1.lock("a")
    t2.lock("b")
    w2 = Waiter(lambda: t2.lock("a"))
    wait_until_waiting(lm, t2)
    w3 = Waiter(lambda: t3.lock("b"))
    wait_until_waiting(lm, t3)
    t1.commit()
    assert w2.get() > 0
    t2.commit()
    assert w3.get() > 0
    t3.commit()


def test_unlock_rules(lm):
    t = lm.begin()
    t.lock(("db", "t", 1), X)
    with pytest.raises(InvalidRequest, match="below"):
        t.unlock(("db", "t"))
    with pytest.raises(InvalidRequest, match="not hold"):
        t.unlock(("db", "t", 2))
    t.unlock(("db", "t", 1))
    t.unlock(("db", "t"))
    t.unlock(("db",))
    assert t.held() == {}
    other = lm.begin()
    assert other.try_lock(("db",), X)
    other.commit()
    t.commit()


def test_unlock_wakes_waiter(lm):
    t1, t2 = lm.begin(), lm.begin()
    t1.lock("r")
    w = Waiter(lambda: t2.lock("r"))
    wait_until_waiting(lm, t2)
    t1.unlock("r")
    assert w.get() > 0
    t1.commit()
    t2.commit()


def test_finished_transactions_refuse(lm):
    t = lm.begin()
    t.lock("a")
    t.commit()
    for call in (lambda: t.lock("b"), lambda: t.try_lock("b"), lambda: t.unlock("a"), t.commit):
        with pytest.raises(TransactionAborted):
            call()
    t.abort()  # idempotent
    u = lm.begin()
    u.abort()
    with pytest.raises(TransactionAborted):
        u.lock("a")
    with pytest.raises(TransactionAborted):
        u.commit()


def test_context_manager(lm):
    with lm.begin() as t:
        assert t is not None and t.lock("a") > 0
    assert lm.begin().try_lock("a")  # released on commit
    with pytest.raises(RuntimeError):
        with lm.transaction() as t2:
            t2.lock("b")
            raise RuntimeError("boom")
    with pytest.raises(TransactionAborted):
        t2.lock("c")


def test_abort_from_another_thread_wakes_waiter(lm):
    t1, t2 = lm.begin(), lm.begin()
    t1.lock("r")
    w = Waiter(lambda: t2.lock("r"))
    wait_until_waiting(lm, t2)
    t2.abort()
    with pytest.raises(TransactionAborted):
        w.get()
    t1.commit()


@pytest.mark.parametrize("bad_resource", [(), tuple(range(33)), ("a", 1.5), ("a", None), None, ["a"],
                                          ("a", 1 << 64), ("x" * 2000,)])
def test_bad_resource(lm, bad_resource):
    t = lm.begin()
    t.lock("keep", S)
    with pytest.raises(InvalidRequest):
        t.lock(bad_resource, X)
    with pytest.raises(InvalidRequest):
        t.try_lock(bad_resource, X)
    with pytest.raises(InvalidRequest):
        t.unlock(bad_resource)
    assert t.held() == {("keep",): S}        # nothing changed
    t.lock("more")                           # still usable
    t.commit()


@pytest.mark.parametrize("bad_mode", [0, 6, -1, "X", None, 2.0, True, Mode.NL])
def test_bad_mode(lm, bad_mode):
    t = lm.begin()
    with pytest.raises(InvalidRequest, match="mode"):
        t.lock(("db", "t"), bad_mode)
    assert t.held() == {}
    t.commit()


@pytest.mark.parametrize("bad_timeout", [-1, "1", float("nan")])
def test_bad_timeout(lm, bad_timeout):
    t = lm.begin()
    with pytest.raises(InvalidRequest, match="timeout"):
        t.lock("a", timeout=bad_timeout)
    assert t.held() == {}
    t.commit()


def test_invalid_request_is_value_error_and_lock_error():
    assert issubclass(InvalidRequest, ValueError) and issubclass(InvalidRequest, LockError)
    for e in (LockTimeout, LockNotAvailable, DeadlockDetected, TransactionAborted):
        assert issubclass(e, LockError)


def test_lock_many(lm):
    t1, t2 = lm.begin(), lm.begin()
    toks = t1.lock_many([(("db", "m", 1), X), (("db", "m", 2), S), ("solo", IX)])
    assert len(toks) == 3 and all(tok > 0 for tok in toks)
    assert t1.held()[("db", "m", 1)] == X and t1.held()[("db", "m", 2)] == S and t1.held()[("solo",)] == IX
    assert t1.lock_many([]) == []
    with pytest.raises(InvalidRequest):
        t2.lock_many([(("db", "m", 3), X), (("db", 1.5), X)])   # a bad item: nothing is locked
    assert t2.held() == {}
    with pytest.raises(InvalidRequest):
        t2.lock_many([(("db", "m", 3), 9)])
    with pytest.raises(LockNotAvailable):
        t2.lock_many([(("db", "m", 4), X), (("db", "m", 1), S)], nowait=True)
    assert t2.held()[("db", "m", 4)] == X                        # not atomic: the first one stays
    with pytest.raises(LockTimeout):
        t2.lock_many([(("db", "m", 1), S)], timeout=0.05)
    t1.commit()
    assert t2.lock_many([(("db", "m", 1), X)])[0] > toks[0]
    t2.commit()
