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
        .try_lock(resource, mode=Mode.X) -> bool
        .unlock(resource), .held() -> dict[tuple, Mode]
        .commit(), .abort(), context-manager use

The table (lockmgr._core) never blocks: it answers GRANTED (a token),
WAITING or CONFLICT. This module does the blocking. A waiting thread sleeps on
its transaction's own lock; whoever releases a lock wakes exactly the
transactions the table reports as granted. The table serialises its own calls
(it is thread-safe); the manager's mutex guards the waiting protocol and the
transactions' states, and is not taken on the fast path of lock()/unlock().
Design and correctness argument: docs/design.md.
"""

import itertools
import threading
import time
from collections import namedtuple
from contextlib import contextmanager

from ._core import CONFLICT, WAITING, table_class
from .errors import (DeadlockDetected, InvalidRequest, LockNotAvailable,
                     LockTimeout, TransactionAborted)
from .modes import Mode

__all__ = ["LockManager", "Transaction", "LockInfo"]

LockInfo = namedtuple("LockInfo", "resource txn mode granted")
LockInfo.__doc__ = """One request in the lock table (like a row of pg_locks).

``resource`` is the path tuple, ``txn`` the transaction id, ``mode`` the
granted mode (``granted=True``) or the mode waited for (``granted=False``).
A holder waiting to convert shows as two rows."""

ACTIVE = "active"
COMMITTED = "committed"
ABORTED = "aborted"
PREPARED = "prepared"

_MODES = tuple(Mode)


def _check_timeout(timeout):
    if timeout is None:
        return None
    if type(timeout) is bool or not isinstance(timeout, (int, float)) or timeout != timeout or timeout < 0:
        raise InvalidRequest(f"timeout must be None or a number of seconds >= 0; got {timeout!r}")
    return float(timeout)


class Transaction:
    """A transaction of a :class:`LockManager`. Obtain one with ``LockManager.begin()``.

    Locks are held until :meth:`commit` or :meth:`abort` (strict two-phase
    locking) unless released early with :meth:`unlock`. Methods may be called
    from any thread, but a transaction waits for at most one lock at a time.
    """

    __slots__ = ("_mgr", "_table", "id", "name", "_state", "_wake", "_victim", "__weakref__")

    def __init__(self, mgr, tid, name):
        self._mgr = mgr
        self._table = mgr._table
        self.id = tid
        self.name = name
        self._state = ACTIVE
        self._wake = None      # a held threading.Lock while this txn waits
        self._victim = False   # aborted as a deadlock victim

    def __repr__(self):
        return f"<Transaction id={self.id} name={self.name!r} {self._state}>"

    @property
    def state(self):
        """'active', 'prepared', 'committed' or 'aborted'."""
        return self._state

    def _refuse(self):
        if self._victim:
            return TransactionAborted(f"transaction {self.id} was aborted as a deadlock victim")
        return TransactionAborted(f"transaction {self.id} is {self._state}")

    def lock(self, resource, mode=Mode.X, *, timeout=None, nowait=False):
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
            timeout = _check_timeout(timeout)
        # Fast path, without the manager's mutex: the table serialises its
        # own calls. A concurrent abort() sets the state before releasing, so
        # the state is checked again after the grant (see docs/design.md).
        if self._state is ACTIVE:
            tok = self._table.lock(self.id, resource, mode, nowait)
            if tok > 0 and self._state is ACTIVE:
                return tok
        else:
            tok = 0
        return self._lock_slow(resource, mode, timeout, nowait, tok)

    def _lock_slow(self, resource, mode, timeout, nowait, tok):
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

    def _arm_locked(self, detect):
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
                victim = max(cycle)  # the youngest transaction of the cycle
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

    def _wait(self, wake, resource, mode, timeout):
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

    def try_lock(self, resource, mode=Mode.X):
        """Lock without waiting: True if granted, False if it would wait (nothing changed)."""
        try:
            self.lock(resource, mode, nowait=True)
        except LockNotAvailable:
            return False
        return True

    def unlock(self, resource):
        """Release one node early.

        Refused with InvalidRequest if it is not held, or while this transaction
        still holds a descendant of it (release leaf to root). Intention locks
        on its ancestors are kept. Runtime: O(queue length of the node).
        """
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

    def held(self):
        """Every node held, with its mode: ``{path: Mode}`` (intention locks included)."""
        return {path: _MODES[m] for path, m in self._table.held(self.id)}

    def commit(self):
        """Release every lock and finish. Raises TransactionAborted if already finished."""
        mgr = self._mgr
        with mgr._mutex:
            if self._state is not ACTIVE and self._state is not PREPARED:
                raise self._refuse()
            self._finish_locked(COMMITTED)

    def abort(self):
        """Release every lock and finish as aborted. Idempotent; a no-op once finished."""
        mgr = self._mgr
        with mgr._mutex:
            if self._state is ACTIVE or self._state is PREPARED:
                self._abort_locked(victim=False)

    def _abort_locked(self, victim):
        self._victim = victim
        self._finish_locked(ABORTED)

    def _finish_locked(self, state):
        mgr = self._mgr
        self._state = state  # first: a concurrent fast-path lock() checks it after its grant
        mgr._txns.pop(self.id, None)
        woken = self._table.release_all(self.id)
        if woken:
            mgr._wake_all(woken)
        if self._wake is not None:  # we were waiting (abort from another thread, or victim)
            self._wake.release()
            self._wake = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
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
    (None: forever).
    """

    def __init__(self, *, deadlock_detection=True, escalation_threshold=5000, default_timeout=None,
                 _backend=None):
        if type(escalation_threshold) is not int or escalation_threshold < 1:
            raise InvalidRequest(f"escalation_threshold must be an int >= 1; got {escalation_threshold!r}")
        self._default_timeout = _check_timeout(default_timeout)
        self._detect = bool(deadlock_detection)
        # _backend ("c"/"python") is for tests and benchmarks that compare backends
        self._table = table_class(_backend)(escalation_threshold, 0)
        self._mutex = threading.Lock()
        self._ids = itertools.count(1)
        self._txns = {}          # id -> Transaction, for active/prepared transactions
        self._deadlocks = 0
        self._timeouts = 0

    def begin(self, name=None):
        """Start a transaction. Ids increase: a larger id is a younger transaction."""
        with self._mutex:
            tid = next(self._ids)
            t = Transaction(self, tid, name)
            self._txns[tid] = t
        return t

    @contextmanager
    def transaction(self, **kw):
        """``with mgr.transaction() as t:`` commits on normal exit, aborts on an exception."""
        t = self.begin(**kw)
        with t:
            yield t

    def _wake_all(self, woken):
        txns = self._txns
        for tid in woken:
            t = txns.get(tid)
            if t is not None and t._wake is not None:
                t._wake.release()
                t._wake = None

    def snapshot(self):
        """Every request in the table: a list of :class:`LockInfo`."""
        with self._mutex:
            rows = self._table.snapshot()
        return [LockInfo(p, t, _MODES[m], g) for p, t, m, g in rows]

    def wait_for_graph(self):
        """``{waiting txn id: {ids it waits for}}``, from the queues."""
        with self._mutex:
            return self._table.wait_for_graph()

    def stats(self):
        """Counters: granted, waited, timeouts, deadlocks, escalations, and gauges
        (requests, resources, transactions)."""
        with self._mutex:
            s = self._table.stats()
            s["timeouts"] = self._timeouts
            s["deadlocks"] = self._deadlocks
            s["active_transactions"] = len(self._txns)
        return s

    def __repr__(self):
        return f"<LockManager transactions={len(self._txns)}>"
