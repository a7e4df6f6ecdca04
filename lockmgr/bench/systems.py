"""The systems ``lockmgr bench`` drives, each used the way its users use it at its best.

Interface:
    OK, TIMEOUT, NOT_AVAILABLE, DEADLOCK             a transaction's outcome
    System                                           what the runner calls (below)
    LockmgrService(endpoints, partition_depth, ...)  the service: one Client per process,
                                                     shared by its threads (or asyncio tasks)
    LockmgrEmbedded(manager, ...)                    the embedded LockManager (threads)
    RedisLocks(port, ...)                            redis-py ``Lock``; a Lua all-or-nothing
                                                     script for multi-key transactions
    PostgresAdvisory(port, ...)                      psycopg advisory locks; ``pg_advisory_xact_lock``
                                                     over ``unnest`` for multi-row transactions

A System is created in the parent and used in each client process (forked):
``shared()`` once per client process, ``conn(shared)`` per client, ``txn(conn,
plan, gtrid, deadline)`` per transaction; the ``a*`` methods are the asyncio
forms. ``server_pids()`` and ``server_counters()`` are read by the parent.

Peers and modes: Redis locks have no shared mode (S is taken as exclusive);
PostgreSQL advisory locks have S (``*_shared``) and X. Neither has intention
locks or a lock-manager-side prepare, so the ``hier`` and ``2pc`` workloads
run on lockmgr only (workloads.PEER_WORKLOADS).
"""

import os
import time
from typing import Any, Dict, List, Optional, Tuple

from ..errors import DeadlockDetected, LockNotAvailable, LockTimeout
from ..modes import Mode
from .workloads import Plan

__all__ = ["OK", "TIMEOUT", "NOT_AVAILABLE", "DEADLOCK", "OUTCOMES", "System", "LockmgrService",
           "LockmgrEmbedded", "RedisLocks", "PostgresAdvisory"]

OK, TIMEOUT, NOT_AVAILABLE, DEADLOCK = 0, 1, 2, 3
OUTCOMES = ("ok", "timeouts", "not_available", "deadlocks")


class System:
    """Base: a lock system under test (see the module docstring)."""
    name = "?"
    models: Tuple[str, ...] = ("threads", "asyncio", "processes")

    def __init__(self, *, timeout: Optional[float] = None, nowait: bool = False,
                 release_wait: bool = True) -> None:
        self.timeout = timeout
        self.nowait = nowait
        self.release_wait = release_wait     # lockmgr: commit/abort(wait=...); the peers ignore it

    def describe(self) -> str:
        return self.name

    def server_pids(self) -> List[Optional[int]]:
        return []

    def server_counters(self) -> Optional[Dict[str, int]]:
        """waits, escalations, deadlocks, timeouts as the server counts them (None: it does not)."""
        return None

    def shared(self) -> Any:
        return None

    def conn(self, shared: Any) -> Any:
        return shared

    def txn(self, conn: Any, plan: Plan, gtrid: str, deadline: float) -> int:
        raise NotImplementedError

    def close(self, conn: Any) -> None:
        pass

    def close_shared(self, shared: Any) -> None:
        pass

    async def ashared(self) -> Any:
        return None

    async def aconn(self, shared: Any) -> Any:
        return shared

    async def atxn(self, conn: Any, plan: Plan, gtrid: str, deadline: float) -> int:
        raise NotImplementedError

    async def aclose(self, conn: Any) -> None:
        pass

    async def aclose_shared(self, shared: Any) -> None:
        pass


# ------------------------------------------------------------------ lockmgr

