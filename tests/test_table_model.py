"""Model-based test: each table backend against a tiny reference model.

The model knows only flat (one-component) resources and states the rules in
their plainest form: a holder's conversion is granted if compatible with the
other holders; a new request is granted if compatible with every holder and
nobody waits; a release grants conversions first, then new waiters in FIFO
order until the first that must wait. Hierarchy and escalation are covered by
the C-vs-Python differential test (tests/test_ctable.py) and by the API suite.
"""

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from lockmgr import InvalidRequest
from lockmgr._core import available_backends, table_class
from lockmgr.modes import SUPREMUM, compatible

TXNS = st.integers(1, 4)
RES = st.sampled_from(["a", "b", "c"])
MODES = st.integers(1, 5)
WAITING, CONFLICT = -1, -2


class Model:
    def __init__(self):
        self.holders = {}   # res -> {txn: mode} in grant order
        self.conv = {}      # res -> [[txn, want]]
        self.waiters = {}   # res -> [[txn, want]]
        self.waiting = {}   # txn -> res
        self.tokens = {}    # (txn, res) -> token
        self.order = {}     # txn -> [res] in request order
        self.token = 0

    def _tok(self):
        self.token += 1
        return self.token

    def _others_ok(self, res, txn, mode):
        return all(compatible(m, mode) for t, m in self.holders.get(res, {}).items() if t != txn)

    def lock(self, txn, res, mode, nowait):
        if txn in self.waiting:
            raise InvalidRequest("waiting")
        h = self.holders.get(res, {}).get(txn)
        if h is not None:
            new = SUPREMUM[h][mode]
            if new == h:
                return self.tokens[(txn, res)]
            if self._others_ok(res, txn, new):
                self.holders[res][txn] = new
                self.tokens[(txn, res)] = t = self._tok()
                return t
            if nowait:
                return CONFLICT
            self.conv.setdefault(res, []).append([txn, new])
            self.waiting[txn] = res
            return WAITING
        free = not self.conv.get(res) and not self.waiters.get(res) and self._others_ok(res, txn, mode)
        if free:
            self.holders.setdefault(res, {})[txn] = mode
            self.tokens[(txn, res)] = t = self._tok()
            self.order.setdefault(txn, []).append(res)
            return t
        if nowait:
            return CONFLICT
        self.waiters.setdefault(res, []).append([txn, mode])
        self.order.setdefault(txn, []).append(res)
        self.waiting[txn] = res
        return WAITING

    def _grant(self, res, woken):
        for c in list(self.conv.get(res, [])):
            txn, want = c
            if self._others_ok(res, txn, want):
                self.conv[res].remove(c)
                self.holders[res][txn] = want
                self.tokens[(txn, res)] = self._tok()
                del self.waiting[txn]
                woken.append(txn)
        if not self.conv.get(res):
            q = self.waiters.get(res, [])
            while q and self._others_ok(res, q[0][0], q[0][1]):
                txn, want = q.pop(0)
                self.holders.setdefault(res, {})[txn] = want
                self.tokens[(txn, res)] = self._tok()
                del self.waiting[txn]
                woken.append(txn)
        for d in (self.holders, self.conv, self.waiters):
            if res in d and not d[res]:
                del d[res]

    def _drop(self, txn, res):
        if txn in self.holders.get(res, {}):
            del self.holders[res][txn]
        self.conv[res] = [c for c in self.conv.get(res, []) if c[0] != txn]
        self.waiters[res] = [w for w in self.waiters.get(res, []) if w[0] != txn]
        self.tokens.pop((txn, res), None)
        self.order[txn].remove(res)
        if self.waiting.get(txn) == res:
            del self.waiting[txn]

    def unlock(self, txn, res):
        if txn not in self.holders.get(res, {}):
            raise InvalidRequest("not held")
        self._drop(txn, res)
        woken = []
        self._grant(res, woken)
        return woken

    def release_all(self, txn):
        mine = list(self.order.get(txn, []))
        for res in mine:
            self._drop(txn, res)
        woken = []
        for res in mine:
            self._grant(res, woken)
        self.order.pop(txn, None)
        return woken

    def cancel_wait(self, txn):
        res = self.waiting.get(txn)
        if res is None:
            return []
        if txn in self.holders.get(res, {}):
            self.conv[res] = [c for c in self.conv[res] if c[0] != txn]
            del self.waiting[txn]
        else:
            self._drop(txn, res)
        woken = []
        self._grant(res, woken)
        return woken

    def held(self, txn):
        return sorted(((r,), m) for r in self.order.get(txn, []) for t, m in self.holders.get(r, {}).items()
                      if t == txn)

    def edges(self, txn):
        res = self.waiting.get(txn)
        if res is None:
            return set()
        conv = dict((t, w) for t, w in self.conv.get(res, []))
        if txn in conv:
            return {t for t, m in self.holders[res].items() if t != txn and not compatible(m, conv[txn])}
        q = self.waiters[res]
        i = [w[0] for w in q].index(txn)
        want = q[i][1]
        out = {t for t, m in self.holders.get(res, {}).items() if not compatible(m, want)}
        out |= set(conv)
        out |= {w[0] for w in q[:i]}
        return out

    def on_cycle(self, txn):
        seen, stack = set(), list(self.edges(txn))
        while stack:
            u = stack.pop()
            if u == txn:
                return True
            if u not in seen:
                seen.add(u)
                stack.extend(self.edges(u))
        return False


