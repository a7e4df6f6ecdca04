"""Recipes on the lock service's locks: leader election, a counting semaphore,
a read-write lock. They use only the client's public API (transactions,
``on_lost``, ``valid_for``, ``watch``); ``lockmgr.recipes`` re-exports them.

Interface:
    Leadership(client, name, *, timeout=None)     ``with client.leadership(name) as lead``
        .token, .lost (threading.Event), .valid_for(), .is_leader, .resign()
    Semaphore(client, name, limit)                N holders at most (one object = one holder)
        .acquire(blocking=True, timeout=None) -> bool, .release(), ``with sem``; .token, .slot, .lost
    ReadWriteLock(client, name)
        .read(timeout=None), .write(timeout=None)  context managers -> Holding (.token, .lost, .valid_for())

docs/recipes.md has examples and the comparison with kazoo and etcd.
"""

import queue
import random
import threading
import time
from typing import Any, List, Optional, Tuple

from ...errors import InvalidRequest, LockError, LockNotAvailable, LockTimeout, SessionExpired
from ...modes import Mode
from ...paths import Resource, encode
from .watch import Watch

__all__ = ["Leadership", "Semaphore", "ReadWriteLock", "Holding", "recipe_path"]

_PREFIX = {"leader": "__leader__", "sem": "__semaphore__", "rw": "__rwlock__"}


def recipe_path(kind: str, name: Resource) -> Tuple[Any, ...]:
    """The node a recipe locks: ``(prefix, name)`` for a str/int/bytes name (depth 2:
    one shard at the default partition depth), or the name itself if it is a tuple."""
    if type(name) is tuple:
        encode(name)
        return name
    if type(name) not in (str, int, bytes):
        raise InvalidRequest(f"a recipe's name must be a str, int, bytes or a path tuple; got {name!r}")
    path: Tuple[Any, ...] = (_PREFIX[kind], name)
    encode(path)             # (a name too long for a path component: InvalidRequest)
    return path


def _check_timeout(timeout: Optional[float]) -> None:
    if timeout is not None and (type(timeout) is bool or not isinstance(timeout, (int, float)) or timeout < 0):
        raise InvalidRequest(f"timeout must be None or seconds >= 0; got {timeout!r}")


class Holding:
    """One held lock of a recipe: its transaction, fencing token and lost Event."""

    def __init__(self, client: Any, path: Tuple[Any, ...], mode: int, timeout: Optional[float]) -> None:
        _check_timeout(timeout)
        self.path = path
        self.lost = threading.Event()
        self._t = client.begin(f"recipe {path!r}")
        try:
            self.token = self._t.lock(path, mode, timeout=timeout)
        except BaseException:
            self._t.abort()
            raise
        self._t.on_lost(lambda err: self.lost.set())

    def valid_for(self) -> float:
        """Seconds the lock is certainly still held (Transaction.valid_for)."""
        return self._t.valid_for()

    def release(self) -> None:
        """Give the lock up (idempotent); ``lost`` is set."""
        try:
            if self._t.state == "active":
                self._t.commit()
        except LockError:
            pass
        finally:
            self.lost.set()

    def __enter__(self) -> "Holding":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Leadership:
    """Leader election: ``with client.leadership("jobs/compactor") as lead:`` blocks
    until this client is the leader (it holds X on the election's node), and gives
    leadership up on exit.

    ``lead.token`` is the fencing token of the leadership (it grows with every new
    leader: storage that remembers the largest token seen rejects a deposed
    leader's writes). ``lead.lost`` (a ``threading.Event``) is set as soon as the
    client knows leadership is gone: its session expired, the shard restarted and
    the lock could not be reclaimed, or on exit. ``lead.valid_for()``: seconds the
    leadership is certainly still held. Followers wait in the shard's FIFO queue
    for the lock (no polling, no herd: one is granted when the leader goes, in the
    order they came); ``timeout`` bounds the wait (LockTimeout).
    """

    def __init__(self, client: Any, name: Resource, *, timeout: Optional[float] = None) -> None:
        self._client = client
        self.path = recipe_path("leader", name)
        self._timeout = timeout
        _check_timeout(timeout)
        self._h: Optional[Holding] = None
        self.lost = threading.Event()
        self.token = 0

    def acquire(self) -> "Leadership":
        """Block until leader (LockTimeout after ``timeout``); returns self."""
        if self._h is not None:
            raise InvalidRequest("this Leadership is held already; make a new one to run again")
        self._h = Holding(self._client, self.path, Mode.X, self._timeout)
        self.token = self._h.token
        self.lost = self._h.lost
        return self

    @property
    def is_leader(self) -> bool:
        return self._h is not None and not self.lost.is_set() and self._h.valid_for() > 0

    def valid_for(self) -> float:
        return self._h.valid_for() if self._h is not None else 0.0

    def resign(self) -> None:
        """Give leadership up (the next follower is granted it)."""
        if self._h is not None:
            self._h.release()

    def __enter__(self) -> "Leadership":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.resign()


