"""LockManager specifics: introspection, stats, escalation, threads."""

import random
import threading
import time

import pytest

from lockmgr import DeadlockDetected, InvalidRequest, LockInfo, LockManager, LockTimeout, Mode, compatible

from helpers import wait_until_waiting

NL, IS, IX, S, SIX, X = list(Mode)


@pytest.fixture
def mk(backend):
    return lambda **kw: LockManager(_backend=backend, **kw)


def test_snapshot_and_graph(mk):
    m = mk()
    t1, t2 = m.begin(), m.begin()
    t1.lock(("db", "t"), S)
    th = threading.Thread(target=lambda: t2.lock(("db", "t"), X))
    th.start()
    wait_until_waiting(m, t2)
    snap = m.snapshot()
    assert all(isinstance(r, LockInfo) for r in snap)
    assert LockInfo(("db",), t1.id, IS, True) in snap
    assert LockInfo(("db", "t"), t1.id, S, True) in snap
    assert LockInfo(("db", "t"), t2.id, X, False) in snap
    assert m.wait_for_graph() == {t2.id: {t1.id}}
    t1.commit()
    th.join(10)
    assert m.wait_for_graph() == {}
    t2.commit()
    assert m.snapshot() == []


def test_stats_counters(mk):
    m = mk()
    t1, t2 = m.begin(), m.begin()
    t1.lock("a")
    with pytest.raises(LockTimeout):
        t2.lock("a", timeout=0.01)
    s = m.stats()
    for k in ("granted", "waited", "timeouts", "deadlocks", "escalations"):
        assert k in s and isinstance(s[k], int)
    assert s["granted"] == 1 and s["waited"] == 1 and s["timeouts"] == 1 and s["deadlocks"] == 0
    t1.commit()
    t2.commit()
    assert m.stats()["requests"] == 0


def test_default_timeout(mk):
    m = mk(default_timeout=0.02)
    t1, t2 = m.begin(), m.begin()
    t1.lock("a")
    with pytest.raises(LockTimeout):
        t2.lock("a")
    t1.commit()


def test_deadlock_detection_off_falls_back_to_timeout(mk):
    m = mk(deadlock_detection=False)
    t1, t2 = m.begin(), m.begin()
    t1.lock("a")
    t2.lock("b")
    th = threading.Thread(target=lambda: pytest.raises(LockTimeout, t2.lock, "a", timeout=0.2))
    th.start()
    wait_until_waiting(m, t2)
    with pytest.raises(LockTimeout):
        t1.lock("b", timeout=0.05)
    th.join(10)
    assert m.stats()["deadlocks"] == 0


def test_escalation_to_s_and_x(mk):
    m = mk(escalation_threshold=10)
    t = m.begin()
    for i in range(10):
        t.lock(("db", "t", i), S)
    assert len(t.held()) == 12 and m.stats()["escalations"] == 0
    tok = t.lock(("db", "t", 10), S)             # the 11th row: more than 10 below ("db","t")
    assert t.held() == {("db",): IS, ("db", "t"): S}
    assert m.stats()["escalations"] == 1
    assert t.lock(("db", "t", 99), S) == tok     # covered by the table lock now
    other = m.begin()
    assert other.try_lock(("db", "t", 3), S)
    assert not other.try_lock(("db", "t", 3), X)
    other.commit()
    u = m.begin()
    for i in range(11):
        u.lock(("db", "u", i), S if i % 2 else X)
    assert u.held() == {("db",): IX, ("db", "u"): X}
    t.commit()
    u.commit()


def test_escalation_waits_for_nobody(mk):
    """Escalation happens only if grantable at once; else row locking goes on."""
    m = mk(escalation_threshold=5)
    other = m.begin()
    other.lock(("db", "t", 1000), X)              # IX on the table blocks an S escalation
    t = m.begin()
    for i in range(20):
        t.lock(("db", "t", i), S)
    assert m.stats()["escalations"] == 0
    assert len(t.held()) == 22
    other.commit()
    t.lock(("db", "t", 20), S)                    # now it can escalate
    assert m.stats()["escalations"] == 1
    assert t.held() == {("db",): IS, ("db", "t"): S}
    t.commit()


def test_escalation_is_local(mk):
    """Locks spread over many tables never escalate the database."""
    m = mk(escalation_threshold=5)
    t = m.begin()
    for table in range(4):
        for row in range(5):
            t.lock(("db", f"t{table}", row), X)
    assert m.stats()["escalations"] == 0           # 5 rows per table, 4 tables: none over 5
    for row in range(5, 12):
        t.lock(("db", "t0", row), X)
    assert m.stats()["escalations"] == 1           # the busy table, not the database
    assert t.held()[("db",)] == IX and t.held()[("db", "t0")] == X
    assert ("db", "t1", 0) in t.held()
    t.commit()


