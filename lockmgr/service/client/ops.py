# cython: annotation_typing=True
"""Transaction logic of the service clients, written once for the sync and
asyncio front ends.

Interface:
    _TxnCore(client, name, gtrid)       one transaction's state
    _g_lock, _g_lock_many, _g_unlock, _g_held, _g_finish, _g_prepare,
    _g_indoubt, _g_resolve              generators yielding batches of shard calls
    _drive(eng, gen)                    run one synchronously (``lockmgr.service.client.aio`` awaits instead)
    _merge_indoubt(results)             INDOUBT answers of every shard, merged
    ACTIVE, PREPARED, COMMITTED, ABORTED

Each generator yields a list of calls ``(shard, type, args, extra seconds
beyond the request timeout or None)`` and is sent back their results (a value
or an exception instance each): routing, strong locks on every shard and the
merging of answers live here, the I/O in whoever drives the generator.
docs/service.md ("Transactions in the client").
"""

import logging
import time

from .. import wire
from ...rules import ABORTED, ACTIVE, COMMITTED, PREPARED, check_gtrid, check_mode, check_timeout, check_wait
from ..routing import route
from ..._core import BACKEND as _BACKEND
from ...errors import (DeadlockDetected, InvalidRequest, LockNotAvailable, LockTimeout, SessionExpired,
                       TransactionAborted, TransactionCommitted)
from ...modes import Mode, SUPREMUM
from ...paths import encode
from .hot import drive as _cdrive
from .txnid import new_txn_id

_monotonic = time.monotonic    # (a module global: no attribute lookup on the time module per call)
_log = logging.getLogger("lockmgr.client")

if _BACKEND == "c":
    # the compiled twin of paths.encode: same keys, same errors (tests/test_ctable.py)
    from ..._core._ctable import encode  # noqa: F811

_MODES = tuple(Mode)