class _Lockmgr(System):
    name = "lockmgr"

    def txn(self, conn: Any, plan: Plan, gtrid: str, deadline: float) -> int:
        t = conn.begin(gtrid=gtrid) if plan.twopc else conn.begin()
        try:
            if plan.one_by_one:
                for path, mode in plan.items:
                    t.lock(path, mode, timeout=self.timeout, nowait=self.nowait)
            else:
                t.lock_many(plan.items, timeout=self.timeout, nowait=self.nowait)
            if plan.twopc:
                t.prepare()
            t.commit(wait=self.release_wait)
            return OK
        except DeadlockDetected:
            return DEADLOCK             # (the victim is aborted already)
        except LockNotAvailable:
            t.abort(wait=self.release_wait)
            return NOT_AVAILABLE
        except LockTimeout:
            t.abort(wait=self.release_wait)
            return TIMEOUT

    async def atxn(self, conn: Any, plan: Plan, gtrid: str, deadline: float) -> int:
        t = conn.begin(gtrid=gtrid) if plan.twopc else conn.begin()
        try:
            if plan.one_by_one:
                for path, mode in plan.items:
                    await t.lock(path, mode, timeout=self.timeout, nowait=self.nowait)
            else:
                await t.lock_many(plan.items, timeout=self.timeout, nowait=self.nowait)
            if plan.twopc:
                await t.prepare()
            await t.commit(wait=self.release_wait)
            return OK
        except DeadlockDetected:
            return DEADLOCK
        except LockNotAvailable:
            await t.abort(wait=self.release_wait)
            return NOT_AVAILABLE
        except LockTimeout:
            await t.abort(wait=self.release_wait)
            return TIMEOUT


class LockmgrService(_Lockmgr):
    """The lock service at ``endpoints``; ``pids``: the shard processes (for CPU), when local."""

    def __init__(self, endpoints: List[str], *, partition_depth: int = 2, pids: Optional[List[Optional[int]]] = None,
                 label: str = "", **kw: Any) -> None:
        super().__init__(**kw)
        self.endpoints = list(endpoints)
        self.partition_depth = partition_depth
        self._pids = list(pids or [])
        self.label = label

    def describe(self) -> str:
        return f"lockmgr service, {len(self.endpoints)} shard(s){self.label}"

    def server_pids(self) -> List[Optional[int]]:
        return self._pids

    def server_counters(self) -> Optional[Dict[str, int]]:
        from ..service import wire
        from ..service.admin import admin_query
        out = dict.fromkeys(("waits", "escalations", "deadlocks", "timeouts"), 0)
        for s in admin_query(self.endpoints, wire.STATS, 5.0):
            if isinstance(s, Exception):
                raise s
            out["waits"] += s.get("waited", 0)
            out["escalations"] += s.get("escalations", 0)
            out["deadlocks"] += s.get("deadlocks", 0) + s.get("deadlocks_found", 0)
            out["timeouts"] += s.get("timeouts", 0)
        return out

    def shared(self) -> Any:
        from ..service.client.sync import connect
        return connect(self.endpoints, partition_depth=self.partition_depth, name=f"bench-{os.getpid()}")

    def close_shared(self, shared: Any) -> None:
        shared.close()

    async def ashared(self) -> Any:
        from ..service.client.aio import connect
        return await connect(self.endpoints, partition_depth=self.partition_depth, name=f"bench-aio-{os.getpid()}")

    async def aclose_shared(self, shared: Any) -> None:
        await shared.close()


