"""The pure-Python lock table: the reference twin of the C table.

Interface (shared with ``lockmgr._core._ctable.Table``; see docs/table.md):

    Table(escalation_threshold=5000, token_base=0)
    lock(txn, resource, mode, nowait=False) -> token > 0 | WAITING | CONFLICT
    lock_many(txn, items, nowait=False) -> list of lock() results (see below)
    reclaim(txn, resource, mode, token) -> token | CONFLICT   (after a restart)
    unlock(txn, resource) -> list of woken txn ids
    release_all(txn) -> list of woken txn ids
    cancel_wait(txn) -> list of woken txn ids
    is_waiting(txn) -> bool;  waiting_on(txn) -> (path, mode) | None
    find_cycle(txn) -> list of txn ids on a wait-for cycle through txn ([] if none)
    held(txn) -> list of (path, mode);  mode_held(txn, resource) -> mode
    snapshot() -> list of (path, txn, mode, granted)
    wait_for_graph() -> {txn: set(txn)};  transactions() -> list of txn ids
    stats() -> dict;  _check() asserts every invariant

No call blocks (beyond the table's own short mutex: every public method is
serialised, so the table is thread-safe like the C one); no call allocates
per-lock Python state outside the table.
This twin favours clarity over speed; it is the executable specification the
C table is tested against (tests/test_table_model.py).
"""

import functools
import threading

from ..rules import check_mode, check_txn_id
from ..errors import InvalidRequest
from ..modes import CONFLICTS, SUPREMUM, INTENTION
from ..paths import encode, decode, prefix_ends, MAX_DEPTH

__all__ = ["Table", "WAITING", "CONFLICT", "SEARCH_LIMIT"]

WAITING = -1
CONFLICT = -2
NL, IS, IX, S, SIX, X = range(6)
TXN_MAX = (1 << 64) - 1
# The deadlock search visits at most this many transactions. Beyond it a
# cycle is left to the lock timeout (documented in docs/table.md).
SEARCH_LIMIT = 100_000