class _TxnCore:
    """State of one transaction, shared by the sync and asyncio front ends."""

    __slots__ = ("eng", "client", "id", "name", "gtrid", "state", "victim", "touched", "doom",
                 "default_timeout", "prepared_at", "locks", "busy", "named", "gen", "lost", "lost_cbs",
                 "wid", "carrier", "used")

    def __init__(self, client, name, gtrid):
        self.client = client
        self.eng = client._eng
        self.id = new_txn_id()
        self.name = name
        self.gtrid = gtrid
        self.prepared_at = None     # wall time prepare() succeeded (as lockmgr.Transaction.prepared_at)
        self.state = ACTIVE
        self.victim = False
        self.touched = {}      # shard -> epoch seen there (0 until the first answer)
        self.doom = None       # why the transaction cannot go on (a shard lost its locks)
        self.default_timeout = client._default_timeout
        # what it holds, for a reclaim after a shard restarts (engine._start_reclaim):
        # shard -> {path: (mode, token)} as granted (the explicit locks; the shard
        # takes the ancestors' intention locks itself)
        self.locks = {}
        # shards with a lock call whose answer may not be in ``locks`` yet
        self.busy = set()
        # shards told the transaction's name (TXN_NAME; only a named transaction has the set)
        self.named = set() if name is not None else None
        # the engine's session generation at begin: after LOST the engine opens a new
        # session, and a transaction of an older one raises SessionExpired (check_active)
        self.gen = self.eng.gen
        self.lost = None       # the error its locks were lost with (on_lost), once known
        self.lost_cbs = None   # on_lost callbacks (the engine calls them; engine.txn_on_lost)
        # lock caching (cache.py; docs/service.md, "Lock caching"): the id the shards
        # see (``wid``; ``id`` too) is the adopted carrier's when there is one, whose ``touched``,
        # ``locks`` and ``busy`` this transaction then shares; ``used``: the paths it
        # locked itself (held() shows those and their ancestors, not the whole cache)
        self.wid = self.id
        self.carrier = None
        self.used = None

    def refuse(self):
        if self.state is PREPARED:
            return InvalidRequest(f"transaction {self.id} is prepared: it can only be committed or aborted")
        if self.victim:
            return TransactionAborted(f"transaction {self.id} was aborted as a deadlock victim")
        if self.doom:
            return TransactionAborted(self.doom)
        return TransactionAborted(f"transaction {self.id} is {self.state}")

    def carrier_doom(self):
        """The carrier's doom (a refused reclaim), taken as this transaction's."""
        if self.carrier is not None and self.carrier.doom and not self.doom:
            self.doom = self.carrier.doom

    def check_active(self):
        if self.state is not ACTIVE:
            raise self.refuse()
        if self.gen != self.eng.gen:
            raise self.stale()
        self.eng.check_session()
        if self.carrier is not None:
            self.carrier_doom()
        eps = self.eng.epoch
        for s, e in self.touched.items():
            if e and eps[s] != e:
                if not self.doom:   # (a refused reclaim says why itself)
                    self.doom = (f"shard {s} restarted (epoch {e} -> {eps[s]}) and lost the locks of transaction "
                                 f"{self.id}; the transaction has been aborted")
                self.abort_everywhere()
                raise TransactionAborted(self.doom)

    def abort_everywhere(self, victim=False, skip=None):
        """Mark aborted and release on every shard touched (the service-side abort)."""
        if victim:
            self.victim = True
        if self.state is ACTIVE or self.state is PREPARED:
            self.state = ABORTED
            self.forget()
            for s in self.touched:
                if s != skip:
                    self.eng.post(s, wire.RELEASE, [self.wid, False])

    def forget(self):
        """Finished: nothing of it is reclaimed any more (an adopted carrier dies with it)."""
        self.eng.txns.pop(self.wid, None)
        self.locks = {}
        if self.lost_cbs is not None:
            self.eng.forget_txn(self)
        if self.carrier is not None:
            self.client._cache.discard(self)

    def stale(self):
        """The SessionExpired of a transaction whose session is gone (the engine
        has opened a new one since it began)."""
        return SessionExpired(f"{self.eng.last_dead or 'the session expired'} (transaction {self.id} belonged "
                              f"to that session; new transactions use a new one)")

    def record(self, s, path, mode, tok):
        """A lock granted on shard ``s`` (kept for a reclaim after a restart)."""
        d = self.locks.get(s)
        if d is None:
            d = self.locks[s] = {}
            if self.carrier is None:
                self.eng.txns[self.id] = self
        if self.used is not None:
            self.used.add((s, path))
        new = (mode, tok)
        old = d.setdefault(path, new)      # (one hash of the path: the usual case is a new lock)
        if old is not new and SUPREMUM[old[0]][mode] != old[0]:      # a conversion: its new token
            d[path] = (SUPREMUM[old[0]][mode], tok)
        # (a covered re-lock keeps the recorded token: the answer may be an ancestor's)

    def route(self, key, depth, mode):
        eng = self.eng
        return route(key, depth, mode, eng.n, eng.partition_depth)


def _prepare(resource, mode):
    key = encode(resource)       # validates the path (InvalidRequest)
    path = resource if type(resource) is tuple else (resource,)
    mode = check_mode(mode)
    return path, key, mode


def _failure(core: _TxnCore, err, shard):
    """Apply an error from a lock call to the transaction state; return it to raise."""
    if core.lost_cbs is not None and isinstance(err, (DeadlockDetected, TransactionAborted, SessionExpired)):
        core.eng.txn_lost(core, err)      # its locks are gone: on_lost, before the error is raised
    if isinstance(err, DeadlockDetected):
        _log.info("transaction %d%s was a deadlock victim: %s", core.id,
                  f" ({core.name})" if core.name is not None else "", err)
        core.abort_everywhere(victim=True, skip=shard)
    elif isinstance(err, TransactionAborted):
        if core.state is ACTIVE:
            if "restarted" in str(err):
                core.doom = str(err)
            core.abort_everywhere(skip=shard)
    elif isinstance(err, SessionExpired):
        core.state = ABORTED
    return err


def _settled(core: _TxnCore, s):
    """The answer of ``core``'s lock call to shard ``s`` is recorded (or failed)."""
    core.busy.discard(s)
    eng = core.eng
    if eng.reclaim_waiting:
        eng.recorded()


def _unrecord(core: _TxnCore, s, path, prev):
    """Shard ``s`` no longer has ``path`` for ``core`` (``prev`` 0), or has it back in ``prev``."""
    d = core.locks.get(s)
    if d is not None and path in d:
        if prev:
            d[path] = (prev, d[path][1])
        else:
            del d[path]


