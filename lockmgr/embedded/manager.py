"""The embedded lock manager: many threads, one process.

Interface:
    LockManager(*, deadlock_detection=True, escalation_threshold=5000,
                default_timeout=None)
        .begin(name=None) -> Transaction
        .transaction(**kw)              context manager: commit / abort
        .snapshot() -> list[LockInfo]   one row per request, like pg_locks
        .wait_for_graph() -> dict[int, set[int]]
        .stats() -> dict[str, int]
    Transaction
        .id, .name, .state
        .lock(resource, mode=Mode.X, *, timeout=None, nowait=False) -> token
        .lock_many([(resource, mode), ...], *, timeout=None, nowait=False) -> tokens
        .try_lock(resource, mode=Mode.X) -> bool
        .unlock(resource), .held() -> dict[tuple, Mode]
        .commit(), .abort(), context-manager use

The table (lockmgr._core) never blocks: it answers GRANTED (a token),
WAITING or CONFLICT. This module does the blocking. A waiting thread sleeps on
its transaction's own lock; whoever releases a lock wakes exactly the
transactions the table reports as granted. The table serialises its own calls
(it is thread-safe); the manager's mutex guards the waiting protocol and the
transactions' states, and is not taken on the fast path of lock()/unlock().
Design and correctness argument: docs/embedded.md.
"""

import itertools
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from types import TracebackType
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Literal, Optional, Set,
                    Tuple, Type, Union)

from .._core import CONFLICT, WAITING, table_class
from ..rules import (ABORTED, ACTIVE, COMMITTED, EPOCH_BITS, PREPARED, RESOLVED_MEMORY, Gtrid, LockInfo,
                     check_gtrid, check_mode, check_timeout, check_wait, choose_victim)
from ..errors import (DeadlockDetected, InvalidRequest, LockError, LockNotAvailable,
                     LockTimeout, TransactionAborted, TransactionCommitted)
from ..modes import Mode
from ..paths import Path, Resource, encode

if TYPE_CHECKING:
    from .._core._ctable import Table
    from ..wal import PrepareLog

# The prepare log (lockmgr.wal, which needs msgpack) is imported only by a
# manager given a data_dir: ``import lockmgr`` alone stays free of msgpack.

__all__ = ["LockManager", "Transaction", "LockInfo"]



_MODES = tuple(Mode)




