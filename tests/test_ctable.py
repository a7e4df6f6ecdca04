"""Tests specific to the compiled table (lockmgr._core._ctable).

- the C copies of the matrices equal lockmgr.modes;
- the Cython path encoder equals lockmgr.paths.encode, errors included;
- a differential Hypothesis state machine: the C table and the pure-Python
  twin (the specification) get the same random operations and must give the
  same answers, with _check() on both after every step;
- hash collisions never merge two resources (every key forced to one hash);
- no leaks: releasing everything brings the table back to empty.
"""

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule  # noqa: E402

from lockmgr import modes, paths  # noqa: E402
from lockmgr._core import _pytable  # noqa: E402
from lockmgr.errors import InvalidRequest  # noqa: E402

_ctable = pytest.importorskip("lockmgr._core._ctable")

IS, IX, S, SIX, X = 1, 2, 3, 4, 5


# ------------------------------------------------------------------ matrices


def test_matrices_equal_python_copies():
    assert _ctable.CONFLICTS == modes.CONFLICTS
    assert _ctable.SUPREMUM == modes.SUPREMUM
    assert _ctable.INTENTION == modes.INTENTION
    assert _ctable.WAITING == _pytable.WAITING == -1
    assert _ctable.CONFLICT == _pytable.CONFLICT == -2
    assert _ctable.SEARCH_LIMIT == _pytable.SEARCH_LIMIT


# ------------------------------------------------------------------ encoding

components = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.binary(max_size=40),
)
resources = st.one_of(components, st.lists(components, min_size=1, max_size=32).map(tuple))


@settings(max_examples=400, derandomize=True, deadline=None)
@given(resources)
def test_encode_equals_python(resource):
    key = _ctable.encode(resource)
    assert key == paths.encode(resource)
    assert paths.decode(key) == (resource if type(resource) is tuple else (resource,))


BAD = [
    (),
    ("a",) * 33,
    1.5,
    None,
    True,
    ["a"],
    ("a", 1.5),
    ("a", None),
    ("a", True),
    ("a", ["b"]),
    (1 << 63,),
    (-(1 << 63) - 1,),
    1 << 64,
    ("x" * 1025,),
    ("é" * 513,),        # 1026 UTF-8 bytes
    (b"x" * 1025,),
    ("\ud800",),
    ("a", "b\udfffc"),
    ("x" * 1000,) * 5,   # each fine, 5015 bytes in all
    bytearray(b"a"),
    frozenset(),
    {"a": 1},
]


@pytest.mark.parametrize("bad", BAD, ids=range(len(BAD)))
def test_encode_rejects_what_python_rejects(bad):
    with pytest.raises(InvalidRequest):
        paths.encode(bad)
    with pytest.raises(InvalidRequest):
        _ctable.encode(bad)
    t = _ctable.Table()
    with pytest.raises(InvalidRequest):
        t.lock(1, bad, S)
    with pytest.raises(InvalidRequest):
        t.unlock(1, bad)
    assert t.stats()["requests"] == 0
    t._check()


def test_encode_edges():
    for r in [(1 << 63) - 1, -(1 << 63), ("x" * 1024,), (b"",), ("",), ("a",) * 32,
              ("x" * 1024,) * 3 + ("y" * 1000,)]:
        assert _ctable.encode(r) == paths.encode(r)
    for sub in (type("S", (str,), {})("a"), type("I", (int,), {})(1)):
        with pytest.raises(InvalidRequest):
            paths.encode(sub)
        with pytest.raises(InvalidRequest):
            _ctable.encode(sub)


@pytest.mark.parametrize("txn", [0, -1, 1 << 64, True, 1.0, "1", None])
def test_bad_txn_and_mode(txn):
    for T in (_pytable.Table, _ctable.Table):
        t = T()
        with pytest.raises(InvalidRequest):
            t.lock(txn, "a", S)
        with pytest.raises(InvalidRequest):
            t.release_all(txn)
        with pytest.raises(InvalidRequest):
            t.cancel_wait(txn)
        for mode in (0, 6, -1, True, 3.0, "S", None, 1 << 70):
            with pytest.raises(InvalidRequest):
                t.lock(1, "a", mode)
        assert t.lock((1 << 64) - 1, "a", modes.Mode.X) > 0
        t._check()


def test_constructor_validation():
    for T in (_pytable.Table, _ctable.Table):
        for kw in ({"escalation_threshold": 0}, {"escalation_threshold": 1.0},
                   {"token_base": -1}, {"token_base": 1 << 63}, {"token_base": True}):
            with pytest.raises(InvalidRequest):
                T(**kw)
        t = T(escalation_threshold=1 << 80, token_base=(1 << 63) - 5)
        assert t.lock(1, "a", S) == (1 << 63) - 4


