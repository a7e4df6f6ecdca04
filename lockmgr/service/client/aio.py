"""The asyncio client of the lock service.

Interface:
    await connect(endpoints=None, *, session_ttl=10.0, partition_depth=None,
                  request_timeout=5.0, default_timeout=None, name=None,
                  etcd=None, cluster=None, cache_locks=False, cache_max_entries=10_000,
                  cache_max_idle=30.0) -> Client     (replica sets / etcd: follows the primaries)
    Client
        .begin(name=None, *, gtrid=None) -> Transaction     (no round trip)
        .transaction(**kw)      ``async with``: commit / abort
        await .close(), ``async with client``
        await .snapshot(), await .wait_for_graph(), await .stats(), await .deadlocks()
        .endpoints, .partition_depth, .session_id, .expired
        await .recover(), await .indoubt(), await .resolve(gtrid, commit)   (2PC)
        .add_listener(fn), .remove_listener(fn), .state       (fn called on the loop)
        await .watch(resource) -> AsyncWatch, await .wait_free(resource, mode, timeout)
    Transaction: the sync Transaction's methods as coroutines
        await .lock(), .try_lock(), .lock_many(), .unlock(), .held(), .prepare(), .commit(), .abort()
        .on_lost(fn), .lost (an asyncio.Event), .lost_error, .valid_for()
        ``async with txn``

It shares the sync client's engine (engine.py: one pipelined connection per
shard) and its transaction logic (the generators of ops.py). The event loop
itself owns the sockets while its calls are outstanding and no other thread
does: it sends, and receives in ``add_reader`` callbacks on the sockets'
ZMQ_FDs, so a call involves no other thread (``engine._LoopDriver``); when another thread
owns them, that thread completes the calls through ``call_soon_threadsafe``.
Many tasks may use one Client at once. Cancelling a task that awaits ``lock()`` aborts
that transaction (its request cannot be withdrawn halfway).
"""

import asyncio
import time
from types import TracebackType
from typing import Any, Callable, Dict, Iterable, List, Literal, Optional, Set, Tuple, Type

from .. import wire
from ...rules import Gtrid, LockInfo, check_timeout, check_wait
from ...errors import InvalidRequest, LockError, LockNotAvailable, SessionExpired, ShardUnavailable
from ...modes import Mode
from ...paths import Path, Resource
from ..reports import merge_reports
from .engine import _Call
from .ops import (ACTIVE, PREPARED, _MODES, _TxnCore, _g_finish, _g_held, _g_indoubt, _g_lock, _g_lock_many,
                  _g_prepare, _g_resolve, _g_unlock)
from .sync import Client as _SyncClient, Endpoints, connect as _sync_connect
from .notify import SessionState
from .watch import AsyncWatch, async_wait_free
from .cache import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_IDLE

__all__ = ["connect", "Client", "Transaction", "SessionExpired", "ShardUnavailable"]

async def _call_many(eng, specs):
    loop = asyncio.get_running_loop()
    drv = eng.loop_driver(loop)
    cb = drv.resolve
    now = time.monotonic()
    rt = eng.request_timeout
    calls = []
    for shard, typ, args, extra in specs:
        # the future rides in the call's ``w`` slot (a call with a callback has no _Waiter)
        calls.append(_Call(shard, typ, args, None if extra is None else now + rt + extra, loop.create_future(),
                           cb, True))
    eng.submit_async(calls, drv)
    out = []
    for c in calls:
        await c.w
        out.append(c.error if c.error is not None else c.result)
    return out


async def _await_session(core):
    """An asyncio transaction begun while the session was being replaced (after LOST):
    wait (in a worker thread) until the new session is open."""
    eng = core.eng
    if core.gen == eng.gen + 1 or (core.gen == eng.gen and eng._hello_left):
        await asyncio.get_running_loop().run_in_executor(None, eng.renew)


async def _drive(core, gen):
    eng = core.eng
    if core.gen != eng.gen or eng._hello_left:
        await _await_session(core)
    try:
        specs = next(gen)
        while True:
            try:
                results = await _call_many(eng, specs)
            except asyncio.CancelledError:
                core.abort_everywhere()
                raise
            specs = gen.send(results)
    except StopIteration as e:
        return e.value