def _g_lock(core: _TxnCore, resource, mode, timeout, nowait):
    core.check_active()
    timeout = check_timeout(timeout)
    path, key, mode = _prepare(resource, mode)
    if timeout is None:
        timeout = core.default_timeout
    shards = core.route(key, len(path), mode)
    if core.carrier is not None:
        cache = core.client._cache
        if len(shards) == 1:
            tok = cache.hit(core, shards[0], path, mode)
            if tok:                # held by the adopted carrier in a covering mode: no message
                return tok
        cache.make_way(core, shards, path, mode)
    deadline = None if timeout is None else _monotonic() + timeout
    wpath = list(path)
    strong = len(shards) > 1
    done: list = []    # a strong lock: (shard, mode held there before), to undo if a later shard refuses
    token = 0
    for s in shards:
        tmo = None if deadline is None else max(0, int((deadline - _monotonic()) * 1000))
        ep = core.touched.get(s)
        if ep is None:
            core.touched[s] = ep = 0
        core.busy.add(s)
        try:
            lock = (s, wire.LOCK, [core.wid, wpath, mode, bool(nowait), tmo, ep],
                    None if tmo is None else tmo / 1000.0)
            if not ep and core.name is not None and s not in core.named:
                # a named transaction: the shard learns its name (lockmgr locks) from a
                # TXN_NAME ahead of its first lock there, in the same frame
                core.named.add(s)
                _, res = yield [(s, wire.TXN_NAME, [core.wid, str(core.name)], 0.0), lock]
            else:
                res, = yield [lock]
            if not isinstance(res, BaseException):
                core.record(s, path, mode, res[0])
        finally:
            _settled(core, s)
        if isinstance(res, BaseException):
            if isinstance(res, (LockTimeout, LockNotAvailable)) and done:
                # a strong lock on a node above the partition depth failed on a later
                # shard: undo it where it was granted -- released where it was new,
                # set back to the mode held before where it converted one -- so the
                # transaction keeps what it held, as one table would leave it
                for f, prev in done:
                    _unrecord(core, f, path, prev)
                yield [(f, wire.UNLOCK, [core.wid, wpath, False], 0.0) if not prev
                       else (f, wire.DOWNGRADE, [core.wid, wpath, prev], 0.0) for f, prev in done]
            raise _failure(core, res, s)
        tok, prev, ep2 = res
        if not ep:
            core.touched[s] = ep2
        if s == shards[0]:
            token = tok
        if strong and SUPREMUM[prev][mode] != prev:      # this lock changed what was held there
            done.append((s, prev))
    if core.state is not ACTIVE:   # aborted by another thread meanwhile
        for s in shards:
            core.eng.post(s, wire.RELEASE, [core.wid, False])
        raise core.refuse()
    if core.gen != core.eng.gen:
        raise _stale_answer(core, shards)
    return token


def _stale_answer(core: _TxnCore, shards):
    """The session changed while a call of ``core`` was out: whatever it was granted
    may belong to the new session; release it there and raise SessionExpired."""
    core.state = ABORTED
    core.forget()
    for s in shards:
        core.eng.post(s, wire.RELEASE, [core.id, False])
    return core.stale()


def _g_lock_many(core: _TxnCore, items, timeout, nowait):
    core.check_active()
    timeout = check_timeout(timeout)
    try:
        items = list(items)
    except TypeError:
        raise InvalidRequest("lock_many takes an iterable of (resource, mode) pairs") from None
    parsed = []
    for i, it in enumerate(items):
        if type(it) not in (tuple, list) or len(it) != 2:
            raise InvalidRequest(f"lock_many item {i} must be a (resource, mode) pair; got {it!r}")
        parsed.append(_prepare(it[0], it[1]))
    if timeout is None:
        timeout = core.default_timeout
    deadline = None if timeout is None else _monotonic() + timeout
    tokens = [0] * len(parsed)
    # In order: a strong item (S/SIX/X on a node above the partition depth: every
    # shard, in shard order) on its own; each run of other items between strong
    # ones in one message per shard, all shards in parallel. Per shard the items
    # keep their order and a strong item comes after exactly the items before it,
    # so a call that succeeds leaves what successive lock() calls would.
    run: dict = {}
    local = core.client._cache.hits_many(core, parsed) if core.carrier is not None else None
    for i, (path, key, mode) in enumerate(parsed):
        if local is not None:
            if i in local:         # granted from the cache (lock caching)
                tokens[i] = local[i]
                continue
            core.client._cache.make_way(core, core.route(key, len(path), mode), path, mode)
        shards = core.route(key, len(path), mode)
        if len(shards) == 1:
            run.setdefault(shards[0], []).append(i)
            continue
        if run:
            yield from _g_lock_run(core, parsed, run, tokens, deadline, nowait)
            run = {}
        left = None if deadline is None else max(0.0, deadline - _monotonic())
        tokens[i] = yield from _g_lock(core, path, mode, left, nowait)
    if run:
        yield from _g_lock_run(core, parsed, run, tokens, deadline, nowait)
    if core.state is not ACTIVE:
        raise core.refuse()
    if core.gen != core.eng.gen:
        raise _stale_answer(core, sorted(core.touched))
    return tokens


