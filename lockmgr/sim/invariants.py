"""The invariants the simulation checks after every event (docs/simulation.md).

Interface:
    Violation(Exception)
    Checker(world)          .check() after every event; hooks the world calls:
                            shard_started/shard_crashed, durable(batch), granted, prepared,
                            txn_end, victim, observe(shard) (a lock request just started to wait)
    TokenTable(table, checker, shard)   the shard's lock table, unchanged, with every token it
                            hands out shown to the checker

The checks (each uses only the simulation's own knowledge and the reference
conflict matrix of lockmgr.modes, never the table's answer to "compatible?"):

1. One grant at a time: on every live shard, the granted locks on each node are
   pairwise compatible (distinct transactions).
2. Strong locks cover the cluster: a strong lock (S/SIX/X) on a node above the
   partition depth that a client was told it holds is held on every live shard
   where the transaction still exists in the same epoch. With 1., no two
   incompatible locks are held on one node anywhere in the cluster.
3. Tokens only grow: a token a shard hands out for a new grant is larger than
   every token that shard (in any earlier epoch too) handed out before; a
   reclaimed token is one of an earlier epoch (below this epoch's base).
4. Deadlock victims were in a real cycle: the victim was on a cycle of the
   cluster-wide wait-for graph (the union of every live shard's edges) at some
   moment (after an event, or the instant a lock request started to wait).
5. Cycles are broken: no cycle of the cluster-wide wait-for graph lives longer
   than ``cycle_bound`` seconds after both its start and the end of the last fault.
6. No acknowledged prepare is lost: a PREPARE a client got OK for is, on that
   shard, a prepared (or deciding) transaction whenever the shard is up, until its
   decision is durable in the shard's log.
"""

from ..modes import CONFLICTS, SUPREMUM
from ..rules import ACTIVE, EPOCH_BITS

__all__ = ["Violation", "Checker", "TokenTable"]

_STRONG = (3, 4, 5)     # S, SIX, X


class Violation(Exception):
    """An invariant is broken."""


def _covers_by_ancestor(table, tid, path, mode):
    """True if a proper ancestor of ``path`` held by ``tid`` covers ``mode``
    (X covers every mode; S and SIX cover IS and S)."""
    for k in range(1, len(path)):
        h = table.mode_held(tid, path[:k])
        if h == 5 or (h in (3, 4) and mode in (1, 3)):
            return True
    return False


class TokenTable:
    """A shard's lock table, passed through; tokens are shown to the checker (invariant 3)."""

    def __init__(self, table, checker, shard):
        self._t = table
        self._c = checker
        self._s = shard

    def __getattr__(self, name):
        return getattr(self._t, name)

    def lock(self, txn, resource, mode, nowait=False):
        t = self._t
        before = t.mode_held(txn, resource)
        fresh = (SUPREMUM[before][mode] != before) and not _covers_by_ancestor(t, txn, resource, mode)
        tok = t.lock(txn, resource, mode, nowait)
        if tok > 0:
            self._c.token(self._s, txn, tok, fresh)
        elif tok == -1:                   # WAITING: a cycle may have closed just now
            self._c.observe()
        return tok

    def lock_many(self, txn, items, nowait=False):
        res = self._t.lock_many(txn, items, nowait)
        for tok in res:
            if tok > 0:
                self._c.token(self._s, txn, tok, False)
        if res and res[-1] == -1:
            self._c.observe()
        return res

    def reclaim(self, txn, resource, mode, token):
        tok = self._t.reclaim(txn, resource, mode, token)
        if tok > 0:
            self._c.reclaimed(self._s, txn, tok)
        return tok