class Transaction:
    """A transaction of a :class:`LockManager`. Obtain one with ``LockManager.begin()``.

    Locks are held until :meth:`commit` or :meth:`abort` (strict two-phase
    locking) unless released early with :meth:`unlock`. Methods may be called
    from any thread, but a transaction waits for at most one lock at a time.
    """

    __slots__ = ("_mgr", "_table", "id", "name", "gtrid", "_state", "_wake", "_victim", "_resolving",
                 "prepared_at", "_resolved_by", "_lost_cbs", "_lost", "__weakref__")

    id: int                         #: unique in its manager; a larger id is a younger transaction
    name: Optional[str]             #: the name given to ``begin()``
    gtrid: Optional[Gtrid]            #: the global transaction id given to ``begin()``, if any
    prepared_at: Optional[float]    #: ``time.time()`` of ``prepare()``, None before

    def __init__(self, mgr: "LockManager", tid: int, name: Optional[str], gtrid: Optional[Gtrid] = None) -> None:
        self._mgr = mgr
        self._table = mgr._table
        self.id = tid
        self.name = name
        self.gtrid = gtrid
        self._resolving = False
        self.prepared_at = None
        self._resolved_by: Optional[str] = None   # who decided a prepared transaction: "owner" or "resolve"
        self._state: str = ACTIVE
        self._wake: Optional[threading.Lock] = None      # a held threading.Lock while this txn waits
        self._victim = False   # aborted as a deadlock victim
        self._lost_cbs: Optional[List[Callable[[LockError], Any]]] = None     # on_lost callbacks
        self._lost: Optional[LockError] = None    # why the locks were lost (a deadlock victim)

    def on_lost(self, fn: Callable[[LockError], Any]) -> None:
        """Call ``fn(error)`` once if the transaction's locks are taken from it: in one
        process that happens only when it is chosen as a deadlock victim (the error
        is DeadlockDetected; its own waiting ``lock()`` raises it too). Never after
        its own commit or abort. ``fn`` runs on a thread of its own, never with the
        manager's lock held; at once if the locks are already lost. (The service
        client's ``on_lost`` also covers session expiry and shard restarts.)"""
        if not callable(fn):
            raise InvalidRequest(f"on_lost takes a callable; got {fn!r}")
        with self._mgr._mutex:
            if self._lost is None:
                if self._state is ACTIVE or self._state is PREPARED:
                    if self._lost_cbs is None:
                        self._lost_cbs = []
                    self._lost_cbs.append(fn)
                return
            err = self._lost
        threading.Thread(target=fn, args=(err,), name="lockmgr-on-lost", daemon=True).start()

    def valid_for(self) -> float:
        """Seconds the locks are certainly still held: ``inf`` while the transaction is
        active or prepared (nothing but a deadlock, or its own end, takes them in
        one process), 0.0 once it is finished. The service client's counterpart
        counts down its session's lease."""
        return float("inf") if (self._state is ACTIVE or self._state is PREPARED) and self._lost is None else 0.0

    def __repr__(self) -> str:
        return f"<Transaction id={self.id} name={self.name!r} {self._state}>"

    @property
    def state(self) -> str:
        """'active', 'prepared', 'committed' or 'aborted'."""
        return self._state

    def _refuse(self) -> LockError:
        if self._state is PREPARED:
            return InvalidRequest(f"transaction {self.id} is prepared: it can only be committed or aborted")
        if self._victim:
            return TransactionAborted(f"transaction {self.id} was aborted as a deadlock victim")
        return TransactionAborted(f"transaction {self.id} is {self._state}")

    def lock(self, resource: Resource, mode: int = Mode.X, *, timeout: Optional[float] = None,
             nowait: bool = False) -> int:
        """Lock ``resource`` in ``mode``, taking intention locks on its ancestors.

        ``resource`` is a path tuple (or one str/int/bytes component). Blocks
        until granted, for at most ``timeout`` seconds (default: the manager's
        ``default_timeout``; None waits forever). With ``nowait=True`` a
        conflict raises :class:`LockNotAvailable` at once and changes nothing.

        Returns the fencing token of the grant: it strictly increases with every
        new grant on the resource. Re-locking in a mode already covered returns
        the current token; a conversion returns a new, larger one.

        Raises LockTimeout, LockNotAvailable, DeadlockDetected (this
        transaction was the victim; it is aborted), TransactionAborted,
        InvalidRequest. Runtime: O(depth) when granted at once.
        """
        if timeout is not None:
            timeout = check_timeout(timeout)
        # Fast path, without the manager's mutex: the table serialises its
        # own calls. A concurrent abort() sets the state before releasing, so
        # the state is checked again after the grant (see docs/embedded.md, "Fast path").
        if self._state is ACTIVE:
            tok = self._table.lock(self.id, resource, mode, nowait)
            if tok > 0 and self._state is ACTIVE:
                return tok
        else:
            tok = 0
        return self._lock_slow(resource, mode, timeout, nowait, tok)

    def _lock_slow(self, resource: Resource, mode: int, timeout: Optional[float], nowait: bool, tok: int) -> int:
        mgr = self._mgr
        with mgr._mutex:
            if self._state is not ACTIVE:
                if tok > 0 or tok == WAITING:
                    # aborted while we locked: drop what the late call took
                    mgr._wake_all(self._table.release_all(self.id))
                if tok == WAITING and self._victim:
                    # chosen as a deadlock victim between queueing and here
                    raise DeadlockDetected(
                        f"transaction {self.id} was chosen as deadlock victim; it has been aborted")
                raise self._refuse()
            if tok == CONFLICT:
                raise LockNotAvailable(
                    f"{resource!r} is not available in mode {_MODES[mode].name} without waiting")
            wake = self._arm_locked(True)
        return self._wait(wake, resource, mode, mgr._default_timeout if timeout is None else timeout)

    def _arm_locked(self, detect: bool) -> threading.Lock:
        """Called under the mutex when the table says we wait: look for a
        deadlock closed by this wait (``detect``), then return the lock to
        sleep on. The lock comes back unlocked if we are no longer waiting
        (granted meanwhile, e.g. by aborting a victim)."""
        mgr = self._mgr
        table = self._table
        if detect and mgr._detect:
            while True:
                cycle = table.find_cycle(self.id)
                if not cycle:
                    break
                victim = choose_victim(cycle)
                mgr._deadlocks += 1
                if victim == self.id:
                    self._abort_locked(victim=True)
                    raise DeadlockDetected(
                        f"transaction {self.id} was chosen as deadlock victim "
                        f"(youngest in wait-for cycle {cycle}); it has been aborted")
                mgr._txns[victim]._abort_locked(victim=True)
        wake = threading.Lock()
        if table.is_waiting(self.id):
            wake.acquire()
            self._wake = wake
        return wake

    def _wait(self, wake: threading.Lock, resource: Resource, mode: int, timeout: Optional[float]) -> int:
        mgr = self._mgr
        table = self._table
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None:
                wake.acquire()
            else:
                wake.acquire(timeout=max(0.0, deadline - time.monotonic()))
            with mgr._mutex:
                self._wake = None
                if self._state is not ACTIVE:
                    if self._victim:
                        raise DeadlockDetected(
                            f"transaction {self.id} was chosen as deadlock victim; it has been aborted")
                    raise TransactionAborted(f"transaction {self.id} was {self._state} while it waited")
                if table.is_waiting(self.id):
                    if deadline is not None and time.monotonic() >= deadline:
                        mgr._wake_all(table.cancel_wait(self.id))
                        mgr._timeouts += 1
                        raise LockTimeout(
                            f"timed out after {timeout:g}s waiting for {_MODES[mode].name} on {resource!r}")
                    # a stale wake-up (meant for an earlier wait): sleep again
                    wake = self._arm_locked(False)
                    continue
                tok = table.lock(self.id, resource, mode, False)
                if tok > 0:
                    return tok
                # granted one level, now waiting on a deeper one: go round again
                wake = self._arm_locked(True)

    def lock_many(self, items: Iterable[Tuple[Resource, int]], *, timeout: Optional[float] = None,
                  nowait: bool = False) -> List[int]:
        """Lock several ``(resource, mode)`` pairs in order; returns their tokens.

        Every pair is validated first (InvalidRequest, nothing changed, if one
        is bad); then they are locked as successive :meth:`lock` calls would,
        sharing one ``timeout`` for the whole batch. Not atomic: on an error
        the locks granted before it are kept. The same method as the service
        client's, where the requests for one shard travel in one message.
        """
        try:
            items = list(items)
        except TypeError:
            raise InvalidRequest("lock_many takes an iterable of (resource, mode) pairs") from None
        for i, it in enumerate(items):
            if type(it) not in (tuple, list) or len(it) != 2:
                raise InvalidRequest(f"lock_many item {i} must be a (resource, mode) pair; got {it!r}")
            encode(it[0])                    # validates the path
            check_mode(it[1])
        if timeout is not None:
            timeout = check_timeout(timeout)
        elif self._mgr._default_timeout is not None:
            timeout = self._mgr._default_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        tokens = []
        for resource, mode in items:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            tokens.append(self.lock(resource, mode, timeout=left, nowait=nowait))
        return tokens

    def try_lock(self, resource: Resource, mode: int = Mode.X) -> bool:
        """Lock without waiting: True if granted, False if it would wait (nothing changed)."""
        try:
            self.lock(resource, mode, nowait=True)
        except LockNotAvailable:
            return False
        return True

    def unlock(self, resource: Resource, *, wait: bool = True) -> None:
        """Release one node early.

        Refused with InvalidRequest if it is not held, or while this transaction
        still holds a descendant of it (release leaf to root). Intention locks
        on its ancestors are kept. Runtime: O(queue length of the node).
        ``wait`` is accepted for the service clients' sake (``wait=False`` sends
        a release without waiting there); here every release is immediate.
        """
        if wait is not True:
            check_wait(wait)
        if self._state is not ACTIVE:
            raise self._refuse()
        try:
            woken = self._table.unlock(self.id, resource)
        except InvalidRequest:
            if self._state is not ACTIVE:  # aborted concurrently: say so
                raise self._refuse() from None
            raise
        if woken:
            mgr = self._mgr
            with mgr._mutex:
                mgr._wake_all(woken)

    def held(self) -> Dict[Path, Mode]:
        """Every node held, with its mode: ``{path: Mode}`` (intention locks included)."""
        return {path: _MODES[m] for path, m in self._table.held(self.id)}

    def prepare(self) -> None:
        """Phase one of two-phase commit: keep every lock until commit or abort.

        With a ``data_dir`` the locks and their fencing tokens are appended to
        the manager's prepare log and fsynced before this returns (prepares
        from many threads share one fsync); a restarted manager on the same
        directory gets them back, in doubt, until :meth:`LockManager.resolve`.
        Without one, the transaction is only marked prepared. Afterwards new
        lock requests are refused; only commit() or abort() remain.
        Requires a ``gtrid`` (``begin(gtrid=...)``) when there is a data_dir.
        """
        mgr = self._mgr
        with mgr._mutex:
            if self._state is not ACTIVE:
                raise self._refuse()
            table = self._table
            if table.is_waiting(self.id):
                raise InvalidRequest(f"transaction {self.id} is waiting for a lock; it cannot prepare meanwhile")
            log = mgr._log
            if log is not None and self.gtrid is None:
                raise InvalidRequest("prepare() with a data_dir needs a global transaction id: begin(gtrid=...)")
            self._state = PREPARED
            self.prepared_at = time.time()
            if log is None:
                return
            # re-locking a held mode changes nothing and returns its token
            locks = [[encode(p), m, table.lock(self.id, p, m)] for p, m in table.held(self.id)]
            self._resolving = True   # commit/abort wait until the prepare is durable
            ticket = log.submit({"t": "prepare", "gtrid": self.gtrid, "txn": self.id, "name": self.name,
                                 "at": self.prepared_at, "locks": locks})
        try:
            ticket.wait()
        except LockError:
            with mgr._mutex:   # not durable: not prepared
                self._state = ACTIVE
                self._resolving = False
                self.prepared_at = None
            raise
        with mgr._mutex:
            self._resolving = False

    def commit(self, *, wait: bool = True) -> None:
        """Release every lock and finish. Raises TransactionAborted if already finished.

        For a prepared transaction with a data_dir, the decision is logged
        durably before the locks are released. Runtime: O(locks held).
        ``wait``: as for :meth:`unlock` (accepted; the release is immediate)."""
        if wait is not True:
            check_wait(wait)
        if self._state is ACTIVE and self.gtrid is None:
            # the common case, inlined: _finish_locked(COMMITTED) without the calls
            mgr = self._mgr
            with mgr._mutex:
                if self._state is ACTIVE and not self._resolving:
                    self._state = COMMITTED
                    mgr._txns.pop(self.id, None)
                    woken = self._table.release_all(self.id)
                    if woken:
                        mgr._wake_all(woken)
                    if self._wake is not None:
                        self._wake.release()
                        self._wake = None
                    return
        self._resolve(COMMITTED)

    def abort(self, *, wait: bool = True) -> None:
        """Release every lock and finish as aborted. Idempotent; a no-op once finished,
        except for a prepared transaction that :meth:`LockManager.resolve` committed:
        that raises TransactionCommitted (the transaction is committed).
        ``wait``: as for :meth:`unlock` (accepted; the release is immediate)."""
        if wait is not True:
            check_wait(wait)
        try:
            self._resolve(ABORTED)
        except TransactionAborted:
            pass

    def _resolve(self, outcome: str, by: str = "owner") -> None:
        mgr = self._mgr
        with mgr._mutex:
            if self._resolving:
                raise InvalidRequest(f"transaction {self.id} is being prepared or resolved by another thread")
            log = mgr._log
            if self._state is ACTIVE or (self._state is PREPARED and log is None):
                if self._state is PREPARED:
                    self._resolved_by = by
                if outcome is ABORTED:
                    self._abort_locked(victim=False)
                else:
                    self._finish_locked(COMMITTED)
                mgr._remember(self.gtrid, outcome)
                return
            if self._state is not PREPARED:
                if self._resolved_by == "resolve" and self._state is not outcome:
                    # prepared, then decided the other way by LockManager.resolve()
                    if self._state is COMMITTED:
                        raise TransactionCommitted(f"transaction {self.id} (gtrid {self.gtrid!r}) was committed "
                                                   f"by LockManager.resolve(); it was not aborted")
                    raise TransactionAborted(f"transaction {self.id} (gtrid {self.gtrid!r}) was aborted by "
                                             f"LockManager.resolve(); it was not committed")
                if outcome is ABORTED:
                    return
                raise self._refuse()
            assert log is not None   # prepared without a log: finished above
            self._resolving = True
            ticket = log.submit({"t": "resolve", "gtrid": self.gtrid, "commit": outcome is COMMITTED})
        try:
            ticket.wait()
        finally:
            with mgr._mutex:
                self._resolving = False
                if ticket.durable:
                    self._resolved_by = by
                    self._finish_locked(outcome)
                    mgr._remember(self.gtrid, outcome)

    def _abort_locked(self, victim: bool) -> None:
        self._victim = victim
        if victim and self._lost is None:
            self._lost = DeadlockDetected(f"transaction {self.id} was chosen as deadlock victim; its locks "
                                          f"have been released")
            cbs, self._lost_cbs = self._lost_cbs, None
            if cbs:
                err = self._lost
                # (under the manager's mutex: the callbacks run on a thread of their own)
                threading.Thread(target=lambda: [fn(err) for fn in cbs], name="lockmgr-on-lost",
                                 daemon=True).start()
        else:
            self._lost_cbs = None
        self._finish_locked(ABORTED)

    def _finish_locked(self, state: str) -> None:
        mgr = self._mgr
        self._state = state  # first: a concurrent fast-path lock() checks it after its grant
        mgr._txns.pop(self.id, None)
        if self.gtrid is not None:
            mgr._gtrids.pop(self.gtrid, None)
        woken = self._table.release_all(self.id)
        if woken:
            mgr._wake_all(woken)
        if self._wake is not None:  # we were waiting (abort from another thread, or victim)
            self._wake.release()
            self._wake = None

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> "Literal[False]":
        if exc_type is None:
            if self._state is ACTIVE or self._state is PREPARED:
                self.commit()
        else:
            self.abort()
        return False