class Semaphore:
    """A counting semaphore: at most ``limit`` holders at once, across every client.

    One object is one holder (kazoo's Semaphore works the same way). The
    semaphore is ``limit`` slot nodes; holding it is holding X on one slot, so the
    table itself guarantees the bound. ``acquire`` tries the slots in a random
    order without waiting (one round trip each until one is free); if none is,
    it watches every slot and tries again when one frees up (pushed by the
    shards: no polling). ``token``: the fencing token of the slot held.
    """

    def __init__(self, client: Any, name: Resource, limit: int) -> None:
        if type(limit) is not int or not 1 <= limit <= 1024:
            raise InvalidRequest(f"a semaphore's limit must be an int in 1..1024; got {limit!r}")
        self._client = client
        self.base = recipe_path("sem", name)
        self.limit = limit
        self._h: Optional[Holding] = None
        self.slot: Optional[int] = None
        self.token = 0
        self.lost = threading.Event()

    def _slots(self) -> List[Tuple[Any, ...]]:
        return [self.base + (i,) for i in range(self.limit)]

    def _try(self) -> bool:
        order = list(range(self.limit))
        random.shuffle(order)
        for i in order:
            try:
                h = Holding(self._client, self.base + (i,), Mode.X, 0)
            except (LockNotAvailable, LockTimeout):
                continue
            self._h, self.slot, self.token, self.lost = h, i, h.token, h.lost
            return True
        return False

    def acquire(self, blocking: bool = True, timeout: Optional[float] = None) -> bool:
        """Become a holder: True; False if ``blocking`` is false and all slots are held,
        or ``timeout`` passed first."""
        _check_timeout(timeout)
        if self._h is not None:
            raise InvalidRequest("this Semaphore object holds a slot already; release() it first")
        if self._try():
            return True
        if not blocking:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        shared: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        watches = [Watch(self._client, p, shared) for p in self._slots()]
        try:
            while True:
                if any(w.free(Mode.X) for w in watches) and self._try():
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                try:
                    watches[0].get(left)       # any slot's event (they share the queue)
                except StopIteration:
                    raise SessionExpired("the client was closed") from None
        finally:
            for w in watches:
                w.close()

    def release(self) -> None:
        if self._h is not None:
            self._h.release()
            self._h = None
            self.slot = None

    def __enter__(self) -> "Semaphore":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ReadWriteLock:
    """A read-write lock: ``with rw.read():`` (S, shared by readers) and ``with
    rw.write():`` (X, alone). Writers do not starve: the shard's queue is FIFO, so
    readers that come after a waiting writer wait behind it."""

    def __init__(self, client: Any, name: Resource) -> None:
        self._client = client
        self.path = recipe_path("rw", name)

    def read(self, timeout: Optional[float] = None) -> Holding:
        return Holding(self._client, self.path, Mode.S, timeout)

    def write(self, timeout: Optional[float] = None) -> Holding:
        return Holding(self._client, self.path, Mode.X, timeout)