class Transaction:
    """An asyncio transaction: every method of :class:`lockmgr.service.client.sync.Transaction`, as coroutines."""

    __slots__ = ("_c", "_lost")

    def __init__(self, core: "_TxnCore") -> None:
        self._c = core
        self._lost: Optional[asyncio.Event] = None

    def on_lost(self, fn: Callable[[LockError], Any]) -> None:
        """See :meth:`lockmgr.service.client.sync.Transaction.on_lost`: ``fn(error)``
        runs on the client's notification thread (use :attr:`lost` to wait on the loop)."""
        self._c.eng.txn_on_lost(self._c, fn)

    @property
    def lost(self) -> asyncio.Event:
        """An :class:`asyncio.Event` of the running loop, set as soon as the client knows
        the transaction's locks are gone (the cases of ``on_lost``); the
        error is :attr:`lost_error`. Made on first use, inside the loop."""
        ev = self._lost
        if ev is None:
            loop = asyncio.get_running_loop()
            ev = self._lost = asyncio.Event()

            def fire(err: LockError) -> None:
                try:
                    loop.call_soon_threadsafe(ev.set)
                except RuntimeError:
                    pass            # the loop is closed

            self._c.eng.txn_on_lost(self._c, fire)
        return ev

    @property
    def lost_error(self) -> Optional[LockError]:
        """The error the locks were lost with (None while they are not known lost)."""
        return self._c.lost

    def valid_for(self) -> float:
        """See :meth:`lockmgr.service.client.sync.Transaction.valid_for` (no round trip)."""
        return self._c.eng.valid_for(self._c)

    @property
    def id(self) -> int:
        return self._c.id

    @property
    def name(self) -> Optional[str]:
        return self._c.name

    @property
    def gtrid(self) -> Optional[Gtrid]:
        return self._c.gtrid

    @property
    def state(self) -> str:
        return self._c.state

    @property
    def prepared_at(self) -> Optional[float]:
        return self._c.prepared_at

    def __repr__(self) -> str:
        return f"<lockmgr.aio.Transaction id={self._c.id} {self._c.state}>"

    async def lock(self, resource: Resource, mode: int = Mode.X, *, timeout: Optional[float] = None,
                   nowait: bool = False) -> int:
        """See :meth:`lockmgr.service.client.sync.Transaction.lock`."""
        return await _drive(self._c, _g_lock(self._c, resource, mode, timeout, nowait))

    async def try_lock(self, resource: Resource, mode: int = Mode.X) -> bool:
        try:
            await self.lock(resource, mode, nowait=True)
        except LockNotAvailable:
            return False
        return True

    async def lock_many(self, items: Iterable[Tuple[Resource, int]], *, timeout: Optional[float] = None,
                        nowait: bool = False) -> List[int]:
        return await _drive(self._c, _g_lock_many(self._c, items, timeout, nowait))

    async def unlock(self, resource: Resource, *, wait: bool = True) -> None:
        """See :meth:`lockmgr.service.client.sync.Transaction.unlock` (``wait=False`` too)."""
        return await _drive(self._c, _g_unlock(self._c, resource, wait))

    async def held(self) -> Dict[Path, Mode]:
        return await _drive(self._c, _g_held(self._c))

    async def prepare(self) -> None:
        """See :meth:`lockmgr.service.client.sync.Transaction.prepare` (2PC, docs/2pc.md)."""
        return await _drive(self._c, _g_prepare(self._c))

    async def commit(self, *, wait: bool = True) -> None:
        """See :meth:`lockmgr.service.client.sync.Transaction.commit` (``wait=False`` too)."""
        return await _drive(self._c, _g_finish(self._c, True, wait))

    async def abort(self, *, wait: bool = True) -> None:
        """See :meth:`lockmgr.service.client.sync.Transaction.abort` (raises SessionExpired; and, for a
        prepared transaction, every failure and TransactionCommitted)."""
        if wait is not True:
            check_wait(wait)            # (before the try: bad input is not a failure to hide)
        prepared = self._c.state is PREPARED
        try:
            return await _drive(self._c, _g_finish(self._c, False, wait))
        except SessionExpired:
            raise
        except LockError:
            if prepared:
                raise
            return None

    async def __aenter__(self) -> "Transaction":
        return self

    async def __aexit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                        tb: Optional[TracebackType]) -> Literal[False]:
        if exc_type is None:
            if self._c.state is ACTIVE or self._c.state is PREPARED:
                await self.commit()
        else:
            try:
                await self.abort()
            except LockError:
                pass            # never hide the exception that is propagating
        return False


