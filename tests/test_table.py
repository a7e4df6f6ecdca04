"""Table-level tests that run on every backend of this install (the ``Table``
fixture: the compiled table when built, and always the pure-Python twin):
downgrade and lock_many. The C-vs-Python differential and the C-only checks
are in tests/test_ctable.py; the model-based test in tests/test_table_model.py.
"""

import pytest

from lockmgr._core import WAITING
from lockmgr.errors import InvalidRequest

IS, IX, S, SIX, X = 1, 2, 3, 4, 5


# ------------------------------------------------------------------ downgrade

def test_downgrade_undoes_a_conversion_and_wakes_who_it_blocked(Table):
    t = Table()
    tok_is = t.lock(1, ("db",), IS)
    tok_s = t.lock(1, ("db",), S)                  # IS -> S
    assert tok_s > tok_is
    assert t.lock(2, ("db", "x"), IX) == WAITING   # IX on db waits behind the S
    assert t.downgrade(1, ("db",), IS) == [2]      # back to IS: the IX waiter is granted
    assert t.held(1) == [(("db",), IS)]
    assert t.mode_held(2, ("db",)) == IX
    assert t.downgrade(1, ("db",), IS) == []       # to the held mode: nothing to do
    for bad in (S, X, SIX):                        # only weaker modes
        with pytest.raises(InvalidRequest, match="weaker mode"):
            t.downgrade(1, ("db",), bad)
    with pytest.raises(InvalidRequest, match="does not hold"):
        t.downgrade(1, ("other",), IS)
    with pytest.raises(InvalidRequest, match="does not hold"):
        t.downgrade(3, ("db",), IS)
    t._check()
    # the intention its own children need stays: X on a child needs IX here
    t.lock(3, ("db2", "r"), X)                     # IX on db2
    t.lock(3, ("db2",), SIX)                       # IX -> SIX
    with pytest.raises(InvalidRequest, match="below"):
        t.downgrade(3, ("db2",), IS)
    assert t.held(3)[0] == (("db2",), SIX)
    assert t.downgrade(3, ("db2",), IX) == []
    assert t.held(3) == [(("db2",), IX), (("db2", "r"), X)]
    # not while waiting
    t.lock(4, ("z",), X)
    t.lock(3, ("z",), S)
    with pytest.raises(InvalidRequest, match="waiting"):
        t.downgrade(3, ("db2",), IX)
    t._check()


# ------------------------------------------------------------------ lock_many

def test_lock_many_all_granted_equals_successive_locks(Table):
    a, b = Table(escalation_threshold=40, token_base=7), Table(escalation_threshold=40, token_base=7)
    # 100 items (more than the C table plans on the stack), long keys (more key
    # bytes than its stack buffer), an escalation in the middle, repeats, lists
    items = [(("db", "t", i), X) for i in range(60)] + [(["db", "u", "k" * 1000, i], S) for i in range(40)]
    items += [(("db", "t", 3), S), ("db", IS), (["db", "u"], IS)]
    res = a.lock_many(1, items)
    assert res == [b.lock(1, tuple(p) if type(p) is list else p, m) for p, m in items]
    assert len(res) == len(items) and all(r > 0 for r in res)
    assert a.held(1) == b.held(1) and a.stats() == b.stats()
    assert a.stats()["escalations"] == 1
    a._check()
    assert a.lock_many(1, []) == [] and a.lock_many(2, ()) == []
    assert a.stats()["transactions"] == 1


@pytest.mark.parametrize("bad", [(("r", 1.5), X), (("r", 1), 0), (("r", 1), None), ("r",), ("r", X, 1),
                                 "rX", None, (("r",) * 33, X), ([], X), ((), X), (("x" * 1025,), S)])
def test_lock_many_bad_item_in_the_middle_changes_nothing(Table, bad):
    t = Table(token_base=100)
    t.lock(2, ("r", 9), X)           # would make item 3 wait
    before = (t.snapshot(), t.stats())
    items = [(("r", 1), X), (("r", 2), S), bad, (("r", 9), X), (("r", 4), X)]
    with pytest.raises(InvalidRequest, match="item 2"):
        t.lock_many(1, items)
    with pytest.raises(InvalidRequest, match="item 2"):
        t.lock_many(1, items, nowait=True)
    assert (t.snapshot(), t.stats()) == before
    assert t.transactions() == [2]
    for txn in (0, -1, 1 << 64, 1.0, None):
        with pytest.raises(InvalidRequest):
            t.lock_many(txn, items[:2])
    for items in (None, "ab", {("a",): X}, iter([(("a",), X)]), (("a",), X)):
        with pytest.raises(InvalidRequest):
            t.lock_many(1, items)
    assert (t.snapshot(), t.stats()) == before
    t._check()


