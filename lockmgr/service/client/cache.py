"""Client lock caching: a finished transaction's locks kept for the client's
next transactions (opt in: ``connect(cache_locks=True)``).

Interface:
    LockCache(client, max_entries, max_idle)    one per caching Client (``client._cache``)
        .adopt(core)               a new transaction takes an idle carrier (or a new one)
        .hit(core, shard, path, mode) -> token or 0    a lock granted from the cache
        .hits_many(core, parsed) -> {item index: token}
        .make_way(core, shards, path, mode)    give up the client's idle cached locks in the way
        .keep(core)                a committed transaction's locks stay cached
        .discard(core)             an aborted transaction's carrier dies with it
        .stats() -> dict           entries, carriers, idle, hits, misses, revokes, giveups, evictions
        .tick(now) -> float        (the housekeeper, under the engine's lock) the idle-age sweep
    DEFAULT_MAX_ENTRIES, DEFAULT_MAX_IDLE, MAX_CARRIERS

Design (docs/service.md, "Lock caching"): on the shards the cached locks stay
held by a *carrier*, an ordinary transaction of the session that stays open
between the client's transactions. A transaction adopts an idle carrier when
it begins (its requests carry the carrier's id, and it shares the carrier's
record of what is held); a lock the carrier already holds in a covering mode is
granted here, with the token it was granted with, and no message. Committing
sends nothing: the carrier becomes idle, its locks cached. A shard that
finds a request waiting for (or refused because of) a carrier's lock sends
N_CACHE_REVOKE; the carrier gives the lock up (CACHE_GIVEUP: it and
everything below it) at once if idle, else when its transaction ends. An abort
ends the carrier (RELEASE everywhere, as for any transaction).

Every field here is read and changed under the engine's lock (``eng._mu``),
the lock the push handler runs under; nothing here calls the engine with it
held except to queue calls (``_queue_locked``). A carrier's ``locks`` are also
read, without the lock, by the one transaction that has adopted it (only that
transaction changes them while it is adopted).
"""

import collections
import logging
import time

from .. import wire
from ...modes import CONFLICTS, INTENTION, SUPREMUM
from ...rules import ABORTED, ACTIVE
from .engine import _Call, _NONE, _ORPHAN_DELAY

_log = logging.getLogger("lockmgr.client")
_monotonic = time.monotonic

DEFAULT_MAX_ENTRIES = 10_000     # cached locks (explicit ones; their ancestors' intention locks come along)
DEFAULT_MAX_IDLE = 30.0          # s a cached lock may go unused before it is given up
MAX_CARRIERS = 64                # carriers per client (at most this many transactions use the cache at once)


class _Carrier:
    """One carrier: the open shard-side transaction ``core`` (a _TxnCore whose
    ``locks`` are the cache) and who uses it."""

    __slots__ = ("core", "user", "revoked", "idle_since", "tree")

    def __init__(self, core, now):
        self.core = core
        self.user = None            # the _TxnCore that adopted it, or None (idle)
        self.revoked = {}           # shard -> {path}: give up when the user ends
        self.idle_since = now
        # shard -> {node: {child node, ...}} over every prefix of the recorded
        # locks (root: ()); a superset (an unlock within a transaction leaves its
        # node), so the subtree of a node lists every recorded lock below it
        self.tree = {}


def _tree_add(tree, p):
    for k in range(len(p)):
        q = p[:k]
        kids = tree.get(q)
        if kids is None:
            tree[q] = {p[:k + 1]}
        else:
            kids.add(p[:k + 1])


def _subtree(tree, p):
    """``p`` and every node below it in ``tree``."""
    out = [p]
    k = 0
    while k < len(out):
        out.extend(tree.get(out[k], ()))
        k += 1
    return out


def _below(path, p):
    """True if ``p`` is ``path`` or below it."""
    n = len(path)
    return len(p) >= n and p[:n] == path