class _TxnCtx:
    """``async with client.transaction(...) as t``: begin on entry, commit or abort on exit."""

    def __init__(self, client: "Client", name: Optional[str], gtrid: Optional[Gtrid]) -> None:
        self._client = client
        self._args = (name, gtrid)
        self._t: Optional[Transaction] = None

    async def __aenter__(self) -> Transaction:
        name, gtrid = self._args
        self._t = self._client.begin(name, gtrid=gtrid)
        return self._t

    async def __aexit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                        tb: Optional[TracebackType]) -> Literal[False]:
        assert self._t is not None
        return await self._t.__aexit__(exc_type, exc, tb)


class Client:
    """An asyncio session with a cluster of lock shards. Use :func:`connect`."""

    def __init__(self, sync_client: _SyncClient) -> None:
        self._sync = sync_client
        self._eng = sync_client._eng
        self._relays: Dict[Any, Callable[[SessionState], None]] = {}
        self._default_timeout = sync_client._default_timeout
        self._cache = sync_client._cache

    @property
    def endpoints(self) -> List[str]:
        return self._sync.endpoints

    @property
    def session_id(self) -> int:
        return self._sync.session_id

    @property
    def partition_depth(self) -> Optional[int]:
        return self._sync.partition_depth

    @property
    def expired(self) -> bool:
        return self._sync.expired

    @property
    def state(self) -> SessionState:
        """See :attr:`lockmgr.service.client.sync.Client.state`."""
        return self._eng.state

    def add_listener(self, fn: Callable[[SessionState], Any]) -> None:
        """Call ``fn(state)`` on the event loop running now, at each change of the
        session's state (see :meth:`lockmgr.service.client.sync.Client.add_listener`);
        a coroutine function is run as a task. Remove it with :meth:`remove_listener`."""
        if not callable(fn):
            raise InvalidRequest(f"a listener must be callable; got {fn!r}")
        loop = asyncio.get_running_loop()

        def on_loop(state: SessionState) -> None:
            res = fn(state)
            if asyncio.iscoroutine(res):
                loop.create_task(res)

        def relay(state: SessionState) -> None:
            try:
                loop.call_soon_threadsafe(on_loop, state)
            except RuntimeError:
                pass            # the loop is closed

        self._relays[fn] = relay
        self._eng.add_listener(relay)

    def remove_listener(self, fn: Callable[[SessionState], Any]) -> None:
        relay = self._relays.pop(fn, None)
        if relay is None:
            raise InvalidRequest(f"{fn!r} is not a listener of this client")
        self._eng.remove_listener(relay)

    async def watch(self, resource: Resource) -> AsyncWatch:
        """See :meth:`lockmgr.service.client.sync.Client.watch`: ``async with await
        client.watch(r) as w: async for ev in w: ...``."""
        return await AsyncWatch(self, resource)._start()

    async def wait_free(self, resource: Resource, mode: int = Mode.X, timeout: Optional[float] = None) -> bool:
        """See :meth:`lockmgr.service.client.sync.Client.wait_free`."""
        return await async_wait_free(self, resource, mode, timeout)

    def begin(self, name: Optional[str] = None, *, gtrid: Optional[Gtrid] = None) -> Transaction:
        """Start a transaction (no round trip). After LOST the client opens a new
        session; the transaction's first call waits for it."""
        if gtrid is not None and type(gtrid) not in (str, bytes):
            raise InvalidRequest(f"gtrid must be None, str or bytes; got {type(gtrid).__name__}")
        eng = self._eng
        cache = self._cache if gtrid is None else None
        if eng.dead is None and not eng._hello_left:
            try:
                eng.check_session()
                core = _TxnCore(self, name, gtrid)
                if cache is not None:
                    cache.adopt(core)
                return Transaction(core)
            except SessionExpired:
                if eng.closed:
                    raise
        gen = eng.request_renew()
        core = _TxnCore(self, name, gtrid)
        core.gen = gen
        if cache is not None:
            cache.adopt(core)
        return Transaction(core)

    def cache_stats(self) -> Dict[str, int]:
        """See :meth:`lockmgr.service.client.sync.Client.cache_stats`."""
        return self._sync.cache_stats()

    def transaction(self, *, name: Optional[str] = None, gtrid: Optional[Gtrid] = None) -> _TxnCtx:
        """``async with client.transaction() as t:`` commits on normal exit, aborts on an exception."""
        return _TxnCtx(self, name, gtrid)

    async def _admin(self, typ: int) -> List[Any]:
        self._eng.check_session()
        res = await _call_many(self._eng, [(i, typ, [], 0.0) for i in range(self._eng.n)])
        for r in res:
            if isinstance(r, BaseException):
                raise r
        return res

    async def snapshot(self) -> List[LockInfo]:
        out: List[LockInfo] = []
        self._eng.check_session()
        cursors = {i: 0 for i in range(self._eng.n)}     # SNAPSHOT_PAGE, every shard at once
        while cursors:
            res = await _call_many(self._eng, [(i, wire.SNAPSHOT_PAGE, [c, 10_000], 0.0)
                                               for i, c in cursors.items()])
            for i, r in zip(list(cursors), res):
                if isinstance(r, BaseException):
                    raise r
                rows, cursors[i] = r
                if not cursors[i]:
                    del cursors[i]
                out.extend(LockInfo(tuple(p), t, _MODES[m], g) for p, t, m, g, _s in rows)
        return out

    async def wait_for_graph(self) -> Dict[int, Set[int]]:
        g: Dict[int, Set[int]] = {}
        for edges in await self._admin(wire.GRAPH):
            for k, v in edges:
                g.setdefault(k, set()).update(v)
        return g

    async def stats(self) -> List[Dict[str, Any]]:
        return await self._admin(wire.STATS)

    async def deadlocks(self) -> List[Dict[str, Any]]:
        """The shards' deadlock reports, oldest first (see Client.deadlocks)."""
        return merge_reports(await self._admin(wire.DEADLOCKS))
    # -- two-phase commit (docs/2pc.md); see lockmgr.service.client.sync.Client

    async def _drive_eng(self, gen):
        try:
            specs = next(gen)
            while True:
                specs = gen.send(await _call_many(self._eng, specs))
        except StopIteration as e:
            return e.value

    async def recover(self) -> List[Gtrid]:
        """See :meth:`lockmgr.service.client.sync.Client.recover`."""
        return [d["gtrid"] for d in await self._drive_eng(_g_indoubt(self._eng, False))]

    async def indoubt(self) -> List[Dict[str, Any]]:
        """See :meth:`lockmgr.service.client.sync.Client.indoubt`."""
        return await self._drive_eng(_g_indoubt(self._eng, True))

    async def resolve(self, gtrid: Gtrid, commit: bool) -> None:
        """See :meth:`lockmgr.service.client.sync.Client.resolve`."""
        return await self._drive_eng(_g_resolve(self._eng, gtrid, commit))

    async def close(self) -> None:
        """End the session (see :meth:`lockmgr.service.client.sync.Client.close`)."""
        await asyncio.get_running_loop().run_in_executor(None, self._sync.close)

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> Literal[False]:
        await self.close()
        return False