def test_unlock_after_escalation_is_noop(mk):
    m = mk(escalation_threshold=3)
    t = m.begin()
    for i in range(5):
        t.lock(("db", "t", i), S)
    t.unlock(("db", "t", 0))                       # covered by the escalated S: nothing to do
    assert t.held()[("db", "t")] == S
    t.commit()


def test_constructor_validation():
    with pytest.raises(InvalidRequest):
        LockManager(escalation_threshold=0)
    with pytest.raises(InvalidRequest):
        LockManager(default_timeout=-1)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_threads_stress(mk, seed):
    """Seeded stress: threads lock random paths in random modes and orders.

    Deadlocks happen and are resolved; at every snapshot the granted group of
    each resource is compatible; counters guarded by X locks lose no update;
    everything is released at the end.
    """
    m = mk(escalation_threshold=8)
    counters = {}
    nthreads, txns_per_thread = 6, 60
    done = {"commits": 0, "victims": 0, "timeouts": 0}
    guard = threading.Lock()
    errors = []

    def worker(k):
        rnd = random.Random(seed * 100 + k)
        for _ in range(txns_per_thread):
            t = m.begin()
            mine = []
            try:
                for _ in range(rnd.randint(1, 5)):
                    depth = rnd.randint(1, 3)
                    path = ("db", f"t{rnd.randrange(2)}", rnd.randrange(6))[:depth]
                    mode = rnd.choice([IS, IX, S, SIX, X, X, X])
                    t.lock(path, mode, timeout=5)
                    if mode == X and depth == 3:
                        mine.append(path)
                for path in mine:  # read-modify-write under X: a lost update would show
                    v = counters.get(path, 0)
                    time.sleep(0)
                    counters[path] = v + 1
                t.commit()
                with guard:
                    done["commits"] += 1
                    for path in mine:
                        expected[path] = expected.get(path, 0) + 1
            except DeadlockDetected:
                with guard:
                    done["victims"] += 1
            except LockTimeout:
                t.abort()
                with guard:
                    done["timeouts"] += 1
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)
                t.abort()

    expected = {}
    ths = [threading.Thread(target=worker, args=(k,)) for k in range(nthreads)]
    for th in ths:
        th.start()
    stop = threading.Event()

    def observer():
        while not stop.is_set():
            by_res = {}
            for r in m.snapshot():
                if r.granted:
                    by_res.setdefault(r.resource, []).append(r.mode)
            for res, modes in by_res.items():
                for i, a in enumerate(modes):
                    for b in modes[i + 1:]:
                        if not compatible(a, b):
                            errors.append(AssertionError(f"incompatible grants on {res}: {a!r} {b!r}"))
            stop.wait(0.002)

    obs = threading.Thread(target=observer)
    obs.start()
    for th in ths:
        th.join(120)
    stop.set()
    obs.join(10)
    assert not errors, errors[:3]
    assert all(not th.is_alive() for th in ths)
    assert done["commits"] + done["victims"] + done["timeouts"] == nthreads * txns_per_thread
    assert done["commits"] > nthreads * txns_per_thread // 2
    assert counters == expected
    s = m.stats()
    assert s["requests"] == 0 and s["resources"] == 0 and s["transactions"] == 0
    # deadlocks did happen (random order), and each had exactly one victim
    assert s["deadlocks"] > 0 and s["deadlocks"] == done["victims"]


def test_on_lost_and_valid_for_in_one_process():
    """Issue 15's per-transaction notice, embedded: only a deadlock victim loses its
    locks; on_lost fires then (on a thread of its own), never after a commit."""
    import queue as _queue

    from lockmgr import DeadlockDetected as _DD
    mgr = LockManager()
    t1, t2 = mgr.begin(), mgr.begin()
    got = _queue.Queue()
    t1.on_lost(got.put)
    t2.on_lost(got.put)
    assert t1.valid_for() == float("inf")
    t1.lock(("a",), Mode.X)
    t2.lock(("b",), Mode.X)
    done = threading.Event()

    def first():
        t1.lock(("b",), Mode.X, timeout=10)
        done.set()

    th = threading.Thread(target=first, daemon=True)
    th.start()
    deadline = time.monotonic() + 10
    while t1.id not in mgr.wait_for_graph() and time.monotonic() < deadline:
        time.sleep(0.001)
    with pytest.raises(_DD):
        t2.lock(("a",), Mode.X, timeout=10)       # t2 (younger) is the victim
    err = got.get(timeout=5)
    assert isinstance(err, _DD) and t2.valid_for() == 0.0
    assert done.wait(5)
    t1.commit()
    assert t1.valid_for() == 0.0
    late = _queue.Queue()
    t2.on_lost(late.put)                          # already lost: at once
    assert isinstance(late.get(timeout=5), _DD)
    assert got.empty()
    with pytest.raises(InvalidRequest):
        t1.on_lost(3)
