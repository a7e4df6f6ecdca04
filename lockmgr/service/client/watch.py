"""Watches in the client: ``Client.watch(resource)`` and ``Client.wait_free``.

Interface:
    WatchEvent              one change of a watched node (a frozen dataclass)
    Watch                   the sync iterator of a watch (``with client.watch(r) as w: for ev in w``)
    AsyncWatch              its asyncio twin (``async for``)
    WatchRegistry(eng)      the engine's watches: notices in, events out, re-watching
    wait_free(client, resource, mode, timeout) / async_wait_free(...)

A watch is set with one WATCH request per shard the node lives on (one, or
every shard for a node above the partition depth) and cancelled with one
UNWATCH each; the shard pushes N_WATCH notices, each the node's state after a
change with the watch's sequence number (docs/protocol.md, "Watches"). The
registry turns each notice into events by comparing it with the state before
(granted / released / mode / waiters), in the owner thread, under the
engine's lock (no user code: events go to a queue). When the numbers show a
gap (a notice lost on a reconnect), when the shard restarted, or when the
session was lost and a new one opened, the registry watches again and the
iterator yields a RESET event with the node's state then: every change in
order, or a RESET saying some may have been missed. docs/service.md
("Watches").
"""

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Tuple

from .. import wire
from ..routing import route
from ...errors import InvalidRequest, LockError, SessionExpired, ShardUnavailable
from ...modes import Mode, compatible, supremum
from ...paths import Path, Resource, encode
from ...rules import check_mode
from .engine import _Call

__all__ = ["WatchEvent", "Watch", "AsyncWatch", "WatchRegistry", "INITIAL", "GRANTED", "RELEASED", "MODE",
           "WAITERS", "RESET"]

INITIAL = "initial"     # the state when the watch was set
GRANTED = "granted"     # a holder more (txn, mode)
RELEASED = "released"   # a holder less (txn, the mode it held)
MODE = "mode"           # a holder's mode changed (a conversion or downgrade; txn, its mode now)
WAITERS = "waiters"     # the number of queued requests changed
RESET = "reset"         # watched again (a lost notice, a shard restart, a new session): the state now;
                        # changes since the previous event may have been missed


@dataclass(frozen=True)
class WatchEvent:
    """One change of a watched node, on one shard.

    ``kind``: INITIAL, GRANTED, RELEASED, MODE, WAITERS or RESET (module
    constants, plain strings). ``seq``: the shard's number for the change
    (consecutive per watch and shard: 0 for INITIAL and RESET, then 1, 2, ...;
    the events one change makes share it). ``txn`` and ``mode``: the holder a
    GRANTED / RELEASED / MODE event is about and its mode (the mode it held, for
    RELEASED); None otherwise. ``holders`` ({txn: Mode}) and ``waiters`` (requests
    queued) are the node's state after the change on that shard; ``shard`` is
    the shard's index (a node above the partition depth lives on every shard).
    """

    kind: str
    resource: Path
    seq: int
    shard: int
    holders: Dict[int, Mode] = field(default_factory=dict)
    waiters: int = 0
    txn: Optional[int] = None
    mode: Optional[Mode] = None

    @property
    def group_mode(self) -> Mode:
        """The strongest mode held (the granted group's supremum), NL if none is."""
        m = Mode.NL
        for h in self.holders.values():
            m = supremum(m, h)
        return m


_CLOSED = object()
_MODES = tuple(Mode)


def _holders(rows):
    return {txn: _MODES[m] for txn, m in rows}


class _WatchCore:
    """One watch of a client: its shards' watch ids, sequence numbers and states."""

    def __init__(self, path: Path, shards: List[int], sink: Callable[[Any], None]) -> None:
        self.path = path
        self.shards = shards
        self.sink = sink
        self.wid: Dict[int, Optional[int]] = {s: None for s in shards}
        self.seq: Dict[int, int] = {s: 0 for s in shards}
        self.state: Dict[int, Tuple[Dict[int, Mode], int]] = {s: ({}, 0) for s in shards}
        self.started: Dict[int, bool] = {s: False for s in shards}
        self.open = True
        self.error: Optional[LockError] = None
        self.ready = threading.Event()
        self.resets = 0
        self.counted = False         # counted in the engine's want_pushes (WatchRegistry.add)

    def free(self, mode: int) -> bool:
        """True if ``mode`` could be granted on the node now, as last told: on every
        shard no request is queued and every holder's mode is compatible."""
        for holders, nwait in self.state.values():
            if nwait:
                return False
            for m in holders.values():
                if not compatible(m, mode):
                    return False
        return True