def _cycle_nodes(graph):
    """The transactions on some cycle of ``graph`` ({tid: set of tids}), and its SCCs of size > 1."""
    index = {}
    low = {}
    stack = []
    on = set()
    sccs = []
    counter = [0]
    for root in list(graph):
        if root in index:
            continue
        work = [(root, iter(graph.get(root, ())))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(graph.get(w, ()))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1 or v in graph.get(v, ()):
                        sccs.append(frozenset(comp))
    return sccs


class Checker:
    def __init__(self, world):
        self.w = world
        self.max_tok = {}          # shard index -> largest token handed out (any epoch)
        self.step_start = {}       # shard index -> largest token before this event
        self.seen_tok = {}         # shard index -> set of tokens handed out
        self.in_cycle = set()      # transactions seen on a cycle
        self.cycles = {}           # SCC -> first seen (sim time)
        self.acked = {}            # (shard, gtrid) -> tid: PREPARE acknowledged to a client
        self.resolved = {}         # shard -> gtrids whose decision is durable there
        self.strong = {}           # tid -> [(path, mode, {shard: epoch})]  acknowledged strong locks
        self.live_txns = {}        # tid -> client core (still active for its client)

    # ---------------------------------------------------------- hooks

    def shard_started(self, s):
        pass

    def shard_crashed(self, s):
        pass

    def durable(self, s, batch):
        for t in batch:
            r = t.record
            if r.get("t") == "resolve":
                self.resolved.setdefault(s.index, set()).add(r["gtrid"])
                self.acked.pop((s.index, r["gtrid"]), None)     # decided: nothing more to keep

    def token(self, s, tid, tok, fresh):
        i = s.index
        seen = self.seen_tok.setdefault(i, set())
        mx = self.max_tok.get(i, 0)
        if fresh and tok <= mx:
            raise Violation(f"token did not grow: shard {i} granted transaction {tid} a new lock with token "
                            f"{tok:#x}, not above the largest it handed out before ({mx:#x})")
        seen.add(tok)
        if tok > mx:
            self.max_tok[i] = tok

    def reclaimed(self, s, tid, tok):
        if tok > self.step_start.get(s.index, 0) or tok >= s.core.epoch << EPOCH_BITS:
            raise Violation(f"shard {s.index} reclaimed token {tok:#x} for transaction {tid}: not one of an "
                            f"earlier epoch's grants")

    def granted(self, core, items, client):
        """A client was told its lock(s) are granted."""
        self.live_txns[core.id] = core
        for res, mode in items:
            path = res if type(res) is tuple else (res,)
            if mode in _STRONG and len(path) < self.w.partition_depth:
                self.strong.setdefault(core.id, []).append((path, mode, dict(core.touched)))

    def prepared(self, core):
        for s in core.touched:
            self.acked[(s, core.gtrid)] = core.id

    def txn_end(self, core):
        self.live_txns.pop(core.id, None)
        self.strong.pop(core.id, None)

    def victim(self, tid):
        if tid not in self.in_cycle:
            self.observe()          # (the cycle may be in the graph right now)
            if tid not in self.in_cycle:
                raise Violation(f"transaction {tid} was aborted as a deadlock victim but was never seen on a cycle "
                                f"of the cluster-wide wait-for graph")

    # ---------------------------------------------------------- checks

    def _graph(self):
        g = {}
        for s in self.w.shards:
            if s.up:
                for k, v in s.core.table.wait_for_graph().items():
                    g.setdefault(k, set()).update(v)
        return g

    def observe(self):
        """Note the transactions on cycles now; -> the SCCs."""
        sccs = _cycle_nodes(self._graph())
        for c in sccs:
            self.in_cycle.update(c)
        return sccs

    def check(self):
        """Every invariant, after an event. An event that changed no shard (a client's own
        step, a message dropped on the way) leaves the shards' state as the last check saw
        it; only the time-bound of invariant 5 is re-checked then."""
        w = self.w
        dirty = w.dirty
        if not dirty:
            self._check_cycle_age()
            return
        for s in w.shards:
            self.step_start[s.index] = self.max_tok.get(s.index, 0)
            if s.up and s.index in dirty:
                self._check_table(s)
        dirty.clear()
        self._check_strong()
        self._check_cycles()
        self._check_prepares()

    def _check_table(self, s):
        by_path = {}
        for path, tid, mode, granted in s.core.table.snapshot():
            if granted:
                by_path.setdefault(tuple(path), []).append((tid, mode))
        for path, lst in by_path.items():
            if len(lst) < 2:
                continue
            for a in range(len(lst)):
                ta, ma = lst[a]
                for b in range(a + 1, len(lst)):
                    tb, mb = lst[b]
                    if ta != tb and CONFLICTS[ma] >> mb & 1:
                        raise Violation(f"incompatible grants on shard {s.index}: {path!r} held in mode {ma} by "
                                        f"transaction {ta} and in mode {mb} by transaction {tb}")

    def _check_strong(self):
        for tid, lst in self.strong.items():
            core = self.live_txns.get(tid)
            if core is None or core.state is not ACTIVE or core.doom or core.victim:
                continue
            for path, mode, epochs in lst:
                for s in self.w.shards:
                    if not s.up or epochs.get(s.index) != s.core.epoch:
                        continue
                    t = s.core.txn(tid)
                    if t is None or t.session is None or not s.core.session_alive(t.session):
                        continue
                    held = s.core.table.mode_held(tid, path)
                    if SUPREMUM[held][mode] != held:
                        raise Violation(f"transaction {tid} was told it holds mode {mode} on {path!r} (above the "
                                        f"partition depth: on every shard), but shard {s.index} has it in mode {held}")

    def _check_cycles(self):
        now = self.w.t
        self.cycles = {c: self.cycles.get(c, now) for c in self.observe()}
        self._check_cycle_age()

    def _check_cycle_age(self):
        w = self.w
        now = w.t
        for c, start in self.cycles.items():
            since = max(start, w.last_fault_end)
            if now - since > w.cfg.cycle_bound and not w.cut:
                raise Violation(f"a wait-for cycle of transactions {sorted(c)} has lasted {now - start:.3f}s "
                                f"({now - since:.3f}s since the last fault ended; bound {w.cfg.cycle_bound}s)")

    def _check_prepares(self):
        w = self.w
        for (i, gtrid), tid in self.acked.items():
            s = w.shards[i]
            if not s.up or gtrid in self.resolved.get(i, ()):
                continue
            t = s.core.txn(tid)
            if t is None or t.state == ACTIVE:
                raise Violation(f"acknowledged prepare lost: shard {i} acknowledged PREPARE of {gtrid!r} (transaction "
                                f"{tid}) but has no prepared transaction for it and no durable decision")