def test_lock_many_wait_in_the_middle(Table):
    t = Table(token_base=100)
    blocker = t.lock(2, ("db", "t", 3), S)
    items = [(("db", "t", 1), X), (["db", "t", 2], X), (("db", "t", 3), X), (("db", "t", 4), X)]
    res = t.lock_many(1, items)
    # items 0 and 1 granted (IX on db and db.t, X on rows 1 and 2), item 2 queued
    assert len(res) == 3 and res[2] == -1 and all(r > blocker for r in res[:2])
    assert t.is_waiting(1) and t.waiting_on(1) == (("db", "t", 3), X)
    assert sorted(t.held(1)) == sorted([(("db",), IX), (("db", "t"), IX), (("db", "t", 1), X),
                                        (("db", "t", 2), X)])
    assert t.mode_held(1, ("db", "t", 4)) == 0
    # a waiting transaction is refused (nothing changes), except an empty batch
    with pytest.raises(InvalidRequest):
        t.lock_many(1, [(("db", "t", 5), X)])
    assert t.lock_many(1, []) == []
    t._check()
    # woken: lock() finishes item 2, then the rest of the batch
    assert t.release_all(2) == [1]
    tok = t.lock(1, ("db", "t", 3), X)
    assert tok > 0
    assert t.lock_many(1, items[3:]) == [tok + 1]
    assert len(t.held(1)) == 6
    t._check()


def test_lock_many_nowait_conflict_in_the_middle(Table):
    t = Table(token_base=100)
    t.lock(2, ("db", "t", 3), S)
    items = [(("db", "t", 1), X), (("db", "t", 2), X), (("db", "t", 3), X), (("db", "t", 4), X)]
    res = t.lock_many(1, items, nowait=True)
    assert res == [106, 107, -2]   # S on a row took 3 tokens (IS, IS, S); then IX, IX, X, X
    # items 0 and 1 stay granted; item 2 changed nothing; item 3 was not looked at
    assert not t.is_waiting(1)
    assert sorted(t.held(1)) == sorted([(("db",), IX), (("db", "t"), IX), (("db", "t", 1), X),
                                        (("db", "t", 2), X)])
    assert t.snapshot().count((("db", "t", 3), 1, X, False)) == 0
    # a conflict on the first item: nothing changes at all
    assert t.lock_many(3, [(("db", "t", 1), S), (("db", "t", 9), S)], nowait=True) == [-2]
    assert 3 not in t.transactions()
    t._check()
    # the same batch without nowait waits on item 2 after re-granting 0 and 1 (already held)
    assert t.lock_many(1, items) == [106, 107, -1]
    t._check()


# ------------------------------------------------------- hot rows and deadlock search

def test_a_new_waiter_with_no_edge_into_it_is_not_searched(Table):
    """A cycle through a transaction needs an edge into it: someone waiting on a
    resource it holds. Waiters queued on a hot row hold nothing anyone waits for,
    so their waits cost no search (the cost of the k-th waiter does not grow
    with k); a wait that can close a cycle is still searched, and found."""
    t = Table()
    t.lock(1, ("db", "t", 0), X)
    for tid in range(2, 2002):
        assert t.lock(tid, ("db", "t", 0), X) == WAITING   # IX granted on db and db/t
        assert t.find_cycle(tid) == []
    assert t.stats()["searches"] == 0
    t._check()
    # a real deadlock: A holds r1 and waits for r2 (nobody waits for A's locks:
    # no search); B holds r2 and waits for r1, where A waits: searched, found
    A, B = 10_001, 10_002
    t.lock(A, ("r1",), X)
    t.lock(B, ("r2",), X)
    assert t.lock(A, ("r2",), X) == WAITING
    assert t.find_cycle(A) == []
    assert t.stats()["searches"] == 0
    assert t.lock(B, ("r1",), X) == WAITING
    assert t.find_cycle(B) == [B, A]
    assert t.stats()["searches"] == 1
    # a conversion of a holder puts it ahead of the new waiters: they wait for it
    t2 = Table()
    t2.lock(1, ("k",), S)
    t2.lock(2, ("k",), S)
    assert t2.lock(3, ("k",), X) == WAITING       # behind both holders
    assert t2.lock(1, ("k",), X) == WAITING       # 1 converts: waits for 2; 3 waits for 1
    assert t2.find_cycle(1) == []                  # searched (3 waits on what 1 holds): no cycle
    assert t2.stats()["searches"] == 1
    assert t2.lock(2, ("k",), X) == WAITING       # 2 converts too: 1 and 2 wait for each other
    assert sorted(t2.find_cycle(2)) == [1, 2]
    t2._check()