class WatchRegistry:
    """The watches of one engine (``_Engine.watch_registry``). Every method but
    ``add``/``close`` runs under the engine's lock, in the socket owner's thread."""

    def __init__(self, eng: Any) -> None:
        self.eng = eng
        self.by_wid: Dict[Tuple[int, int], _WatchCore] = {}
        self.cores: List[_WatchCore] = []
        eng.on_push(wire.N_WATCH, self._on_notice)

    # -- from user threads

    def add(self, core: _WatchCore) -> None:
        eng = self.eng
        with eng._mu:
            if eng.closed:
                raise SessionExpired("the client was closed")
            self.cores.append(core)
            eng.watchers += 1
            for s in core.shards:
                self._establish(core, s)
            core.counted = True
            eng._push_wanted += 1        # (want_pushes, under the lock held here) notices read at once
            eng._wake_hk()

    def close(self, core: _WatchCore) -> None:
        eng = self.eng
        with eng._mu:
            counted, core.counted = core.counted, False
            if counted:
                eng._push_wanted -= 1
            if not core.open:
                return                   # (ended by an error, or by the client's close)
            core.open = False
            if core in self.cores:
                self.cores.remove(core)
                eng.watchers -= 1
            unwatch = []
            for s, wid in core.wid.items():
                if wid is not None:
                    self.by_wid.pop((s, wid), None)
                    unwatch.append((s, wid))
                core.wid[s] = None
            core.sink(_CLOSED)
            if eng.dead is None and not eng.closed:
                eng._queue_locked([_Call(s, wire.UNWATCH, [wid], time.monotonic() + eng.request_timeout)
                                   for s, wid in unwatch])

    # -- under the engine's lock

    def _establish(self, core: _WatchCore, s: int) -> None:
        """(Re)set the watch on shard ``s``: one WATCH, answered in ``_on_watch``."""
        eng = self.eng
        old = core.wid[s]
        if old is not None:
            self.by_wid.pop((s, old), None)
            core.wid[s] = None
            if eng.dead is None:
                eng._queue_locked([_Call(s, wire.UNWATCH, [old], time.monotonic() + eng.request_timeout)])
        if eng.dead is not None or eng.closed:
            return                 # a new session will watch again (resync_all)
        c = _Call(s, wire.WATCH, [list(core.path)], time.monotonic() + eng.request_timeout,
                  cb=lambda c, core=core: self._on_watch(c, core), urgent=True)
        eng._queue_locked([c])

    def _on_watch(self, c: Any, core: _WatchCore) -> None:
        eng = self.eng
        s = c.shard
        if c.error is not None:
            err = c.error
            if isinstance(err, (SessionExpired, ShardUnavailable)) and not eng.closed:
                if core.open and not isinstance(err, SessionExpired):
                    self._establish(core, s)       # try again (each try takes up to the request timeout)
                return                             # (SessionExpired: the new session watches again)
            if core.open:
                core.error = err
                core.open = False
                if core in self.cores:
                    self.cores.remove(core)
                    eng.watchers -= 1
                core.ready.set()
                core.sink(err)
            return
        wid, seq, rows, nwait = c.result
        if not core.open:
            eng._queue_locked([_Call(s, wire.UNWATCH, [wid], time.monotonic() + eng.request_timeout)])
            return
        self.by_wid[(s, wid)] = core
        core.wid[s] = wid
        core.seq[s] = seq
        holders = _holders(rows)
        core.state[s] = (holders, nwait)
        kind = RESET if core.started[s] else INITIAL
        if kind is RESET:
            core.resets += 1
        core.started[s] = True
        core.sink(WatchEvent(kind, core.path, seq, s, holders, nwait))
        if all(core.started.values()) and all(w is not None for w in core.wid.values()):
            core.ready.set()

    def _on_notice(self, i: int, payload: List[Any]) -> None:
        if len(payload) != 5:
            return
        _, wid, seq, rows, nwait = payload
        core = self.by_wid.get((i, wid))
        if core is None or not core.open:
            return
        if seq != core.seq[i] + 1:
            self._establish(core, i)       # a notice was lost: watch again (RESET)
            return
        core.seq[i] = seq
        old, old_w = core.state[i]
        new = _holders(rows)
        core.state[i] = (new, nwait)
        path = core.path
        sink = core.sink
        for txn, m in old.items():
            if txn not in new:
                sink(WatchEvent(RELEASED, path, seq, i, new, nwait, txn, m))
        for txn, m in new.items():
            was = old.get(txn)
            if was is None:
                sink(WatchEvent(GRANTED, path, seq, i, new, nwait, txn, m))
            elif was != m:
                sink(WatchEvent(MODE, path, seq, i, new, nwait, txn, m))
        if nwait != old_w:
            sink(WatchEvent(WAITERS, path, seq, i, new, nwait))

    def resync_all(self) -> None:
        """A new session is open (after LOST): watch everything again."""
        self.by_wid.clear()
        for core in self.cores:
            for s in core.shards:
                core.wid[s] = None
                self._establish(core, s)

    def resync_shard(self, i: int) -> None:
        """Shard ``i`` restarted (its watches are gone): watch again there."""
        for core in self.cores:
            if i in core.wid:
                wid = core.wid[i]
                if wid is not None:
                    self.by_wid.pop((i, wid), None)
                core.wid[i] = None
                self._establish(core, i)

    def client_closed(self) -> None:
        for core in self.cores:
            core.open = False
            core.sink(_CLOSED)
        self.cores.clear()
        self.by_wid.clear()