class LockCache:
    """The lock cache of one Client (see the module docstring)."""

    def __init__(self, client, max_entries=DEFAULT_MAX_ENTRIES, max_idle=DEFAULT_MAX_IDLE):
        if type(max_entries) is not int or max_entries < 0:
            raise ValueError(f"cache_max_entries must be an int >= 0; got {max_entries!r}")
        if type(max_idle) is bool or not isinstance(max_idle, (int, float)) or not max_idle > 0:
            raise ValueError(f"cache_max_idle must be a number of seconds > 0; got {max_idle!r}")
        self.client = client
        self.eng = eng = client._eng
        self.max_entries = max_entries
        self.max_idle = float(max_idle)
        self.carriers = {}                      # carrier id -> _Carrier
        self.idle = []                          # idle carriers, the most recently used last
        self.lru = collections.OrderedDict()    # (carrier id, shard, path) -> last use, oldest first
        self.hits = self.misses = self.revokes = self.giveups = self.evictions = 0
        self._next_sweep = _monotonic() + self.max_idle
        eng.on_push(wire.N_CACHE_REVOKE, self._on_revoke)
        eng.cache_tick = self.tick
        eng.cache_clear = self._clear_locked
        eng.want_pushes(+1)

    # -- transactions (user threads)

    def adopt(self, core):
        """``core`` (a new transaction without gtrid) takes an idle carrier, or a new one."""
        eng = self.eng
        with eng._mu:
            if eng.dead is not None or eng.closed:
                self._clear_locked()
                return
            c = None
            while self.idle:
                c = self.idle.pop()
                if self._usable_locked(c):
                    break
                self._drop_locked(c)
                c = None
            if c is None:
                if len(self.carriers) >= MAX_CARRIERS:
                    return                      # this one goes uncached
                from .ops import _TxnCore
                cc = _TxnCore(self.client, None, None)
                c = _Carrier(cc, _monotonic())
                self.carriers[cc.id] = c
                eng.txns[cc.id] = cc            # reclaimed after a shard restart like any transaction
            c.user = core
            cc = c.core
            core.id = core.wid = cc.id         # the id the shards see, reports show and victims are chosen by
            core.carrier = cc
            core.touched = cc.touched
            core.locks = cc.locks
            core.busy = cc.busy
            core.used = set()

    def _usable_locked(self, c):
        cc = c.core
        if cc.state is not ACTIVE or cc.doom:
            return False
        eps = self.eng.epoch
        for s, e in cc.touched.items():
            if e and eps[s] != e and s not in self.eng._reclaims:
                return False                    # the shard restarted and the locks were not reclaimed
        return True

    def hit(self, core, s, path, mode):
        """The token if ``core``'s carrier holds ``path`` on shard ``s`` in a mode
        covering ``mode`` (granted here, no message), else 0."""
        d = core.locks.get(s)
        e = d.get(path) if d is not None else None
        if e is not None and SUPREMUM[e[0]][mode] == e[0]:
            self.hits += 1
            core.used.add((s, path))
            return e[1]
        self.misses += 1
        return 0

    def hits_many(self, core, parsed):
        """{index: token} of the lock_many items ``parsed`` ([(path, key, mode)]) the cache grants."""
        out = {}
        for i, (path, key, mode) in enumerate(parsed):
            shards = core.route(key, len(path), mode)
            if len(shards) == 1:
                tok = self.hit(core, shards[0], path, mode)
                if tok:
                    out[i] = tok
        return out

    def keep(self, core):
        """``core`` committed: its carrier's locks stay cached (what was revoked
        meanwhile is given up now), and the carrier is idle."""
        eng = self.eng
        with eng._mu:
            c = self.carriers.get(core.wid)
            if c is None or c.user is not core:
                return
            now = _monotonic()
            lru = self.lru
            cid = c.core.id
            locks = c.core.locks
            tree = c.tree
            for s, p in core.used:
                d = locks.get(s)
                if d is None or p not in d:
                    continue                    # (unlocked meanwhile, or never granted)
                key = (cid, s, p)
                if key not in lru:
                    t = tree.get(s)
                    if t is None:
                        t = tree[s] = {}
                    _tree_add(t, p)
                lru[key] = now
                lru.move_to_end(key)
            c.user = None
            c.idle_since = now
            if eng.dead is not None:
                self._clear_locked()
                return
            revoked, c.revoked = c.revoked, {}
            for s, paths in revoked.items():
                for p in sorted(paths, key=len):
                    self._giveup_locked(c, s, p)
            self.idle.append(c)
            if len(lru) > self.max_entries or now >= self._next_sweep:
                self._sweep_locked(now)

    def discard(self, core):
        """``core`` (which adopted a carrier) was aborted: the carrier ends with it
        (its RELEASEs are the transaction's own)."""
        with self.eng._mu:
            c = self.carriers.pop(core.wid, None)
            if c is None:
                return
            c.core.state = ABORTED
            self.eng.txns.pop(c.core.id, None)
            if c in self.idle:
                self.idle.remove(c)

    # -- under the engine's lock

    def _queue_locked(self, s, typ, args):
        """Queue a call whose answer nobody waits for (errors are logged)."""
        eng = self.eng
        now = _monotonic()
        eng._outq.append(_Call(s, typ, args, now + eng.request_timeout, cb=self._answered))
        if eng._owner_kind is _NONE:
            if eng._orphaned_at is None:
                eng._orphaned_at = now
            if eng._hk_wake_at > eng._orphaned_at + _ORPHAN_DELAY:
                eng._wake_hk()
        else:
            eng._wake_owner_locked()

    def _answered(self, call):
        err = call.error
        if err is not None and self.eng.dead is None and not self.eng.closed:
            _log.info("session %#x: %s on shard %d failed: %s", self.eng.session,
                      wire.TYPE_NAMES.get(call.typ, call.typ), call.shard, err)

    def _giveup_locked(self, c, s, path):
        """Give up carrier ``c``'s locks at and below ``path`` on shard ``s``, and
        the ancestors of ``path`` that are not recorded and have nothing else
        recorded below them (so what the shard holds for an idle carrier stays
        the recorded locks and their ancestors: what ``make_way`` looks at).
        CACHE_GIVEUP names every node given up, deepest first. Runtime: O(the
        subtree + the depth)."""
        d = c.core.locks.get(s)
        if d is None:
            d = {}
        t = c.tree.get(s)
        if t is None:
            t = c.tree[s] = {}
        cid = c.core.id
        lru = self.lru
        nodes = _subtree(t, path)
        many = len(nodes) > wire.MAX_BATCH - 64
        for p in nodes:
            t.pop(p, None)
            if p in d:
                del d[p]
                lru.pop((cid, s, p), None)
        if many:
            nodes = [path]           # (the shard finds what is below it itself)
        a = path[:-1]
        kids = t.get(a)
        if kids is not None:
            kids.discard(path)
        while a and not t.get(a) and a not in d:
            nodes.append(a)          # an intention lock only the given-up locks needed
            t.pop(a, None)
            up = t.get(a[:-1])
            if up is not None:
                up.discard(a)
            a = a[:-1]
        nodes.sort(key=len, reverse=True)
        self.giveups += 1
        self._queue_locked(s, wire.CACHE_GIVEUP, [cid, [list(p) for p in nodes]])

    def make_way(self, core, shards, path, mode):
        """Before ``core`` asks the shards for ``mode`` on ``path``: give up what
        this client's *idle* carriers cache there in a conflicting mode (their
        recorded locks, and the intention locks those imply on the ancestors),
        in the same frame, ahead of the request, so a transaction never waits for
        (or is refused because of) its own client's idle cache. Carriers in use
        are left to the shard (the request queues, and is revoked as any).
        Runtime: O(depth + the subtree of ``path``) per idle carrier."""
        if not self.idle:
            return
        with self.eng._mu:
            n = len(path)
            im = INTENTION[mode]
            for s in shards:
                for c in list(self.idle):
                    d = c.core.locks.get(s)
                    if not d:
                        continue
                    level = None
                    for k in range(1, n):          # a recorded ancestor in a mode the intention conflicts with
                        e = d.get(path[:k])
                        if e is not None and (CONFLICTS[e[0]] >> im) & 1:
                            level = path[:k]
                            break
                    if level is None:
                        t = c.tree.get(s)
                        for q in (_subtree(t, path) if t else (path,)):
                            e = d.get(q)
                            if e is not None and (CONFLICTS[e[0] if len(q) == n else INTENTION[e[0]]] >> mode) & 1:
                                level = path
                                break
                    if level is not None:
                        self._giveup_locked(c, s, level)

    def _drop_locked(self, c):
        """End an idle carrier: RELEASE on every shard it touched."""
        cc = c.core
        self.carriers.pop(cc.id, None)
        self.eng.txns.pop(cc.id, None)
        if cc.state is ACTIVE and self.eng.dead is None:
            for s in cc.touched:
                self._queue_locked(s, wire.RELEASE, [cc.id, False])
        cc.state = ABORTED
        for d in cc.locks.values():
            self.evictions += len(d)
        cc.locks = {}

    def _clear_locked(self):
        """The session is over (or the client closed): the cache is empty (the
        shards released everything with the session)."""
        for c in self.carriers.values():
            c.core.state = ABORTED
            c.core.locks = {}
            self.eng.txns.pop(c.core.id, None)
        self.carriers.clear()
        self.idle.clear()
        self.lru.clear()

    def _sweep_locked(self, now):
        """Bounds: give up the least recently used idle entries beyond ``max_entries``
        and those unused for ``max_idle``; end carriers idle for ``max_idle``."""
        self._next_sweep = now + self.max_idle / 4
        lru = self.lru
        old = now - self.max_idle
        busy = []
        for _ in range(len(lru)):
            if not lru:
                break
            key, used = next(iter(lru.items()))
            if len(lru) - len(busy) <= self.max_entries and used > old:
                break
            del lru[key]
            cid, s, p = key
            c = self.carriers.get(cid)
            if c is None or p not in c.core.locks.get(s, ()):
                continue                        # gone already
            if c.user is not None:
                busy.append((key, used))        # in use: it stays
                continue
            self.evictions += 1
            self._giveup_locked(c, s, p)
        for key, used in busy:
            lru[key] = used
            lru.move_to_end(key, last=False)
        for c in list(self.idle):
            if c.idle_since <= old:
                self.idle.remove(c)
                self._drop_locked(c)

    def tick(self, now):
        """(the housekeeper, under the engine's lock) Sweep when due; the time of the next sweep."""
        if self.eng.dead is not None or self.eng.closed:
            if self.carriers:
                self._clear_locked()
            return now + 3600.0
        if now >= self._next_sweep:
            self._sweep_locked(now)
        return self._next_sweep

    def _on_revoke(self, i, payload):
        """N_CACHE_REVOKE from shard ``i`` (under the engine's lock, the socket owner's thread)."""
        if len(payload) != 4 or type(payload[1]) is not int or type(payload[2]) is not list:
            return
        c = self.carriers.get(payload[1])
        if c is None:
            return          # not a carrier (a transaction that releases at its end anyway), or gone
        self.revokes += 1
        path = tuple(payload[2])
        if c.user is None:
            self._giveup_locked(c, i, path)
        else:
            c.revoked.setdefault(i, set()).add(path)

    def stats(self):
        """What the cache holds and has done (this client): ``entries`` (cached
        explicit locks), ``carriers``, ``idle`` (carriers no transaction uses),
        ``hits``, ``misses``, ``revokes`` (callbacks received), ``giveups``,
        ``evictions`` (entries given up for the bounds)."""
        with self.eng._mu:
            if self.eng.dead is not None or self.eng.closed:
                self._clear_locked()
            return {"entries": sum(len(d) for c in self.carriers.values() for d in c.core.locks.values()),
                    "carriers": len(self.carriers), "idle": len(self.idle), "hits": self.hits,
                    "misses": self.misses, "revokes": self.revokes, "giveups": self.giveups,
                    "evictions": self.evictions}