def _g_lock_run(core: _TxnCore, parsed, groups, tokens, deadline, nowait):
    """Lock ``groups`` ({shard: [item index, ...]}): one LOCK_MANY per shard
    (chunks of MAX_BATCH in rounds), all shards in parallel; fills ``tokens``."""
    order = sorted(groups)
    rounds = max((len(v) + wire.MAX_BATCH - 1) // wire.MAX_BATCH for v in groups.values())
    for r in range(rounds):
        specs, idxs, names = [], [], []
        tmo = None if deadline is None else max(0, int((deadline - _monotonic()) * 1000))
        for s in order:
            chunk = groups[s][r * wire.MAX_BATCH:(r + 1) * wire.MAX_BATCH]
            if not chunk:
                continue
            ep = core.touched.get(s)
            if ep is None:
                core.touched[s] = ep = 0
            if not ep and core.name is not None and s not in core.named:
                core.named.add(s)      # (see _g_lock: the name goes ahead of the first lock, same frame)
                names.append((s, wire.TXN_NAME, [core.wid, str(core.name)], 0.0))
            specs.append((s, wire.LOCK_MANY,
                          [core.wid, [[list(parsed[i][0]), parsed[i][2]] for i in chunk], bool(nowait), tmo, ep],
                          None if tmo is None else tmo / 1000.0))
            idxs.append((s, chunk))
        busy = [s for s, _ in idxs]
        core.busy.update(busy)
        try:
            results = yield names + specs
            if names:
                results = results[len(names):]
            err = None
            for (s, chunk), res in zip(idxs, results):
                if isinstance(res, BaseException):
                    if err is None or isinstance(res, DeadlockDetected):
                        err = (res, s)
                    if core.used is not None:   # (some may be held: held() asks the shard which)
                        for i in chunk:
                            core.used.add((s, parsed[i][0]))
                    continue
                toks, ep2 = res
                if not core.touched.get(s):
                    core.touched[s] = ep2
                for i, tok in zip(chunk, toks):
                    tokens[i] = tok
                    core.record(s, parsed[i][0], parsed[i][2], tok)
        finally:
            for s in busy:
                _settled(core, s)
        if err is not None:
            raise _failure(core, err[0], err[1])


def _g_unlock(core: _TxnCore, resource, wait=True):
    if wait is not True:
        check_wait(wait)
    core.check_active()
    key = encode(resource)
    path = resource if type(resource) is tuple else (resource,)
    wpath = list(path)
    shards = core.route(key, len(path), 5)
    if len(shards) == 1:
        if not wait:            # a no-wait unlock: a failure is raised by the next call
            _unrecord(core, shards[0], path, 0)
            core.eng.post_quiet(shards[0], wire.UNLOCK, [core.wid, wpath, False, True])
            return None
        res, = yield [(shards[0], wire.UNLOCK, [core.wid, wpath, False], 0.0)]
        if isinstance(res, BaseException):
            raise res
        _unrecord(core, shards[0], path, 0)
        return None
    # a node above the partition depth: it may be held on several shards
    touched = sorted(core.touched)
    results = (yield [(s, wire.UNLOCK, [core.wid, wpath, True], 0.0) for s in touched]) if touched else []
    holding = []
    for s, res in zip(touched, results):
        if isinstance(res, BaseException):
            raise res
        if res[0]:
            holding.append(s)
    if not holding:
        raise InvalidRequest(f"transaction {core.id} does not hold {path!r}")
    if not wait:
        for s in holding:
            _unrecord(core, s, path, 0)
            core.eng.post_quiet(s, wire.UNLOCK, [core.wid, wpath, False, True])
        return None
    results = yield [(s, wire.UNLOCK, [core.wid, wpath, False], 0.0) for s in holding]
    for res in results:
        if isinstance(res, BaseException):
            raise res
    for s in holding:
        _unrecord(core, s, path, 0)
    return None


def _g_held(core: _TxnCore):
    core.check_active() if core.state is ACTIVE else None
    touched = sorted(core.touched)
    if (core.state is not ACTIVE and core.state is not PREPARED) or not touched:
        return {}
    out: dict = {}
    offsets = {s: 0 for s in touched}     # HELD_PAGE: a page per shard per round trip
    while offsets:
        results = yield [(s, wire.HELD_PAGE, [core.wid, off, 10_000], 0.0) for s, off in offsets.items()]
        for s, res in zip(list(offsets), results):
            if isinstance(res, BaseException):
                raise res
            rows, offsets[s] = res
            if not offsets[s]:
                del offsets[s]
            for p, m in rows:
                p = tuple(p)
                old = out.get(p)
                out[p] = m if old is None else SUPREMUM[old][m]
    if core.used is not None:
        # an adopted carrier also holds what earlier transactions cached: show what this
        # one locked itself, and those nodes' ancestors (their intention locks)
        mine = set()
        for _, p in core.used:
            for k in range(1, len(p) + 1):
                mine.add(p[:k])
        out = {p: m for p, m in out.items() if p in mine}
    return {p: _MODES[m] for p, m in out.items()}


def _g_finish(core: _TxnCore, commit, wait=True):
    if wait is not True:
        check_wait(wait)
    if core.state is PREPARED:        # 2PC: the decision is logged on each shard before the release
        return (yield from _g_decide_own(core, commit))
    if commit:
        if core.state is not ACTIVE:
            raise core.refuse()
        try:
            core.check_active()
        except SessionExpired:
            core.state = ABORTED
            raise
        if core.carrier is not None:
            # lock caching: the carrier keeps the locks (nothing is sent; docs/service.md)
            core.state = COMMITTED
            core.client._cache.keep(core)
            return None
    elif core.state is not ACTIVE:
        return None
    else:
        # abort of an active transaction: its locks go either way (released
        # now, or by the shards when the lease runs out), but an expired
        # session is reported, as for every other call (a no-wait release's
        # failure is left for the next call: abort() does not raise it)
        if core.gen != core.eng.gen:
            core.state = ABORTED
            core.forget()
            raise core.stale()
        if core.eng.lease_over():
            core.state = ABORTED
            raise SessionExpired(core.eng.dead)
    core.state = COMMITTED if commit else ABORTED
    core.forget()
    touched = sorted(core.touched)
    if not touched or core.eng.dead is not None:
        return None
    if not wait:
        # no-wait: the releases leave with the next frame to each shard; a later
        # request of this client reaches the shard after them (docs/service.md)
        for s in touched:
            core.eng.post_quiet(s, wire.RELEASE, [core.wid, bool(commit), True])
        return None
    results = yield [(s, wire.RELEASE, [core.wid, bool(commit)], 0.0) for s in touched]
    if commit:
        for res in results:
            if isinstance(res, BaseException) and not isinstance(res, TransactionAborted):
                raise res
    return None


# ------------------------------------------------------- two-phase commit (2PC)
# docs/2pc.md. PREPARE goes to every shard the transaction touched, in
# parallel; each shard answers once the transaction's locks are fsynced in its
# prepare log. DECIDE (commit/abort by gtrid, from any session) is answered
# once the decision is fsynced, and only then are the locks released.

def _g_prepare(core: _TxnCore):
    if core.state is not ACTIVE:
        raise core.refuse()
    core.check_active()
    if core.gtrid is None:
        raise InvalidRequest("prepare() needs a global transaction id: begin(gtrid=...)")
    check_gtrid(core.gtrid)
    touched = sorted(core.touched)
    if not touched:
        # holds nothing anywhere: nothing to make durable (XA's read-only vote)
        core.state = PREPARED
        core.prepared_at = time.time()
        return None
    rt = core.eng.request_timeout
    results = yield [(s, wire.PREPARE, [core.wid, core.gtrid, core.touched[s], touched], rt) for s in touched]
    err = None
    for res in results:
        if isinstance(res, BaseException) and (err is None or isinstance(res, TransactionAborted)):
            err = res
    if err is None and core.gen != core.eng.gen:
        err = core.stale()
    if err is None and core.state is ACTIVE:
        core.state = PREPARED
        core.prepared_at = time.time()
        return None
    # vote no: abort everywhere (a shard that prepared logs the abort before releasing)
    if core.state is ACTIVE:
        core.state = ABORTED
        for s in touched:
            core.eng.post(s, wire.RELEASE, [core.wid, False])
    if err is None:
        err = core.refuse()
    elif isinstance(err, TransactionAborted):
        err = TransactionAborted(f"prepare failed: {err}; transaction {core.id} has been aborted")
    raise err


def _g_decide_own(core: _TxnCore, commit):
    touched = sorted(core.touched)
    if not touched:
        core.state = COMMITTED if commit else ABORTED
        return None
    core.eng.check_session()
    rt = core.eng.request_timeout
    results = yield [(s, wire.DECIDE, [core.gtrid, bool(commit)], rt) for s in touched]
    for res in results:
        if isinstance(res, BaseException):
            raise res       # still in doubt somewhere: stays PREPARED; retry, or resolve() from any client
    for res in results:
        if res[0] == "conflict":
            # decided the other way elsewhere (Client.resolve from another session): report
            # what happened, and the transaction is in that state
            core.state = COMMITTED if res[1] else ABORTED
            if res[1]:
                raise TransactionCommitted(
                    f"transaction {core.id} (gtrid {core.gtrid!r}) was committed by another resolver; "
                    f"it was not aborted")
            raise TransactionAborted(f"transaction {core.id} (gtrid {core.gtrid!r}) was aborted by another "
                                     f"resolver; it was not committed")
    core.state = COMMITTED if commit else ABORTED
    return None


def _g_indoubt(eng, with_locks):
    eng.check_session()
    results = yield [(i, wire.INDOUBT, [bool(with_locks)], 0.0) for i in range(eng.n)]
    return _merge_indoubt(results)


def _merge_indoubt(results):
    out = {}
    for i, rows in enumerate(results):
        if isinstance(rows, BaseException):
            raise rows
        for gtrid, txn, age, parts, sid, locks in rows:
            d = out.get(gtrid)
            if d is None:
                d = out[gtrid] = {"gtrid": gtrid, "txn": txn, "age": age, "shards": [], "participants": parts,
                                  "session": sid, "locks": {}}
            d["age"] = max(d["age"], age)
            d["shards"].append(i)
            if len(parts) > len(d["participants"]):
                d["participants"] = parts
            lk = d["locks"]
            for p, m in locks:
                p = tuple(p)
                old = lk.get(p)
                lk[p] = m if old is None else SUPREMUM[old][m]
    res = sorted(out.values(), key=lambda d: d["txn"])
    for d in res:
        d["locks"] = {p: _MODES[m] for p, m in d["locks"].items()}
        d["complete"] = set(d["participants"]) <= set(d["shards"])
    return res


def _g_resolve(eng, gtrid, commit):
    check_gtrid(gtrid)
    if type(commit) is not bool:
        raise InvalidRequest(f"commit must be True or False; got {commit!r}")
    eng.check_session()
    results = yield [(i, wire.DECIDE, [gtrid, commit], eng.request_timeout) for i in range(eng.n)]
    unavailable = None
    for i, res in enumerate(results):
        if isinstance(res, InvalidRequest):
            raise res
        if isinstance(res, BaseException):
            unavailable = unavailable or res
        elif res[0] == "conflict":
            raise InvalidRequest(f"gtrid {gtrid!r} was already {'committed' if res[1] else 'aborted'} on shard {i}")
    if unavailable is not None:
        raise unavailable
    if all(r == ["unknown"] for r in results):
        raise InvalidRequest(f"unknown gtrid {gtrid!r}: no shard has it in doubt or remembers resolving it "
                             f"(never prepared, or resolved and forgotten)")
    return None


def _drive(eng, gen):
    """Run an ops generator synchronously (the compiled backend runs the same loop
    in C: hot.drive)."""
    if _cdrive is not None:
        return _cdrive(eng, gen)
    try:
        specs = next(gen)
        while True:
            specs = gen.send(eng.call_many(specs))
    except StopIteration as e:
        return e.value