# ------------------------------------------------------------------ differential

TXNS = st.integers(min_value=1, max_value=5)
COMPONENTS = ["a", "b", 7]
PATHS = st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=3).map(tuple)
MODES = st.sampled_from([IS, IX, S, SIX, X])
ODD_TXNS = st.sampled_from([0, -3, 1 << 64, True, 2.0, "x"])
ODD_MODES = st.sampled_from([0, 6, True, 2.5, None])
BAD_ITEMS = st.sampled_from([("a",), ("a", X, 1), "aX", b"\x01\x02", {"a": 1, 3: 2}, None,
                             (("a", 1.5), X), (["a", None], X), ([], X), ("a", 0), (("a",), True),
                             (("a",) * 33, S), [["a", ["b"]], S]])


def _call(obj, name, *args):
    try:
        return ("ok", getattr(obj, name)(*args))
    except Exception as e:  # noqa: BLE001 - the exception type is the answer
        return ("raise", type(e))


def _by_resource(rows):
    """Snapshot rows grouped by resource, order within a resource kept."""
    out = {}
    for path, txn, mode, granted in rows:
        out.setdefault(paths.encode(path), []).append((path, txn, mode, granted))
    return out


class Differential(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.py = _pytable.Table(escalation_threshold=3, token_base=100)
        self.c = _ctable.Table(escalation_threshold=3, token_base=100)

    def same(self, name, *args):
        a = _call(self.py, name, *args)
        b = _call(self.c, name, *args)
        assert a == b, (name, args, a, b)
        return a

    @rule(txn=TXNS, path=PATHS, mode=MODES, nowait=st.booleans())
    def lock(self, txn, path, mode, nowait):
        self.same("lock", txn, path, mode, nowait)

    @rule(txn=TXNS, parent=st.sampled_from(COMPONENTS), mode=st.sampled_from([IS, S, X, IX]))
    def lock_many_children(self, txn, parent, mode):
        # enough children under one node to cross the escalation threshold
        for child in (1, 2, 3, 4, 5):
            r = self.same("lock", txn, (parent, child), mode, False)
            if r == ("ok", _pytable.WAITING) or r[0] == "raise":
                break

    @rule(txn=TXNS, batch=st.lists(st.tuples(PATHS, MODES, st.booleans()), max_size=6),
          nowait=st.booleans(), bad=st.one_of(st.none(), st.tuples(st.integers(0, 6), BAD_ITEMS)))
    def lock_many(self, txn, batch, nowait, bad):
        # paths as tuples or (as decoded from msgpack) lists; sometimes one bad item
        items = [(list(p) if as_list else p, m) for p, m, as_list in batch]
        if bad is not None:
            items.insert(min(bad[0], len(items)), bad[1])
        self.same("lock_many", txn, items, nowait)

    @rule(txn=st.one_of(TXNS, ODD_TXNS), items=st.sampled_from([None, "ab", {("a",): 1}, (("a", 1),)]))
    def lock_many_odd(self, txn, items):
        self.same("lock_many", txn, items)

    @rule(txn=TXNS, path=PATHS, mode=MODES, token=st.sampled_from([1, 7, 50, 99, 100, 150, 10 ** 6]))
    def reclaim(self, txn, path, mode, token):
        # a lock given back with its old token (a shard's RECLAIM): never
        # escalates; tokens above the counter raise it
        self.same("reclaim", txn, path, mode, token)

    @rule(txn=st.one_of(TXNS, ODD_TXNS), path=PATHS, mode=st.one_of(MODES, ODD_MODES),
          token=st.sampled_from([0, -1, 1 << 63, 2.0, True, None, "1"]))
    def reclaim_odd(self, txn, path, mode, token):
        self.same("reclaim", txn, path, mode, token)

    @rule(txn=TXNS, path=PATHS)
    def unlock(self, txn, path):
        self.same("unlock", txn, path)

    @rule(txn=TXNS)
    def release_all(self, txn):
        self.same("release_all", txn)

    @rule(txn=TXNS, path=PATHS, mode=MODES)
    def downgrade(self, txn, path, mode):
        self.same("downgrade", txn, path, mode)

    @rule(txn=st.one_of(TXNS, ODD_TXNS), path=PATHS, mode=st.one_of(MODES, ODD_MODES))
    def downgrade_odd(self, txn, path, mode):
        self.same("downgrade", txn, path, mode)

    @rule(txn=TXNS)
    def cancel_wait(self, txn):
        self.same("cancel_wait", txn)

    @rule(txn=ODD_TXNS, path=PATHS, mode=MODES)
    def bad_txn(self, txn, path, mode):
        self.same("lock", txn, path, mode)
        self.same("unlock", txn, path)
        self.same("release_all", txn)

    @rule(txn=TXNS, path=PATHS, mode=ODD_MODES)
    def bad_mode(self, txn, path, mode):
        self.same("lock", txn, path, mode)

    @rule(txn=TXNS)
    def find_cycle(self, txn):
        self.same("find_cycle", txn)

    @rule(txn=st.one_of(TXNS, ODD_TXNS), path=PATHS)
    def lookups(self, txn, path):
        self.same("held", txn)
        self.same("mode_held", txn, path)
        self.same("is_waiting", txn)
        self.same("waiting_on", txn)

    @invariant()
    def agree(self):
        self.py._check()
        self.c._check()
        a, b = self.py.snapshot(), self.c.snapshot()
        assert len(a) == len(b)
        assert _by_resource(a) == _by_resource(b)
        assert self.py.wait_for_graph() == self.c.wait_for_graph()
        assert self.py.stats() == self.c.stats()
        assert self.py.transactions() == self.c.transactions()
        for txn in range(1, 6):
            assert self.py.find_cycle(txn) == self.c.find_cycle(txn)
            assert self.py.held(txn) == self.c.held(txn)


Differential.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_differential = pytest.mark.slow(Differential.TestCase)


def _both(fn):
    a = _pytable.Table(escalation_threshold=3)
    b = _ctable.Table(escalation_threshold=3)
    ra, rb = fn(a), fn(b)
    assert ra == rb
    a._check()
    b._check()
    assert _by_resource(a.snapshot()) == _by_resource(b.snapshot())
    return rb


def test_scripted_deadlock_and_fifo():
    def script(t):
        out = [t.lock(1, ("db", "t1"), X), t.lock(2, ("db", "t2"), X),
               t.lock(3, ("db", "t1"), S), t.lock(1, ("db", "t2"), S),
               t.lock(2, ("db", "t1"), IS)]
        out += [t.find_cycle(1), t.find_cycle(2), t.find_cycle(3), t.wait_for_graph()]
        out += [t.cancel_wait(2), t.release_all(1), t.held(3), t.stats()]
        return out
    r = _both(script)
    assert r[5] and r[5][0] == 1


def test_scripted_conversions():
    def script(t):
        out = [t.lock(1, "r", S), t.lock(2, "r", S), t.lock(3, "r", IS),
               t.lock(1, "r", X), t.lock(2, "r", IX), t.lock(4, "r", IS),
               t.snapshot(), t.find_cycle(1), t.find_cycle(4), t.waiting_on(1)]
        out += [t.release_all(3), t.cancel_wait(2), t.snapshot(), t.release_all(1),
                t.release_all(2), t.release_all(4), t.stats()]
        return out
    _both(script)


def test_scripted_escalation():
    def script(t):
        out = [t.lock(1, ("db", "tab", i), S) for i in range(5)]
        out += [t.held(1), t.lock(2, ("db", "tab", 9), IX), t.lock(1, ("db", "tab", 1), S)]
        out += [t.lock(1, ("db", "u", i), X) for i in range(5)]
        out += [t.held(1), t.unlock(1, ("db", "u", 3)), t.stats()]
        return out
    _both(script)


# ------------------------------------------------------------------ collisions


@pytest.mark.parametrize("mask", [0, 1, 0xFF])
def test_hash_collisions_never_merge(mask):
    t = _ctable.Table(escalation_threshold=10_000)
    t._debug_set_hash_mask(mask)
    keys = ([("a",), (b"a",), ("a", "b"), ("ab",), (0,), (1,), ("",), (b"",), ("x" * 100,),
             ("x" * 101,)] + [("k", i) for i in range(150)] + [(i,) for i in range(150)])
    for n, k in enumerate(keys):
        assert t.lock(1 + n % 7, k, S if n % 2 else IS) > 0
    t._check()
    rows = t.snapshot()
    leaf = {}
    for path, txn, mode, granted in rows:
        assert granted
        leaf.setdefault(path, set()).add((txn, mode))
    for n, k in enumerate(keys):
        assert (1 + n % 7, S if n % 2 else IS) in leaf[k]
        assert t.mode_held(1 + n % 7, k) in (IS, S)
    # a key never locked shares a hash with all of them but is not found
    assert t.mode_held(1, ("zz",)) == 0
    for txn in range(1, 8):
        t.release_all(txn)
        t._check()
    assert t.snapshot() == []
    with pytest.raises(InvalidRequest):
        t.lock(1, "a", S) and t._debug_set_hash_mask(0xFFFFFFFF)


# ------------------------------------------------------------------ leaks


def _workload(t, n):
    for i in range(n):
        txn = 1 + i % 9
        t.lock(txn, ("db", "tab%d" % (i % 5), i), X if i % 3 else S)
        t.lock(txn, ("long" * 20, b"k" * (i % 300), i % 7), IS)
        if i % 11 == 0:
            t.find_cycle(txn)
        if i % 13 == 0:
            t.cancel_wait(txn)
    for txn in range(1, 10):
        t.release_all(txn)


def test_no_leaks():
    t = _ctable.Table(escalation_threshold=50)
    fresh = t._alloc_counts()
    _workload(t, 3000)
    st_ = t.stats()
    assert (st_["requests"], st_["resources"], st_["transactions"]) == (0, 0, 0)
    a = t._alloc_counts()
    assert a["live_requests"] == a["live_resources"] == a["live_txns"] == 0
    assert a["live_key_blocks"] == 0
    # every slab keeps at most its first chunk while empty
    assert a["chunks"] <= 3 + 8
    steady = a["heap_blocks"]
    _workload(t, 3000)
    assert t._alloc_counts()["heap_blocks"] == steady
    assert t._compact()
    back = t._alloc_counts()
    assert back["heap_blocks"] == fresh["heap_blocks"]
    assert back["chunks"] == 0 and back["hash_slots"] == fresh["hash_slots"]
    t.lock(1, "a", S)
    assert not t._compact()
    t._check()


# ------------------------------------------------------------------ threads


def test_threads_see_consistent_tables():
    """Many threads on one table, no outside lock (the manager's fast path)."""
    import gc
    import threading

    t = _ctable.Table(escalation_threshold=4)
    errors = []
    old = gc.get_threshold()
    gc.set_threshold(50)   # collections (and thread switches) mid-method

    def worker(k):
        try:
            for i in range(1500):
                txn = 1 + (k * 7 + i) % 12
                if t.lock(txn, ("db", i % 6, i % 3), (i % 5) + 1, True) < 0:
                    t.release_all(txn)
                if i % 5 == 0:
                    t.release_all(txn)
                rows = t.snapshot()
                assert all(r[2] in (1, 2, 3, 4, 5) for r in rows)
                t.held(txn)
                t.wait_for_graph()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        gc.set_threshold(*old)
    assert not errors, errors
    t._check()
    for txn in t.transactions():
        t.release_all(txn)
    assert t.stats()["requests"] == 0


# ------------------------------------------------------------------ lock_many

def test_lock_many_matches_across_backends_scripted():
    def script(t):
        out = [t.lock_many(1, [(("a", i), S) for i in range(5)]),
               t.lock_many(2, [(("a", 9), IX), (["a", 9], X), ("b", SIX)]),
               t.lock_many(3, [("b", IS), ("a", IX), (("a", 9), S)]),
               t.lock_many(4, [("b", X)], True), t.snapshot(), t.find_cycle(3)]
        out += [t.release_all(2), t.held(3), t.release_all(1), t.stats()]
        return out
    _both(script)


def test_scripted_reclaim():
    """Reclaim keeps the given token, takes intention locks on the ancestors,
    never escalates, refuses a conflict without changing anything, leaves a
    covered node alone, and later grants get larger tokens."""
    def script(t):
        out = [t.reclaim(1, ("db", "t1"), S, 5), t.reclaim(1, ("db", "t1", "r"), X, 9),
               t.reclaim(1, ("db", "t1", "r2"), S, 11),       # covered by t1 (SIX: converted, new token)
               t.reclaim(2, ("db", "t1", "r3"), IX, 12),      # conflicts with SIX held by 1
               t.held(1), t.held(2)]
        for k in range(6):                                    # above the threshold: no escalation
            out.append(t.reclaim(3, ("db", "t2", k), X, 20 + k))
        out.append(t.stats()["escalations"])
        out.append(t.lock(4, ("db", "t2", 99), X))
        out.append(t.reclaim(5, ("db", "t3"), X, 10 ** 9))      # raises the counter
        out.append(t.lock(6, ("db", "t4"), X))
        return out
    out = _both(script)
    assert out[:2] == [5, 9] and 9 > out[2] > 5 and out[3] == _pytable.CONFLICT
    assert dict(out[4]) == {("db",): IX, ("db", "t1"): SIX, ("db", "t1", "r"): X} and out[5] == []
    assert out[6:12] == [20, 21, 22, 23, 24, 25] and out[12] == 0
    assert 25 < out[13] < 10 ** 9 and out[14] == 10 ** 9 and out[15] > 10 ** 9