def _registry(eng: Any) -> WatchRegistry:
    reg = eng.watch_registry
    if reg is None:
        reg = WatchRegistry(eng)
        with eng._mu:
            if eng.watch_registry is None:
                eng.watch_registry = reg
            else:
                reg = eng.watch_registry
    return reg


def _shards(eng: Any, resource: Resource) -> Tuple[Path, List[int]]:
    key = encode(resource)       # validates (InvalidRequest)
    path: Path = resource if isinstance(resource, tuple) else (resource,)
    return path, list(route(key, len(path), Mode.X, eng.n, eng.partition_depth))


def _taken(w, ev, stop):
    """What a Watch's or AsyncWatch's get() returns for ``ev``, taken from its
    queue: the event; ``stop`` (StopIteration or StopAsyncIteration) once it was
    closed; the error that ended it. Either ends the watch for good."""
    if ev is _CLOSED:
        w._done = True
        raise stop
    if isinstance(ev, BaseException):
        w._done = True
        raise ev
    return ev


class Watch:
    """A watch of one node (``Client.watch``): iterate it for WatchEvents, in
    order; ``close()`` (or leaving ``with``) cancels it (one UNWATCH per shard).
    The first events are INITIAL (one per shard), then the changes. Iteration
    ends when the watch or the client is closed; an error that ends the watch
    (e.g. QuotaExceeded on a re-watch) is raised by ``next``."""

    def __init__(self, client: Any, resource: Resource, _queue: "Optional[queue.SimpleQueue[Any]]" = None) -> None:
        # (_queue: several watches may share one queue -- the semaphore recipe waits for
        # any of its slots; their events then come out of whichever watch's get)
        eng = client._eng
        eng.begin_session()
        self.resource, shards = _shards(eng, resource)
        self._q: "queue.SimpleQueue[Any]" = queue.SimpleQueue() if _queue is None else _queue
        self._reg = _registry(eng)
        self._core = _WatchCore(self.resource, shards, self._q.put)
        self._done = False
        self._reg.add(self._core)
        if not self._core.ready.wait(eng.request_timeout + 0.5):
            self.close()
            raise ShardUnavailable(f"no answer to WATCH of {self.resource!r} within {eng.request_timeout:g}s")
        if self._core.error is not None:
            self.close()
            raise self._core.error

    @property
    def resets(self) -> int:
        """How many times the watch was set again (RESET events)."""
        return self._core.resets

    def free(self, mode: int) -> bool:
        """True if ``mode`` could be granted on the node now (as last told): nothing
        queued and every holder compatible (the node itself; its ancestors' locks
        are not looked at)."""
        return self._core.free(check_mode(mode))

    def get(self, timeout: Optional[float] = None) -> Optional[WatchEvent]:
        """The next event, or None if none came within ``timeout`` (StopIteration
        once closed)."""
        if self._done:
            raise StopIteration
        try:
            ev = self._q.get(timeout=timeout)
        except queue.Empty:
            return None
        return _taken(self, ev, StopIteration)

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        ev = self.get()
        assert ev is not None
        return ev

    def close(self) -> None:
        """Cancel the watch (one UNWATCH per shard); iteration ends at once, events
        not yet taken are dropped. Idempotent."""
        self._done = True
        self._reg.close(self._core)

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncWatch:
    """``Watch`` for the asyncio client: ``async for ev in w``; set up with
    ``await client.watch(resource)``."""

    def __init__(self, client: Any, resource: Resource) -> None:
        self._eng = client._eng
        self.resource, self._shards = _shards(self._eng, resource)
        self._q: "asyncio.Queue[Any]" = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._done = False
        self._core: Optional[_WatchCore] = None

    def _sink(self, ev: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._q.put_nowait, ev)
        except RuntimeError:
            pass                  # the loop is closed

    async def _start(self) -> "AsyncWatch":
        eng = self._eng
        if eng.dead is not None or eng._hello_left:
            await self._loop.run_in_executor(None, eng.renew)
        self._reg = _registry(eng)
        self._core = _WatchCore(self.resource, self._shards, self._sink)
        self._reg.add(self._core)
        ok = await self._loop.run_in_executor(None, self._core.ready.wait, eng.request_timeout + 0.5)
        if not ok:
            self.close()
            raise ShardUnavailable(f"no answer to WATCH of {self.resource!r} within {eng.request_timeout:g}s")
        if self._core.error is not None:
            self.close()
            raise self._core.error
        return self

    @property
    def resets(self) -> int:
        return self._core.resets if self._core is not None else 0

    def free(self, mode: int) -> bool:
        assert self._core is not None
        return self._core.free(check_mode(mode))

    async def get(self, timeout: Optional[float] = None) -> Optional[WatchEvent]:
        if self._done:
            raise StopAsyncIteration
        try:
            ev = await asyncio.wait_for(self._q.get(), timeout)
        except asyncio.TimeoutError:
            return None
        return _taken(self, ev, StopAsyncIteration)

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        ev = await self.get()
        assert ev is not None
        return ev

    def close(self) -> None:
        self._done = True
        if self._core is not None:
            self._reg.close(self._core)

    async def __aenter__(self) -> "AsyncWatch":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def _check_wait_args(mode: int, timeout: Optional[float]) -> int:
    mode = check_mode(mode)
    if timeout is not None and (type(timeout) is bool or not isinstance(timeout, (int, float)) or timeout < 0):
        raise InvalidRequest(f"timeout must be None or seconds >= 0; got {timeout!r}")
    return mode


def wait_free(client: Any, resource: Resource, mode: int, timeout: Optional[float] = None) -> bool:
    """Block until ``mode`` could be granted on ``resource`` (see Watch.free), without
    queueing for it; True then, False if ``timeout`` passed first."""
    mode = _check_wait_args(mode, timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    with Watch(client, resource) as w:
        while not w.free(mode):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            try:
                w.get(left)
            except StopIteration:
                raise SessionExpired("the client was closed") from None
        return True


async def async_wait_free(client: Any, resource: Resource, mode: int, timeout: Optional[float] = None) -> bool:
    mode = _check_wait_args(mode, timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    w = await AsyncWatch(client, resource)._start()
    try:
        while not w.free(mode):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            try:
                await w.get(left)
            except StopAsyncIteration:
                raise SessionExpired("the client was closed") from None
        return True
    finally:
        w.close()