def make_machine(backend):
    Table = table_class(backend)

    class TableVsModel(RuleBasedStateMachine):
        @initialize()
        def setup(self):
            self.t = Table(1000, 0)
            self.m = Model()

        def same(self, f, g):
            try:
                want = ("ok", f())
            except InvalidRequest:
                want = ("err",)
            try:
                got = ("ok", g())
            except InvalidRequest:
                got = ("err",)
            assert got == want
            return got

        @rule(txn=TXNS, res=RES, mode=MODES, nowait=st.booleans())
        def lock(self, txn, res, mode, nowait):
            self.same(lambda: self.m.lock(txn, res, mode, nowait), lambda: self.t.lock(txn, res, mode, nowait))

        @rule(txn=TXNS, res=RES, mode=MODES)
        def reclaim(self, txn, res, mode):
            # as a nowait lock (tokens aside: the model's counter is not the table's)
            if txn in self.m.waiting:
                return
            want = self.m.lock(txn, res, mode, True)
            got = self.t.reclaim(txn, res, mode, 1)
            assert (want == CONFLICT) == (got == CONFLICT), (want, got)
            if want > 0 and got != want:     # granted or converted by this call: the given token
                assert got == 1
                self.m.tokens[(txn, res)] = 1

        @rule(txn=TXNS, res=RES)
        def unlock(self, txn, res):
            if txn in self.m.waiting:
                return  # the model does not state the waiting-unlock refusal
            self.same(lambda: self.m.unlock(txn, res), lambda: self.t.unlock(txn, res))

        @rule(txn=TXNS)
        def release_all(self, txn):
            self.same(lambda: self.m.release_all(txn), lambda: self.t.release_all(txn))

        @rule(txn=TXNS)
        def cancel_wait(self, txn):
            self.same(lambda: self.m.cancel_wait(txn), lambda: self.t.cancel_wait(txn))

        @rule(txn=TXNS)
        def cycle(self, txn):
            cyc = self.t.find_cycle(txn)
            assert bool(cyc) == self.m.on_cycle(txn)
            if cyc:
                assert cyc[0] == txn
                for a, b in zip(cyc, cyc[1:] + cyc[:1]):
                    assert b in self.m.edges(a), (cyc, a, b)

        @rule()
        def graph(self):
            g = self.t.wait_for_graph()
            assert g == {t: self.m.edges(t) for t in self.m.waiting}

        @invariant()
        def agree(self):
            if not hasattr(self, "t"):
                return
            self.t._check()
            for txn in range(1, 5):
                assert sorted(self.t.held(txn)) == self.m.held(txn)
                assert self.t.is_waiting(txn) == (txn in self.m.waiting)
            rows = sorted(self.t.snapshot())
            want = sorted([((r,), t, m, True) for r, hs in self.m.holders.items() for t, m in hs.items()]
                          + [((r,), t, w, False) for r, q in self.m.conv.items() for t, w in q]
                          + [((r,), t, w, False) for r, q in self.m.waiters.items() for t, w in q])
            assert rows == want

    TableVsModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, derandomize=True,
                                              deadline=None)
    return TableVsModel


for _b in available_backends():
    globals()[f"TestModel_{_b}"] = make_machine(_b).TestCase


@pytest.mark.parametrize("backend", available_backends())
def test_table_bad_input_changes_nothing(backend):
    t = table_class(backend)(1000, 0)
    t.lock(1, ("db", "x"), 5)
    before = (sorted(t.snapshot()), t.stats())
    for call in (lambda: t.lock(0, "a", 5), lambda: t.lock(1 << 64, "a", 5), lambda: t.lock("1", "a", 5),
                 lambda: t.lock(2, "a", 9), lambda: t.lock(2, (), 3), lambda: t.lock(2, ("a", 1.0), 3),
                 lambda: t.unlock(1, "zz"), lambda: t.unlock(1, ("db",)), lambda: t.unlock(2, ("db", "x"))):
        with pytest.raises(InvalidRequest):
            call()
        t._check()
    assert (sorted(t.snapshot()), t.stats()) == before