async def connect(endpoints: Optional[Endpoints] = None, *, session_ttl: float = 10.0,
                  partition_depth: Optional[int] = None,
                  request_timeout: float = 5.0, default_timeout: Optional[float] = None,
                  name: Optional[str] = None, curve_secret_file: Optional[str] = None,
                  curve_server_key: Any = None, etcd: Optional[str] = None,
                  cluster: Optional[str] = None, cache_locks: bool = False,
                  cache_max_entries: int = DEFAULT_MAX_ENTRIES, cache_max_idle: float = DEFAULT_MAX_IDLE) -> Client:
    """Open a session (see :func:`lockmgr.connect`: shard endpoints, replica sets, or
    ``etcd=`` and ``cluster=``; CURVE and lock caching options included); returns an
    asyncio :class:`Client`. With replica sets it follows each shard's primary across
    failovers as the sync client does (one engine and one ``Locator`` serve both;
    docs/replication.md)."""
    check_timeout(default_timeout)
    loop = asyncio.get_running_loop()
    sync = await loop.run_in_executor(None, lambda: _sync_connect(
        endpoints, session_ttl=session_ttl, partition_depth=partition_depth, request_timeout=request_timeout,
        default_timeout=default_timeout, name=name, curve_secret_file=curve_secret_file,
        curve_server_key=curve_server_key, etcd=etcd, cluster=cluster, cache_locks=cache_locks,
        cache_max_entries=cache_max_entries, cache_max_idle=cache_max_idle))
    return Client(sync)