def _serialised(method):
    """Run a public method under the table's mutex (the C table does the same)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kw):
        with self._mutex:
            return method(self, *args, **kw)
    return wrapper


_check_txn = check_txn_id




class _Req:
    __slots__ = ("res", "txn", "held", "want", "token", "parent", "nchildren")

    def __init__(self, res, txn, parent):
        self.res = res
        self.txn = txn
        self.held = NL      # granted mode (NL: not granted yet)
        self.want = NL      # mode waited for (NL: not waiting)
        self.token = 0
        self.parent = parent  # this txn's request on the parent node, or None
        self.nchildren = 0    # this txn's requests whose parent is this one


class _Res:
    __slots__ = ("key", "counts", "holders", "conv", "waiters")

    def __init__(self, key):
        self.key = key
        self.counts = [0] * 6   # granted requests per held mode
        self.holders = {}       # txn -> _Req, in order of first grant
        self.conv = []          # holders waiting to convert, FIFO
        self.waiters = []       # new requests waiting, FIFO

    def mask(self):
        m = 0
        for mode in range(1, 6):
            if self.counts[mode]:
                m |= 1 << mode
        return m

    def mask_without(self, req):
        m = 0
        for mode in range(1, 6):
            c = self.counts[mode] - (1 if req.held == mode else 0)
            if c:
                m |= 1 << mode
        return m


class _Txn:
    __slots__ = ("id", "reqs", "waiting")

    def __init__(self, tid):
        self.id = tid
        self.reqs = {}       # key -> _Req, in order of creation
        self.waiting = None  # the _Req this txn waits on


class Table:
    """A lock table. Thread-safe: every public method is atomic (it holds the
    table's own mutex; docs/table.md, "Thread safety of the table")."""

    def __init__(self, escalation_threshold=5000, token_base=0):
        if type(escalation_threshold) is not int or escalation_threshold < 1:
            raise InvalidRequest("escalation_threshold must be a positive int")
        if type(token_base) is not int or not 0 <= token_base < (1 << 63):
            raise InvalidRequest("token_base must be an int in 0..2**63-1")
        self._mutex = threading.Lock()
        self._threshold = escalation_threshold
        self._res = {}
        self._txns = {}
        self._token = token_base
        self._granted = 0
        self._waited = 0
        self._escalations = 0
        self._searches = 0        # deadlock searches run (find_cycle calls not cut short)

    # ------------------------------------------------------------------ lock

    @_serialised
    def lock(self, txn, resource, mode, nowait=False):
        """Lock ``resource`` and, root to leaf, the intention mode on its ancestors.

        Returns the fencing token of the grant (> 0), ``WAITING`` if a request
        was queued (call again once it is granted to continue down the path),
        or ``CONFLICT`` if ``nowait`` and some level would wait (then nothing
        changed). Runtime complexity: O(depth) expected.
        """
        return self._lock(txn, resource, mode, nowait)

    # lock_many -- a batch of lock() calls in one table call (section for
    # docs/table.md, "Operations"):
    #
    # lock_many(txn, items, nowait=False) -> results
    #
    # ``items`` is a list or tuple of (resource, mode) pairs (each pair a tuple
    # or a list of two; a resource is what lock() takes, or additionally a
    # list of components, meaning the same as the tuple -- what a msgpack
    # decoder produces, so the shard passes wire items as they are).
    #
    # 1. Validate, before changing anything: the txn id, then every item in
    #    order (its shape, mode and path). The first bad one raises
    #    InvalidRequest("lock_many item i: ...") and the table is unchanged.
    #    A transaction that already waits is refused as lock() refuses it
    #    (InvalidRequest, nothing changed), unless ``items`` is empty.
    # 2. Lock the items in order, exactly as successive lock(txn, resource,
    #    mode, nowait) calls would, and stop after the first one that does not
    #    return a token.
    #
    # ``results`` is the list of what those lock() calls returned: either
    # len(items) tokens (everything granted; [] for no items), or k+1 entries
    # whose last is WAITING or CONFLICT for item k and whose first k are the
    # tokens of items 0..k-1, which stay granted. So ``results[-1] < 0`` iff
    # the batch stopped, at index ``len(results) - 1``:
    # - WAITING: item k's request is queued (its ancestors' intention locks
    #   granted above the level that waits are kept, as with lock()); call
    #   lock(txn, items[k]...) again once woken to finish item k, then go on
    #   with items k+1.. (e.g. with lock_many(txn, items[k:])).
    # - CONFLICT (nowait only): item k changed nothing; items 0..k-1 stay
    #   granted (the batch is not all-or-nothing: release or abort to undo).
    # Items k+1.. are not looked at beyond validation. The one error possible
    # after validation is MemoryError (the C table out of memory), with items
    # before the failing one granted. The compiled twin does the whole call
    # in C (one loop over the items, no Python code per item).
    @_serialised
    def lock_many(self, txn, items, nowait=False):
        """Lock each (resource, mode) of ``items`` in order, as successive
        lock() calls would, after validating all of them (InvalidRequest,
        nothing changed, if one is bad); stop after the first item that waits
        (or conflicts, with ``nowait``).

        Returns the list of the lock() results: all tokens if every item was
        granted, else the tokens of the items before item k followed by
        WAITING or CONFLICT for item k (k = len(result) - 1); the earlier
        items stay granted. Runtime complexity: O(sum of depths) expected.
        """
        _check_txn(txn)
        if type(items) is not list and type(items) is not tuple:
            raise InvalidRequest(
                f"lock_many items must be a list or tuple of (resource, mode) pairs; "
                f"got {type(items).__name__}")
        batch = []
        for i, item in enumerate(items):
            if (type(item) is not tuple and type(item) is not list) or len(item) != 2:
                raise InvalidRequest(f"lock_many item {i} must be a (resource, mode) pair; got {item!r}")
            resource, mode = item
            if type(resource) is list:
                resource = tuple(resource)
            try:
                mode = check_mode(mode)
                encode(resource)
            except InvalidRequest as e:
                raise InvalidRequest(f"lock_many item {i}: {e}") from None
            batch.append((resource, mode))
        out = []
        for resource, mode in batch:
            r = self._lock(txn, resource, mode, nowait)
            out.append(r)
            if r < 0:
                break
        return out

    @_serialised
    def reclaim(self, txn, resource, mode, token):
        """Give ``txn`` back ``mode`` on ``resource`` with the fencing token it was
        granted before a restart (a shard's RECLAIM): as ``lock(..., nowait=True)``
        but never escalating, and the node's own request, if this call granted or
        converted it, keeps ``token`` (1..2**63-1); the token counter is raised to
        ``token`` if below it. A node already covered keeps its token. Returns the
        token, or ``CONFLICT`` (nothing changed). Runtime complexity: O(depth) expected.
        """
        _check_txn(txn)
        mode = check_mode(mode)
        if type(token) is not int or not 0 < token < (1 << 63):
            raise InvalidRequest(f"a reclaimed token must be an int in 1..2**63-1; got {token!r}")
        key = encode(resource)
        before = self._token
        r = self._lock(txn, resource, mode, True, escalate=False)
        if r <= 0:
            return r
        t = self._txns.get(txn)
        q = t.reqs.get(key) if t is not None else None
        if q is not None and q.held != NL and q.token > before:
            q.token = token
            r = token
        if token > self._token:
            self._token = token
        return r

    def _lock(self, txn, resource, mode, nowait, escalate=True):
        _check_txn(txn)
        mode = check_mode(mode)
        key = encode(resource)
        t = self._txns.get(txn)
        if t is not None and t.waiting is not None:
            raise InvalidRequest(f"transaction {txn} is already waiting for a lock")
        ends = prefix_ends(key)
        depth = len(ends)
        intent = INTENTION[mode]
        # Plan: the levels that need a grant, stopping early where a held
        # ancestor already covers the whole subtree.
        plan = []
        for i, end in enumerate(ends):
            want = mode if i == depth - 1 else intent
            k = key[:end]
            r = t.reqs.get(k) if t is not None else None
            if r is not None and r.held != NL:
                if r.held == X or (r.held in (S, SIX) and mode in (IS, S)):
                    if not plan:
                        return r.token
                    break  # covered below this level; levels above still need work
                if SUPREMUM[r.held][want] == r.held:
                    if i == depth - 1 and not plan:
                        return r.token
                    continue
            plan.append((i, k, want))
        if nowait:
            for i, k, want in plan:
                if not self._grantable_now(t, k, want):
                    return CONFLICT
        if t is None:
            t = self._txns[txn] = _Txn(txn)
        token = 0
        for i, k, want in plan:
            r = t.reqs.get(k)
            parent_req = t.reqs.get(key[:ends[i - 1]]) if i > 0 else None
            res = self._res.get(k)
            if res is None:
                res = self._res[k] = _Res(k)
            if r is None:
                r = _Req(res, t, parent_req)
                t.reqs[k] = r
                if parent_req is not None:
                    parent_req.nchildren += 1
                if not res.conv and not res.waiters and not (CONFLICTS[want] & res.mask()):
                    self._grant_new(res, r, want)
                else:
                    r.want = want
                    res.waiters.append(r)
                    t.waiting = r
                    self._waited += 1
                    return WAITING
                if escalate and parent_req is not None and parent_req.nchildren > self._threshold:
                    if self._try_escalate(t, parent_req):
                        # r was released; the escalated parent covers the whole request
                        return parent_req.token
            else:
                new = SUPREMUM[r.held][want]
                if not (CONFLICTS[new] & res.mask_without(r)):
                    self._grant_conversion(res, r, new)
                else:
                    r.want = new
                    res.conv.append(r)
                    t.waiting = r
                    self._waited += 1
                    return WAITING
            token = r.token
        if token == 0:
            # every planned level is done; the leaf was covered by an ancestor
            return self._covering_token(t, key, ends, mode)
        last_i = plan[-1][0]
        if last_i != depth - 1:
            return self._covering_token(t, key, ends, mode)
        return token

    def _covering_token(self, t, key, ends, mode):
        for end in ends:
            r = t.reqs.get(key[:end])
            if r is not None and (r.held == X or (r.held in (S, SIX) and mode in (IS, S))):
                return r.token
        r = t.reqs[key]
        return r.token

    def _grantable_now(self, t, k, want):
        res = self._res.get(k)
        if res is None:
            return True
        r = t.reqs.get(k) if t is not None else None
        if r is not None and r.held != NL:
            return not (CONFLICTS[SUPREMUM[r.held][want]] & res.mask_without(r))
        return not res.conv and not res.waiters and not (CONFLICTS[want] & res.mask())

    def _next_token(self):
        self._token += 1
        return self._token

    def _grant_new(self, res, r, mode):
        r.held = mode
        r.want = NL
        r.token = self._next_token()
        res.counts[mode] += 1
        res.holders[r.txn.id] = r
        self._granted += 1

    def _grant_conversion(self, res, r, new):
        res.counts[r.held] -= 1
        res.counts[new] += 1
        r.held = new
        r.want = NL
        r.token = self._next_token()
        self._granted += 1

    def _try_escalate(self, t, p):
        """Convert ``p`` to S (or X) and drop t's locks below it, if grantable now."""
        target = S
        for r in t.reqs.values():
            if r.parent is p and r.held in (IX, SIX, X):
                target = X
                break
        new = SUPREMUM[p.held][target]
        res = p.res
        if CONFLICTS[new] & res.mask_without(p):
            return False
        self._grant_conversion(res, p, new)
        below = [r for r in t.reqs.values() if self._is_below(r, p)]
        touched = []
        for r in below:
            self._remove(t, r)
            touched.append(r.res)
        woken = []
        for res2 in touched:
            self._grant_waiters(res2, woken)
        # An escalation is granted only beside IS/S holders (or none), so no
        # waiter in the subtree can have been blocked by what it released.
        assert not woken, woken
        self._escalations += 1
        return True

    @staticmethod
    def _is_below(r, p):
        q = r.parent
        while q is not None:
            if q is p:
                return True
            q = q.parent
        return False

    # --------------------------------------------------------------- release

    def _remove(self, t, r):
        """Take request r out of its resource and its transaction (no grants)."""
        res = r.res
        if r.held != NL:
            res.counts[r.held] -= 1
            del res.holders[t.id]
            if r.want != NL:
                res.conv.remove(r)
        else:
            res.waiters.remove(r)
        if t.waiting is r:
            t.waiting = None
        if r.parent is not None:
            r.parent.nchildren -= 1
        del t.reqs[res.key]

    def _grant_waiters(self, res, woken):
        """Grant what can be granted on ``res``; append woken txn ids. Frees an empty res."""
        for r in list(res.conv):
            new = r.want
            if not (CONFLICTS[new] & res.mask_without(r)):
                res.conv.remove(r)
                self._grant_conversion(res, r, new)
                r.txn.waiting = None
                woken.append(r.txn.id)
        if not res.conv:
            while res.waiters:
                r = res.waiters[0]
                if CONFLICTS[r.want] & res.mask():
                    break
                res.waiters.pop(0)
                self._grant_new(res, r, r.want)
                r.txn.waiting = None
                woken.append(r.txn.id)
        if not res.holders and not res.waiters:
            del self._res[res.key]

    @_serialised
    def unlock(self, txn, resource):
        """Release one node held by ``txn`` (early release).

        Refused with InvalidRequest if the node is not held, or while ``txn``
        holds a descendant of it. A node not held itself but covered by an
        escalated ancestor lock is a no-op. Runtime complexity: O(queue).
        """
        _check_txn(txn)
        key = encode(resource)
        t = self._txns.get(txn)
        r = t.reqs.get(key) if t is not None else None
        if r is None or r.held == NL:
            if t is not None and t.waiting is None:
                ends = prefix_ends(key)
                for end in ends[:-1]:
                    a = t.reqs.get(key[:end])
                    if a is not None and a.held in (S, SIX, X):
                        return []
            raise InvalidRequest(f"transaction {txn} does not hold {decode(key)!r}")
        if t.waiting is not None:
            raise InvalidRequest(f"transaction {txn} is waiting for a lock; it cannot unlock meanwhile")
        if r.nchildren:
            raise InvalidRequest(
                f"transaction {txn} still holds {r.nchildren} lock(s) below {decode(key)!r}; unlock those first")
        self._remove(t, r)
        woken = []
        self._grant_waiters(r.res, woken)
        if not t.reqs:
            del self._txns[txn]
        return woken

    @_serialised
    def downgrade(self, txn, resource, mode):
        """Set ``txn``'s lock on ``resource`` back to the weaker ``mode`` (one it
        held before a conversion); returns the woken txn ids.

        For undoing a conversion that a later step refused. Refused with
        InvalidRequest, nothing changed: not held, ``txn`` waits, ``mode`` not
        covered by the held mode, or too weak for the intention that ``txn``'s
        children below it need. The token is kept. Runtime complexity: O(queue).
        """
        _check_txn(txn)
        key = encode(resource)
        mode = check_mode(mode)
        t = self._txns.get(txn)
        r = t.reqs.get(key) if t is not None else None
        if r is None or r.held == NL:
            raise InvalidRequest(f"transaction {txn} does not hold {decode(key)!r}")
        if t.waiting is not None:
            raise InvalidRequest(f"transaction {txn} is waiting for a lock; it cannot unlock meanwhile")
        old = r.held
        if SUPREMUM[mode][old] != old:
            raise InvalidRequest(f"transaction {txn} holds {decode(key)!r} in a mode that does not cover the "
                                 f"one asked for; a downgrade only goes to a weaker mode")
        if r.nchildren:
            strong = any(q.parent is r and q.held in (IX, SIX, X) for q in t.reqs.values())
            if SUPREMUM[mode][IX if strong else IS] != mode:
                raise InvalidRequest(f"transaction {txn} still holds lock(s) below {decode(key)!r}; "
                                     f"unlock those first")
        if mode == old:
            return []
        res = r.res
        res.counts[old] -= 1
        res.counts[mode] += 1
        r.held = mode
        woken = []
        self._grant_waiters(res, woken)
        return woken

    @_serialised
    def release_all(self, txn):
        """Release every request of ``txn`` (held or waiting). Runtime: O(its locks)."""
        _check_txn(txn)
        t = self._txns.pop(txn, None)
        if t is None:
            return []
        reqs = list(t.reqs.values())
        for r in reqs:
            self._remove(t, r)
        woken = []
        for r in reqs:
            if r.res.key in self._res:
                self._grant_waiters(r.res, woken)
        return woken

    @_serialised
    def cancel_wait(self, txn):
        """Withdraw the request ``txn`` waits on (a conversion falls back to its held mode)."""
        _check_txn(txn)
        t = self._txns.get(txn)
        if t is None or t.waiting is None:
            return []
        r = t.waiting
        res = r.res
        if r.held != NL:
            res.conv.remove(r)
            r.want = NL
            t.waiting = None
        else:
            self._remove(t, r)
        woken = []
        self._grant_waiters(res, woken)
        if not t.reqs:
            del self._txns[txn]
        return woken

    # --------------------------------------------------------- introspection

    @_serialised
    def is_waiting(self, txn):
        t = self._txns.get(txn)
        return t is not None and t.waiting is not None

    @_serialised
    def waiting_on(self, txn):
        t = self._txns.get(txn)
        if t is None or t.waiting is None:
            return None
        return (decode(t.waiting.res.key), t.waiting.want)

    @_serialised
    def mode_held(self, txn, resource):
        key = encode(resource)
        t = self._txns.get(txn)
        r = t.reqs.get(key) if t is not None else None
        return r.held if r is not None else NL

    @_serialised
    def node(self, resource):
        """``[(txn, mode, granted)]`` on ``resource`` itself: holders, then waiting
        conversions, then new waiters (as ``snapshot``'s rows of that node)."""
        res = self._res.get(encode(resource))
        if res is None:
            return []
        rows = [(tid, h.held, True) for tid, h in res.holders.items()]
        rows.extend((c.txn.id, c.want, False) for c in res.conv)
        rows.extend((w.txn.id, w.want, False) for w in res.waiters)
        return rows

    @_serialised
    def held(self, txn):
        t = self._txns.get(txn)
        if t is None:
            return []
        return [(decode(k), r.held) for k, r in t.reqs.items() if r.held != NL]

    @_serialised
    def transactions(self):
        return list(self._txns)

    def _edges(self, r, search=False):
        """Wait-for successors of waiting request r, in a defined order. With
        ``search``: the edges the deadlock search follows -- a new waiter's soft
        edges to the waiters ahead are one edge, to the waiter right ahead, whose
        own edges reach the rest (the same transactions are reachable)."""
        res = r.res
        me = r.txn.id
        out = []
        seen = set()
        for tid, h in res.holders.items():
            if tid != me and CONFLICTS[r.want] >> h.held & 1:
                out.append(tid)
                seen.add(tid)
        if r.held == NL:
            for c in res.conv:
                tid = c.txn.id
                if tid not in seen:
                    out.append(tid)
                    seen.add(tid)
            if search:
                i = res.waiters.index(r)
                if i:
                    tid = res.waiters[i - 1].txn.id
                    if tid not in seen:
                        out.append(tid)
                return out
            for w in res.waiters:
                if w is r:
                    break
                tid = w.txn.id
                if tid not in seen:
                    out.append(tid)
                    seen.add(tid)
        return out

    @_serialised
    def wait_for_graph(self):
        g = {}
        for tid, t in self._txns.items():
            if t.waiting is not None:
                g[tid] = set(self._edges(t.waiting))
        return g

    @_serialised
    def find_cycle(self, txn):
        """A wait-for cycle through ``txn`` as a list of txn ids starting with it.

        Depth-first over the edges of ``_edges`` in order; visits at most
        SEARCH_LIMIT transactions. Returns [] if none was found.
        """
        t = self._txns.get(txn)
        if t is None or t.waiting is None:
            return []
        # A cycle through txn needs an edge into it: a transaction waiting on a
        # resource where txn holds a granted request (a waiting request of txn's
        # own sits at the tail of its queue, or -- a conversion -- on a resource it
        # holds). None: no cycle, and no search (a new waiter on a hot row costs
        # O(txn's locks), not O(the queue ahead of it); docs/table.md).
        for r in t.reqs.values():
            if r.held != NL and (r.res.conv or r.res.waiters):
                break
        else:
            return []
        self._searches += 1
        visited = {txn}
        path = [txn]
        stack = [iter(self._edges(t.waiting, True))]
        budget = SEARCH_LIMIT
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                path.pop()
                continue
            if nxt == txn:
                return list(path)
            if nxt in visited:
                continue
            visited.add(nxt)
            budget -= 1
            if budget <= 0:
                return []
            u = self._txns.get(nxt)
            if u is None or u.waiting is None:
                continue
            path.append(nxt)
            stack.append(iter(self._edges(u.waiting, True)))
        return []

    @_serialised
    def snapshot(self):
        rows = []
        for key, res in self._res.items():
            path = decode(key)
            for tid, h in res.holders.items():
                rows.append((path, tid, h.held, True))
            for c in res.conv:
                rows.append((path, c.txn.id, c.want, False))
            for w in res.waiters:
                rows.append((path, w.txn.id, w.want, False))
        return rows

    @_serialised
    def stats(self):
        return {
            "granted": self._granted,
            "waited": self._waited,
            "escalations": self._escalations,
            "requests": sum(len(t.reqs) for t in self._txns.values()),
            "resources": len(self._res),
            "transactions": len(self._txns),
            "last_token": self._token,
            "searches": self._searches,
        }

    # ------------------------------------------------------------ invariants

    @_serialised
    def _check(self):
        """Assert every invariant of the table (docs/table.md, "Invariants")."""
        nreq = 0
        for key, res in self._res.items():
            assert res.key == key
            assert res.holders or res.waiters, "an empty resource must be freed"
            counts = [0] * 6
            for tid, h in res.holders.items():
                assert h.res is res and h.txn.id == tid
                assert h.held != NL
                assert 0 < h.token <= self._token, "a holder's token above the counter"
                counts[h.held] += 1
                assert self._txns[tid].reqs[key] is h
                assert (h.want != NL) == (h in res.conv)
                if h.want != NL:
                    assert SUPREMUM[h.held][h.want] == h.want and h.want != h.held
            assert counts == res.counts, (counts, res.counts)
            # the granted group is pairwise compatible
            held_modes = [h.held for h in res.holders.values()]
            for i, a in enumerate(held_modes):
                for b in held_modes[i + 1:]:
                    assert not CONFLICTS[a] >> b & 1, (decode(key), a, b)
            for c in res.conv:
                assert c.held != NL and res.holders[c.txn.id] is c
                assert c.txn.waiting is c
                # a waiting conversion really conflicts with another holder
                assert CONFLICTS[c.want] & res.mask_without(c)
            for w in res.waiters:
                assert w.held == NL and w.want != NL and w.txn.waiting is w
                assert w.txn.id not in res.holders
            if res.waiters and not res.conv:
                # the head of the queue is blocked by a conflicting holder
                assert CONFLICTS[res.waiters[0].want] & res.mask()
            nreq += len(res.holders) + len(res.waiters)
        total = 0
        for tid, t in self._txns.items():
            assert t.reqs, "a transaction with no requests must be freed"
            nwait = 0
            for key, r in t.reqs.items():
                assert r.txn is t and r.res.key == key and self._res.get(key) is r.res
                if r.want != NL:
                    nwait += 1
                    assert t.waiting is r
                ends = prefix_ends(key)
                if len(ends) > 1:
                    assert r.parent is t.reqs.get(key[:ends[-2]]), "parent link"
                    assert r.parent is not None
                else:
                    assert r.parent is None
                kids = sum(1 for q in t.reqs.values() if q.parent is r)
                assert kids == r.nchildren, (kids, r.nchildren)
                if r.held != NL and r.parent is not None:
                    # intention (or stronger) held on the parent
                    p = r.parent
                    assert p.held != NL
                    assert SUPREMUM[p.held][INTENTION[r.held]] == p.held, (p.held, r.held)
            assert nwait <= 1
            assert (t.waiting is None) == (nwait == 0)
            total += len(t.reqs)
        assert total == nreq
        assert len(prefix_ends(b"")) == 0 and MAX_DEPTH == 32
