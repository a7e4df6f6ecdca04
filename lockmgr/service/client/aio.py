"""The asyncio client of the lock service.

Interface:
    await connect(endpoints, *, session_ttl=10.0, partition_depth=None,
                  request_timeout=5.0, default_timeout=None, name=None,
                  cache_locks=False, cache_max_entries=10_000, cache_max_idle=30.0) -> Client
    Client
        .begin(name=None, *, gtrid=None) -> Transaction     (no round trip)
        .transaction(**kw)      ``async with``: commit / abort
        await .close(), ``async with client``
        await .snapshot(), await .wait_for_graph(), await .stats(), await .deadlocks()
        .endpoints, .partition_depth, .session_id, .expired
        await .recover(), await .indoubt(), await .resolve(gtrid, commit)   (2PC)
    Transaction: the sync Transaction's methods as coroutines
        await .lock(), .try_lock(), .lock_many(), .unlock(), .held(), .prepare(), .commit(), .abort()
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
from typing import Any, Dict, Iterable, List, Literal, Optional, Set, Tuple, Type

from .. import wire
from ...rules import Gtrid, LockInfo, check_timeout, check_wait
from ...errors import InvalidRequest, LockError, LockNotAvailable, SessionExpired, ShardUnavailable
from ...modes import Mode
from ...paths import Path, Resource
from ..reports import merge_reports
from .engine import _Call
from .ops import (ACTIVE, PREPARED, _MODES, _TxnCore, _g_finish, _g_held, _g_indoubt, _g_lock, _g_lock_many,
                  _g_prepare, _g_resolve, _g_unlock)
from .sync import Client as _SyncClient, Endpoints
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


async def _drive(core, gen):
    eng = core.eng
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

    __slots__ = ("_c",)

    def __init__(self, core: "_TxnCore") -> None:
        self._c = core

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

    def begin(self, name: Optional[str] = None, *, gtrid: Optional[Gtrid] = None) -> Transaction:
        """Start a transaction (no round trip)."""
        if gtrid is not None and type(gtrid) not in (str, bytes):
            raise InvalidRequest(f"gtrid must be None, str or bytes; got {type(gtrid).__name__}")
        self._eng.check_session()
        core = _TxnCore(self, name, gtrid)
        if self._cache is not None and gtrid is None:
            self._cache.adopt(core)
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


async def connect(endpoints: Endpoints, *, session_ttl: float = 10.0, partition_depth: Optional[int] = None,
                  request_timeout: float = 5.0, default_timeout: Optional[float] = None,
                  name: Optional[str] = None, curve_secret_file: Optional[str] = None,
                  curve_server_key: Any = None, cache_locks: bool = False,
                  cache_max_entries: int = DEFAULT_MAX_ENTRIES, cache_max_idle: float = DEFAULT_MAX_IDLE) -> Client:
    """Open a session (see :func:`lockmgr.connect`, CURVE and lock caching options included);
    returns an asyncio :class:`Client`."""
    check_timeout(default_timeout)
    loop = asyncio.get_running_loop()
    sync = await loop.run_in_executor(None, lambda: _SyncClient(
        endpoints, session_ttl=session_ttl, partition_depth=partition_depth, request_timeout=request_timeout,
        default_timeout=default_timeout, name=name, curve_secret_file=curve_secret_file,
        curve_server_key=curve_server_key, cache_locks=cache_locks, cache_max_entries=cache_max_entries,
        cache_max_idle=cache_max_idle))
    return Client(sync)