class LockManager:
    """An in-process lock manager; thread-safe.

    ``deadlock_detection``: look for a wait-for cycle whenever a request starts
    to wait; the youngest transaction of the cycle is aborted with
    DeadlockDetected. ``escalation_threshold``: when a transaction holds more
    than this many locks directly below one node, the node's lock is converted
    to S (or X) if that is grantable at once and the locks below are released.
    ``default_timeout``: seconds a ``lock()`` waits when it gives no timeout
    (None: forever). ``data_dir``: a directory for the prepare log; prepared
    transactions found there are restored, in doubt, before ``__init__``
    returns, and fencing tokens continue above every token issued before.
    """

    def __init__(self, *, deadlock_detection: bool = True, escalation_threshold: int = 5000,
                 default_timeout: Optional[float] = None,
                 data_dir: Optional[Union[str, "os.PathLike[str]"]] = None, _backend: Optional[str] = None) -> None:
        if type(escalation_threshold) is not int or escalation_threshold < 1:
            raise InvalidRequest(f"escalation_threshold must be an int >= 1; got {escalation_threshold!r}")
        self._default_timeout = check_timeout(default_timeout)
        self._detect = bool(deadlock_detection)
        # _backend ("c"/"python") is for tests and benchmarks that compare backends
        self._log: "Optional[PrepareLog]" = None
        token_base = 0
        if data_dir is not None:
            from ..wal import PrepareLog
            try:
                path = os.fspath(data_dir)
            except TypeError:
                raise InvalidRequest(f"data_dir must be a path (str or os.PathLike); got {data_dir!r}") from None
            try:
                self._log = PrepareLog(path)
            except (NotADirectoryError, FileExistsError, PermissionError) as e:
                raise InvalidRequest(f"data_dir {path!r} is not a usable directory: {e}") from None
            token_base = self._log.epoch << EPOCH_BITS
        self._table: Table = table_class(_backend)(escalation_threshold, token_base)
        self._mutex = threading.Lock()
        self._txns: Dict[int, Transaction] = {}     # id -> Transaction, for active/prepared transactions
        self._gtrids: Dict[Gtrid, Transaction] = {}   # gtrid -> Transaction, for active/prepared transactions
        # gtrid -> outcome, the most recent RESOLVED_MEMORY
        self._resolved: "OrderedDict[Gtrid, str]" = OrderedDict()
        self._deadlocks = 0
        self._timeouts = 0
        first_id = 1
        if self._log is not None:
            first_id = self._restore(self._log.live_records()) + 1
        self._ids = itertools.count(first_id)

    def _restore(self, records: Dict[str, Dict[str, Any]]) -> int:
        """Give every prepared, unresolved transaction of the log its locks back."""
        from ..wal import prepared_records, relock
        last = 0
        for rec in prepared_records(records):
            t = Transaction(self, rec["txn"], rec.get("name"), rec["gtrid"])
            t._state = PREPARED
            t.prepared_at = rec.get("at")
            relock(self._table, rec)
            self._txns[t.id] = t
            self._gtrids[rec["gtrid"]] = t
            last = max(last, t.id)
        return last

    def _remember(self, gtrid: Optional[Gtrid], outcome: str) -> None:
        if gtrid is None:
            return
        self._resolved[gtrid] = outcome
        while len(self._resolved) > RESOLVED_MEMORY:
            self._resolved.popitem(last=False)

    def begin(self, name: Optional[str] = None, *, gtrid: Optional[Gtrid] = None) -> Transaction:
        """Start a transaction. Ids increase: a larger id is a younger transaction.

        ``gtrid``: a global transaction id (str) chosen by a 2PC coordinator,
        unique among the transactions of this manager; needed to prepare with
        a data_dir, and the name under which recover()/resolve() know it.
        """
        if gtrid is None:
            # next() on a count and a dict store are atomic: no mutex needed
            tid = next(self._ids)
            t = self._txns[tid] = Transaction(self, tid, name)
            return t
        check_gtrid(gtrid)
        with self._mutex:
            if gtrid in self._gtrids:
                raise InvalidRequest(f"gtrid {gtrid!r} is already in use by transaction {self._gtrids[gtrid].id}")
            tid = next(self._ids)
            t = Transaction(self, tid, name, gtrid)
            self._txns[tid] = t
            self._gtrids[gtrid] = t
        return t

    def recover(self) -> List[Gtrid]:
        """The gtrids of the prepared transactions that are in doubt, oldest first."""
        with self._mutex:
            return [t.gtrid for t in sorted(self._gtrids.values(), key=lambda t: t.id)
                    if t._state is PREPARED and t.gtrid is not None]

    def indoubt(self) -> List[Dict[str, Any]]:
        """In-doubt transactions with their age and locks: a list of dicts."""
        now = time.time()
        with self._mutex:
            return [{"gtrid": t.gtrid, "txn": t.id, "age": now - (t.prepared_at or now),
                     "locks": {p: _MODES[m] for p, m in self._table.held(t.id)}}
                    for t in sorted(self._gtrids.values(), key=lambda t: t.id) if t._state is PREPARED]

    def resolve(self, gtrid: Gtrid, commit: bool) -> None:
        """Finish the prepared transaction ``gtrid``: commit (True) or abort (False).

        Idempotent: resolving again with the same outcome does nothing; with
        the other outcome, or for a gtrid never seen (or forgotten), it raises
        InvalidRequest.
        """
        if type(commit) is not bool:
            raise InvalidRequest(f"commit must be True or False; got {commit!r}")
        outcome = COMMITTED if commit else ABORTED
        with self._mutex:
            t = self._gtrids.get(gtrid)
            if t is None:
                done = self._resolved.get(gtrid)
                if done is None:
                    raise InvalidRequest(f"unknown gtrid {gtrid!r}: no such prepared transaction")
                if done is not outcome:
                    raise InvalidRequest(f"gtrid {gtrid!r} was already {done}")
                return
            if t._state is not PREPARED:
                raise InvalidRequest(f"transaction {gtrid!r} is {t._state}, not prepared")
        t._resolve(outcome, by="resolve")

    def close(self) -> None:
        """Close the prepare log (prepared transactions stay in it)."""
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "LockManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self, *, name: Optional[str] = None, gtrid: Optional[Gtrid] = None) -> Iterator[Transaction]:
        """``with mgr.transaction() as t:`` commits on normal exit, aborts on an exception.

        ``name`` and ``gtrid`` are passed to :meth:`begin`."""
        t = self.begin(name, gtrid=gtrid)
        with t:
            yield t

    def _wake_all(self, woken: Iterable[int]) -> None:
        txns = self._txns
        for tid in woken:
            t = txns.get(tid)
            if t is not None and t._wake is not None:
                t._wake.release()
                t._wake = None

    def snapshot(self) -> List[LockInfo]:
        """Every request in the table: a list of :class:`LockInfo`."""
        with self._mutex:
            rows = self._table.snapshot()
        return [LockInfo(p, t, _MODES[m], g) for p, t, m, g in rows]

    def wait_for_graph(self) -> Dict[int, Set[int]]:
        """``{waiting txn id: {ids it waits for}}``, from the queues."""
        with self._mutex:
            return self._table.wait_for_graph()

    def stats(self) -> Dict[str, int]:
        """Counters: granted, waited, timeouts, deadlocks, escalations, and gauges
        (requests, resources, transactions)."""
        with self._mutex:
            s = self._table.stats()
            s["timeouts"] = self._timeouts
            s["deadlocks"] = self._deadlocks
            s["active_transactions"] = len(self._txns)
        return s

    def __repr__(self) -> str:
        return f"<LockManager transactions={len(self._txns)}>"