class LockmgrEmbedded(_Lockmgr):
    """The embedded LockManager of this process (threads only: it is in-process)."""
    name = "lockmgr"
    models = ("threads",)

    def __init__(self, manager: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.manager = manager

    def describe(self) -> str:
        from .._core import BACKEND
        return f"lockmgr embedded ({BACKEND} table)"

    def server_counters(self) -> Optional[Dict[str, int]]:
        s = self.manager.stats()
        return {"waits": s["waited"], "escalations": s["escalations"], "deadlocks": s["deadlocks"],
                "timeouts": s["timeouts"]}

    def shared(self) -> Any:
        return self.manager


# -------------------------------------------------------------------- Redis

# all-or-nothing: take every key or none (no partial holds, so no deadlocks);
# a client retries until its timeout, the way multi-key Redis locking is done
_ACQUIRE_ALL = """
for i, k in ipairs(KEYS) do
  if redis.call('exists', k) == 1 then return 0 end
end
for i, k in ipairs(KEYS) do
  redis.call('set', k, ARGV[1], 'PX', ARGV[2])
end
return 1
"""
_RELEASE_ALL = """
local n = 0
for i, k in ipairs(KEYS) do
  if redis.call('get', k) == ARGV[1] then redis.call('del', k); n = n + 1 end
end
return n
"""
LEASE_MS = 30_000         # the locks' expiry (a crashed client's locks go after it)
RETRY_SLEEP = 0.001       # between attempts while a key is held (redis-py's Lock default is 0.1 s)


class _ServerSystem(System):
    """A system served by a server process on 127.0.0.1:``port`` (``pids``: its
    processes, for the CPU they use)."""

    def __init__(self, port: int, *, pids: Optional[List[Optional[int]]] = None, label: str = "",
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.port = port
        self._pids = list(pids or [])
        self.label = label

    def describe(self) -> str:
        return self.label or f"{self.name} on 127.0.0.1:{self.port}"

    def server_pids(self) -> List[Optional[int]]:
        return self._pids


def _redis_key(path: tuple) -> str:
    return "lock:" + ":".join(map(str, path))


class RedisLocks(_ServerSystem):
    name = "redis"

    def _wait_limit(self, deadline: float) -> float:
        return 0.0 if self.nowait else (time.monotonic() + self.timeout if self.timeout is not None
                                        else deadline + 5.0)

    def shared(self) -> Any:
        import redis
        r = redis.Redis(host="127.0.0.1", port=self.port)   # its pool gives each thread a connection
        return (r, r.register_script(_ACQUIRE_ALL), r.register_script(_RELEASE_ALL))

    def close_shared(self, shared: Any) -> None:
        shared[0].close()

    def _lock_kw(self, deadline: float) -> Dict[str, Any]:
        """redis-py Lock's arguments (the sync and asyncio clients take the same)."""
        return dict(timeout=LEASE_MS / 1000, sleep=RETRY_SLEEP, blocking=not self.nowait,
                    blocking_timeout=self.timeout if self.timeout is not None
                    else max(0.001, deadline + 5.0 - time.monotonic()))

    def txn(self, conn: Any, plan: Plan, gtrid: str, deadline: float) -> int:
        r, acquire_all, release_all = conn
        if len(plan.items) == 1:
            lk = r.lock(_redis_key(plan.items[0][0]), **self._lock_kw(deadline))
            if not lk.acquire():
                return NOT_AVAILABLE if self.nowait else TIMEOUT
            lk.release()
            return OK
        keys = [_redis_key(p) for p, _ in plan.items]
        token = os.urandom(8).hex()
        limit = self._wait_limit(deadline)
        for _ in range(10_000_000):
            if acquire_all(keys=keys, args=[token, LEASE_MS]):
                release_all(keys=keys, args=[token])
                return OK
            if time.monotonic() >= limit:
                return NOT_AVAILABLE if self.nowait else TIMEOUT
            time.sleep(RETRY_SLEEP)
        return TIMEOUT

    async def ashared(self) -> Any:
        import redis.asyncio
        r = redis.asyncio.Redis(host="127.0.0.1", port=self.port)
        return (r, r.register_script(_ACQUIRE_ALL), r.register_script(_RELEASE_ALL))

    async def aclose_shared(self, shared: Any) -> None:
        await shared[0].aclose()

    async def atxn(self, conn: Any, plan: Plan, gtrid: str, deadline: float) -> int:
        import asyncio
        r, acquire_all, release_all = conn
        if len(plan.items) == 1:
            lk = r.lock(_redis_key(plan.items[0][0]), **self._lock_kw(deadline))
            if not await lk.acquire():
                return NOT_AVAILABLE if self.nowait else TIMEOUT
            await lk.release()
            return OK
        keys = [_redis_key(p) for p, _ in plan.items]
        token = os.urandom(8).hex()
        limit = self._wait_limit(deadline)
        for _ in range(10_000_000):
            if await acquire_all(keys=keys, args=[token, LEASE_MS]):
                await release_all(keys=keys, args=[token])
                return OK
            if time.monotonic() >= limit:
                return NOT_AVAILABLE if self.nowait else TIMEOUT
            await asyncio.sleep(RETRY_SLEEP)
        return TIMEOUT


# --------------------------------------------------------------- PostgreSQL

def _pg_key(path: tuple) -> int:
    """("db", "t3", 42) -> 3 << 32 | 42: one bigint advisory key per row."""
    table = int(str(path[1])[1:]) if len(path) > 1 else 0
    row = int(path[2]) if len(path) > 2 and isinstance(path[2], int) else 0
    return (table << 32) | row


class PostgresAdvisory(_ServerSystem):
    name = "postgres"

    def _connect_kw(self) -> Dict[str, Any]:
        opts = f"-c lock_timeout={int(self.timeout * 1000)}" if self.timeout is not None else ""
        return dict(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", options=opts)

    @staticmethod
    def _single_sql(mode: int, nowait: bool) -> "tuple[str, str]":
        shared = "_shared" if mode in (Mode.S, Mode.IS) else ""
        fn = "pg_try_advisory_lock" if nowait else "pg_advisory_lock"
        return f"SELECT {fn}{shared}(%s)", f"SELECT pg_advisory_unlock{shared}(%s)"

    def _many_sql(self) -> str:
        if self.nowait:
            return "SELECT bool_and(pg_try_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k"
        return "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k"

    def conn(self, shared: Any) -> Any:
        import psycopg
        return (psycopg.connect(autocommit=True, **self._connect_kw()),      # one-row transactions
                psycopg.connect(autocommit=False, **self._connect_kw()))     # multi-row (xact locks)

    def close(self, conn: Any) -> None:
        for c in conn:
            c.close()

    def txn(self, conn: Any, plan: Plan, gtrid: str, deadline: float) -> int:
        from psycopg import errors
        auto, tx = conn
        try:
            if len(plan.items) == 1:
                path, mode = plan.items[0]
                lock_sql, unlock_sql = self._single_sql(mode, self.nowait)
                key = _pg_key(path)
                got = auto.execute(lock_sql, (key,)).fetchone()
                if self.nowait and not (got and got[0]):
                    return NOT_AVAILABLE
                auto.execute(unlock_sql, (key,))
                return OK
            row = tx.execute(self._many_sql(), ([_pg_key(p) for p, _ in plan.items],)).fetchone()
            tx.commit()          # releases the xact locks
            return NOT_AVAILABLE if self.nowait and not (row and row[0]) else OK
        except errors.DeadlockDetected:
            tx.rollback()
            return DEADLOCK
        except errors.LockNotAvailable:
            tx.rollback()
            return TIMEOUT

    async def aconn(self, shared: Any) -> Any:
        import psycopg
        return (await psycopg.AsyncConnection.connect(autocommit=True, **self._connect_kw()),
                await psycopg.AsyncConnection.connect(autocommit=False, **self._connect_kw()))

    async def aclose(self, conn: Any) -> None:
        for c in conn:
            await c.close()

    async def atxn(self, conn: Any, plan: Plan, gtrid: str, deadline: float) -> int:
        from psycopg import errors
        auto, tx = conn
        try:
            if len(plan.items) == 1:
                path, mode = plan.items[0]
                lock_sql, unlock_sql = self._single_sql(mode, self.nowait)
                key = _pg_key(path)
                got = await (await auto.execute(lock_sql, (key,))).fetchone()
                if self.nowait and not (got and got[0]):
                    return NOT_AVAILABLE
                await auto.execute(unlock_sql, (key,))
                return OK
            cur = await tx.execute(self._many_sql(), ([_pg_key(p) for p, _ in plan.items],))
            row = await cur.fetchone()
            await tx.commit()
            return NOT_AVAILABLE if self.nowait and not (row and row[0]) else OK
        except errors.DeadlockDetected:
            await tx.rollback()
            return DEADLOCK
        except errors.LockNotAvailable:
            await tx.rollback()
            return TIMEOUT


