"""The synchronous client of the lock service.

Interface:
    connect(endpoints, *, session_ttl=10.0, partition_depth=None,
            request_timeout=5.0, default_timeout=None, name=None,
            cache_locks=False, cache_max_entries=10_000, cache_max_idle=30.0) -> Client
    Client
        .begin(name=None, *, gtrid=None) -> Transaction
        .transaction(**kw)       context manager: commit / abort
        .close(), context-manager use
        .cache_stats()           the lock cache (cache_locks=True; docs/service.md "Lock caching")
        .snapshot(), .wait_for_graph(), .stats(), .deadlocks(), .session_id, .expired
        .endpoints, .partition_depth
        .recover(), .indoubt(), .resolve(gtrid, commit)      2PC (docs/2pc.md)
        .add_listener(fn), .remove_listener(fn), .state, .renewals     session states (notify.py)
        .watch(resource) -> Watch, .wait_free(resource, mode, timeout)    (watch.py)
        .leadership(name) -> recipes.Leadership
    Transaction  (same methods, semantics and exceptions as lockmgr.Transaction)
        .lock(), .try_lock(), .lock_many(), .unlock(), .held(), .prepare(), .commit(), .abort()
        .on_lost(fn), .valid_for()
    admin_query(endpoints, typ, timeout=2.0)    session-less PING/SNAPSHOT/GRAPH/STATS/INDOUBT/DEADLOCKS

A Client is one ``_Engine`` (engine.py: the sockets, shared by every thread
and task, and the session); its methods run the transaction logic of ops.py
with blocking waits (``_drive``). Design: docs/service.md. Protocol:
docs/protocol.md.
"""

import logging
from contextlib import contextmanager
from types import TracebackType
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Literal, Optional, Sequence, Set,
                    Tuple, Type, Union)

import zmq

from .. import wire
from ...rules import Gtrid, LockInfo, check_timeout, check_wait
from ...errors import InvalidRequest, LockError, LockNotAvailable, SessionExpired, ShardUnavailable
from ...modes import Mode
from ...paths import Path, Resource
from ..reports import merge_reports
from ..admin import admin_query  # noqa: F401  (part of this module's API)
from .engine import _Engine
from .notify import SessionState
from .watch import Watch, wait_free
from .cache import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_IDLE, LockCache
from .ops import (ACTIVE, PREPARED, _MODES, _TxnCore, _drive, _g_finish, _g_held, _g_indoubt, _g_lock,
                  _g_lock_many, _g_prepare, _g_resolve, _g_unlock)

if TYPE_CHECKING:
    from .recipes import Leadership

SNAPSHOT_PAGE_ROWS = 10_000     # rows asked per SNAPSHOT_PAGE (a shard's answer_rows quota caps it)
_log = logging.getLogger("lockmgr")

__all__ = ["connect", "Client", "Transaction", "admin_query", "SessionExpired", "ShardUnavailable", "Endpoints"]

Endpoints = Union[str, Sequence[str]]   # tcp://host:port / ipc://path strings in shard order, or one "a,b,c"


class Transaction:
    """A transaction of a :class:`Client`: the methods, semantics and exceptions
    of :class:`lockmgr.Transaction`, plus :meth:`lock_many`.

    A transaction is used by one thread at a time (as in the embedded API,
    :meth:`abort` may come from another thread and wakes a waiting lock).
    """

    __slots__ = ("_c",)

    def __init__(self, core: "_TxnCore") -> None:
        self._c = core

    @property
    def id(self) -> int:
        """The transaction id (unique 64-bit; larger means younger). With lock
        caching it is the id of the carrier the transaction adopted (what the
        shards see): transactions of the client that follow one another may
        share it, concurrent ones never do (docs/service.md, "Lock caching")."""
        return self._c.id

    @property
    def name(self) -> Optional[str]:
        return self._c.name

    @property
    def gtrid(self) -> Optional[Gtrid]:
        """The global transaction id given to ``begin`` (for 2PC)."""
        return self._c.gtrid

    @property
    def state(self) -> str:
        """'active', 'prepared', 'committed' or 'aborted'."""
        return self._c.state

    @property
    def prepared_at(self) -> Optional[float]:
        """Wall-clock time (``time.time()``) when :meth:`prepare` succeeded, else None."""
        return self._c.prepared_at

    def __repr__(self) -> str:
        return f"<lockmgr.service.client.sync.Transaction id={self._c.id} name={self._c.name!r} {self._c.state}>"

    def on_lost(self, fn: Callable[[LockError], Any]) -> None:
        """Call ``fn(error)`` as soon as this client knows the transaction's locks are
        gone while it is active: its session expired (``SessionExpired``: the lease ran
        out by this client's clock, or a shard said so), a shard restarted and the
        locks there could not be reclaimed (``TransactionAborted``), or it was chosen
        as a deadlock victim on a shard where it was not waiting (``DeadlockDetected``,
        pushed by that shard). ``fn`` runs once, on the client's notification thread;
        at once (on that thread) if the locks are already lost; never after a commit
        or abort. Its next call raises the error as before: this only tells sooner.
        """
        self._c.eng.txn_on_lost(self._c, fn)

    def valid_for(self) -> float:
        """Seconds, by this client's monotonic clock, for which the transaction's locks
        are certainly still held: the session's lease left on the shard that renewed it
        longest ago (less the clock-drift allowance) minus a margin of a tenth of the
        TTL; 0.0 once they are lost or may be (a shard restarting, the session gone) or
        the transaction is finished; ``inf`` when it is prepared (its locks are durable
        until decided). Check it before an irreversible write; the fencing token stays
        the real guard. No round trip."""
        return self._c.eng.valid_for(self._c)

    def lock(self, resource: Resource, mode: int = Mode.X, *, timeout: Optional[float] = None,
             nowait: bool = False) -> int:
        """Lock ``resource`` in ``mode`` (intention locks on its ancestors are
        taken by the owning shard). Returns the fencing token.

        One round trip when the path is at least ``partition_depth`` long (or
        the mode is IS/IX); an S/SIX/X lock on a node above the partition depth
        is taken on every shard in shard order. Raises LockTimeout,
        LockNotAvailable, DeadlockDetected (aborted everywhere),
        TransactionAborted, InvalidRequest, SessionExpired, ShardUnavailable.
        """
        return _drive(self._c.eng, _g_lock(self._c, resource, mode, timeout, nowait))

    def try_lock(self, resource: Resource, mode: int = Mode.X) -> bool:
        """Lock without waiting: True if granted, False if it would wait."""
        try:
            self.lock(resource, mode, nowait=True)
        except LockNotAvailable:
            return False
        return True

    def lock_many(self, items: Iterable[Tuple[Resource, int]], *, timeout: Optional[float] = None,
                  nowait: bool = False) -> List[int]:
        """Lock several ``(resource, mode)`` pairs; returns their tokens in order.

        The requests for one shard go in one message (the shard takes them in
        the given order); different shards work in parallel; a strong lock on a
        node above the partition depth goes on its own, after the items before
        it. A call that succeeds leaves what successive ``lock()`` calls would.
        Not atomic: on an error, the locks granted before it are kept, and items
        after it that live on other shards may be granted too.
        """
        return _drive(self._c.eng, _g_lock_many(self._c, items, timeout, nowait))

    def unlock(self, resource: Resource, *, wait: bool = True) -> None:
        """Release one node early (refused while a descendant is held).

        ``wait=False``: send the unlock and return at once (it leaves with this
        client's next frame to the shard, or within a few ms); a failure (e.g.
        not held) is raised by the next call on this client."""
        return _drive(self._c.eng, _g_unlock(self._c, resource, wait))

    def held(self) -> Dict[Path, Mode]:
        """Every node held, with its mode (merged across shards: the supremum)."""
        return _drive(self._c.eng, _g_held(self._c))

    def prepare(self) -> None:
        """Phase one of two-phase commit (needs ``begin(gtrid=...)``).

        Every shard where the transaction holds locks appends them, with their
        fencing tokens, to its prepare log and fsyncs before answering (many
        prepares share one fsync). Once this returns the locks survive
        anything — this client's crash, session expiry, a shard restart —
        until :meth:`commit`/:meth:`abort` here or ``Client.resolve(gtrid,
        commit)`` from any client; new lock requests are refused
        (InvalidRequest). If any shard fails to prepare, the transaction is
        aborted everywhere (it votes no) and the error is raised; a shard that
        did not answer may still hold it in doubt (``Client.recover()``).
        """
        return _drive(self._c.eng, _g_prepare(self._c))

    def commit(self, *, wait: bool = True) -> None:
        """Release every lock and finish. Raises TransactionAborted if already finished.

        For a prepared transaction the decision is logged durably on every
        shard before its locks there are released; on an error (a shard down)
        the transaction stays prepared (in doubt): call commit() again or
        ``Client.resolve(gtrid, True)``. If another client aborted it meanwhile
        (``Client.resolve(gtrid, False)``), TransactionAborted says so and its
        state is 'aborted'.

        ``wait=False``: the transaction is committed here at once and the
        releases are sent without waiting for the shards' answers: they leave
        with this client's next frame to each shard (so its later requests find
        the locks released), or within a few ms. A late release can only keep a
        lock longer, never shorter; a failure is raised by the next call on this
        client; ``close()`` sends what is queued first. A prepared transaction's
        decision is always awaited (it must be durable)."""
        return _drive(self._c.eng, _g_finish(self._c, True, wait))

    def abort(self, *, wait: bool = True) -> None:
        """Release every lock and finish as aborted. Idempotent: a no-op on a
        finished transaction. Raises SessionExpired if the session has expired
        (the shards release the locks themselves then); other failures to reach
        a shard are not raised (the lease releases what could not be).

        A prepared transaction is different: its locks outlive the session, so
        every failure is raised (it stays prepared: retry, or ``Client.resolve``),
        and TransactionCommitted if another client committed it meanwhile
        (``Client.resolve(gtrid, True)``; its state is then 'committed').

        ``wait=False``: as for :meth:`commit`."""
        if wait is not True:
            check_wait(wait)            # (before the try: bad input is not a failure to hide)
        prepared = self._c.state is PREPARED
        try:
            return _drive(self._c.eng, _g_finish(self._c, False, wait))
        except SessionExpired:
            raise
        except LockError:
            if prepared:
                raise
            return None

    def _abort_quietly(self) -> None:
        try:
            self.abort()
        except LockError:
            pass

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> Literal[False]:
        if exc_type is None:
            if self._c.state is ACTIVE or self._c.state is PREPARED:
                self.commit()
        else:
            self._abort_quietly()   # never hide the exception that is propagating
        return False


class Client:
    """A session with a cluster of lock shards. Thread-safe; one connection per
    shard shared (pipelined) by every transaction of every thread.

    Use :func:`connect` (or ``LocalCluster.connect()``).
    """

    def __init__(self, endpoints: Endpoints, *, session_ttl: float = 10.0, partition_depth: Optional[int] = None,
                 request_timeout: float = 5.0, default_timeout: Optional[float] = None,
                 name: Optional[str] = None, curve_secret_file: Optional[str] = None,
                 curve_server_key: Any = None, cache_locks: bool = False,
                 cache_max_entries: int = DEFAULT_MAX_ENTRIES, cache_max_idle: float = DEFAULT_MAX_IDLE) -> None:
        self._default_timeout = check_timeout(default_timeout)
        curve = _curve(curve_secret_file, curve_server_key)
        if type(cache_locks) is not bool:
            raise InvalidRequest(f"cache_locks must be True or False; got {cache_locks!r}")
        if cache_locks:
            _check_cache_bounds(cache_max_entries, cache_max_idle)
        self._cache: Optional[LockCache] = None
        try:
            self._eng = _Engine(endpoints, session_ttl, partition_depth, request_timeout, name, curve,
                                cache_locks)
        except zmq.ZMQError as e:
            raise ShardUnavailable(f"cannot connect: {e}") from None
        if cache_locks:
            self._cache = LockCache(self, cache_max_entries, cache_max_idle)

    @property
    def endpoints(self) -> List[str]:
        return list(self._eng.endpoints)

    @property
    def session_id(self) -> int:
        return self._eng.session

    @property
    def partition_depth(self) -> Optional[int]:
        return self._eng.partition_depth

    @property
    def expired(self) -> bool:
        """True once the session is over (lease ran out, or closed) and, after LOST, until
        the client has opened a new one (``begin``, or at once with listeners/watches)."""
        return self._eng.lease_over() or self._eng.closed

    @property
    def state(self) -> SessionState:
        """The session's state as the listeners were last told (CONNECTED, SUSPENDED,
        LOST; RECONNECTED is reported as CONNECTED)."""
        return self._eng.state

    @property
    def renewals(self) -> int:
        """New sessions this client opened after losing one (LOST)."""
        return self._eng.renewals

    def add_listener(self, fn: Callable[[SessionState], Any]) -> None:
        """Call ``fn(state)`` at each change of the session's state: CONNECTED (a
        session is open; again after LOST, once the new one is), SUSPENDED (a shard
        has not answered for half the TTL, or restarted and the locks are being
        reclaimed: the lease is running out), RECONNECTED (the same session is healthy
        again, every lock still held) and LOST (the session expired: every lock is
        gone). Calls come in order on the client's notification thread, never with
        the client's lock held; ``fn`` may call the client. While a listener is
        registered the client opens a new session at once after LOST (otherwise at
        the next ``begin``). kazoo's ``add_listener`` and its KazooState, with
        RECONNECTED spelt out."""
        self._eng.add_listener(fn)

    def remove_listener(self, fn: Callable[[SessionState], Any]) -> None:
        """Stop calling ``fn`` (InvalidRequest if it is not a listener)."""
        self._eng.remove_listener(fn)

    def watch(self, resource: Resource) -> "Watch":
        """Watch a node: an iterator of :class:`~lockmgr.service.client.watch.WatchEvent`
        (INITIAL, then GRANTED, RELEASED, MODE, WAITERS as holders and waiters
        change; RESET when it had to be set again and changes may have been missed),
        pushed by the shard, never polled. One WATCH message per shard the node lives
        on to set up (one, or every shard above the partition depth), one UNWATCH
        each to cancel: ``close()`` it or use ``with``. A shard bounds the watches of
        a session (QuotaExceeded naming ``watches_per_session``). docs/service.md
        ("Watches")."""
        return Watch(self, resource)

    def wait_free(self, resource: Resource, mode: int = Mode.X, timeout: Optional[float] = None) -> bool:
        """Block until ``mode`` could be granted on ``resource`` -- no holder in a
        conflicting mode and no request queued there -- without queueing for it
        (a watch, set and cancelled: two messages per shard). True then; False if
        ``timeout`` seconds passed first. Only the node itself is looked at (not
        the locks of its ancestors), and another client may take it first: lock it
        to be sure."""
        return wait_free(self, resource, mode, timeout)

    def leadership(self, name: Resource, **kw: Any) -> "Leadership":
        """``with client.leadership("jobs/compactor") as lead:`` -- see
        :class:`lockmgr.recipes.Leadership` (leader election)."""
        from .recipes import Leadership     # (the recipes use only this API; imported on first use)
        return Leadership(self, name, **kw)

    def begin(self, name: Optional[str] = None, *, gtrid: Optional[Gtrid] = None) -> Transaction:
        """Start a transaction (no round trip). Ids increase in begin order.

        After the session was lost (LOST), this opens a new one first (waiting up
        to the request timeout for every shard's answer: ShardUnavailable if one
        does not); transactions of the old session keep raising SessionExpired."""
        if gtrid is not None and type(gtrid) not in (str, bytes):
            raise InvalidRequest(f"gtrid must be None, str or bytes; got {type(gtrid).__name__}")
        self._eng.begin_session()
        core = _TxnCore(self, name, gtrid)
        if self._cache is not None and gtrid is None:
            self._cache.adopt(core)
        return Transaction(core)

    def cache_stats(self) -> Dict[str, int]:
        """The lock cache of this client (``connect(cache_locks=True)``): ``entries``
        (locks cached), ``carriers`` (shard-side transactions holding them),
        ``idle`` (carriers no transaction uses), ``hits`` (locks granted from the
        cache, no message), ``misses``, ``revokes`` (callbacks received),
        ``giveups`` (CACHE_GIVEUP sent), ``evictions`` (given up for the bounds).
        All zero without caching. See docs/service.md ("Lock caching")."""
        if self._cache is None:
            return dict.fromkeys(("entries", "carriers", "idle", "hits", "misses", "revokes", "giveups",
                                  "evictions"), 0)
        return self._cache.stats()

    @contextmanager
    def transaction(self, *, name: Optional[str] = None, gtrid: Optional[Gtrid] = None) -> Iterator[Transaction]:
        """``with client.transaction() as t:`` commits on normal exit, aborts on an exception."""
        t = self.begin(name, gtrid=gtrid)
        with t:
            yield t

    def _admin(self, typ: int) -> List[Any]:
        self._eng.begin_session()
        res = self._eng.call_many([(i, typ, [], 0.0) for i in range(self._eng.n)])
        for r in res:
            if isinstance(r, BaseException):
                raise r
        return res

    def snapshot(self) -> List[LockInfo]:
        """Every request on every shard: a list of LockInfo (a node above the
        partition depth may appear once per shard)."""
        out: List[LockInfo] = []
        self._eng.begin_session()
        cursors = {i: 0 for i in range(self._eng.n)}     # SNAPSHOT_PAGE, every shard at once
        while cursors:
            res = self._eng.call_many([(i, wire.SNAPSHOT_PAGE, [c, SNAPSHOT_PAGE_ROWS], 0.0)
                                       for i, c in cursors.items()])
            for i, r in zip(list(cursors), res):
                if isinstance(r, BaseException):
                    raise r
                rows, cursors[i] = r
                if not cursors[i]:
                    del cursors[i]
                out.extend(LockInfo(tuple(p), t, _MODES[m], g) for p, t, m, g, _s in rows)
        return out

    def wait_for_graph(self) -> Dict[int, Set[int]]:
        """``{waiting txn: {txns it waits for}}``, the union over shards."""
        g: Dict[int, Set[int]] = {}
        for edges in self._admin(wire.GRAPH):
            for k, v in edges:
                g.setdefault(k, set()).update(v)
        return g

    def stats(self) -> List[Dict[str, Any]]:
        """One dict of counters per shard."""
        return self._admin(wire.STATS)

    def deadlocks(self) -> List[Dict[str, Any]]:
        """The deadlock reports kept by the shards (a bounded ring on each), oldest
        first: dicts with ``id``, ``kind`` ('distributed' or 'local'), ``detected_at``
        (wall time), ``detection_ms``, ``cycle``, ``victim`` and ``members`` (per
        transaction: the resource and mode it waited for, its blocker and what the
        blocker held or queued for there). See docs/probes.md."""
        return merge_reports(self._admin(wire.DEADLOCKS))
    # -- two-phase commit (docs/2pc.md)

    def recover(self) -> List[Gtrid]:
        """The gtrids of the prepared transactions in doubt on any shard, oldest
        first (what a restarted 2PC coordinator calls). Includes a transaction
        prepared on only some of its shards (see :meth:`indoubt`, ``complete``)."""
        return [d["gtrid"] for d in _drive(self._eng, _g_indoubt(self._eng, False))]

    def indoubt(self) -> List[Dict[str, Any]]:
        """In-doubt transactions across the cluster: a list of dicts with
        ``gtrid, txn, age`` (seconds since prepare), ``shards`` (where it is
        prepared), ``participants`` (every shard it held locks on at prepare),
        ``complete`` (prepared on all participants), ``session`` (the owning
        session if still alive, else 0) and ``locks`` ({path: Mode})."""
        return _drive(self._eng, _g_indoubt(self._eng, True))

    def resolve(self, gtrid: Gtrid, commit: bool) -> None:
        """Finish the in-doubt transaction ``gtrid`` on every shard: commit
        (True) or abort (False); each shard logs the decision durably, then
        releases its locks. Idempotent (the same outcome again is a no-op);
        the other outcome, or a gtrid no shard knows, raises InvalidRequest."""
        return _drive(self._eng, _g_resolve(self._eng, gtrid, commit))

    def close(self) -> None:
        """End the session: the shards release its unprepared transactions' locks
        (prepared ones stay in doubt). Idempotent."""
        eng = self._eng
        if eng.closed:
            return
        if eng.dead is None:
            # (no-wait releases still queued leave in the same frames, before CLOSE)
            try:
                eng.call_many([(i, wire.CLOSE, [], 0.0) for i in range(eng.n)])
            except LockError:
                pass
            eng.dead = eng.dead or "the session was closed"
        if self._cache is not None:
            self._cache.stats()          # (empties it: the shards released everything with the session)
        eng.shutdown()
        if eng._deferred_error is not None:     # a no-wait release failed and no call came to raise it
            _log.warning("a no-wait release of session %#x failed: %s", eng.session, eng._deferred_error)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.close()
        return False

    def __repr__(self) -> str:
        return f"<lockmgr.Client session={self._eng.session:#x} shards={self._eng.n}>"


def _curve(secret_file: Optional[str], server_key: Any) -> Any:
    """The ClientCurve for connect()'s CURVE options (both or neither), or None."""
    if secret_file is None and server_key is None:
        return None
    if secret_file is None or server_key is None:
        raise InvalidRequest("CURVE needs both curve_secret_file (this client's NAME.key_secret from lockmgr "
                             "keygen) and curve_server_key (the shards' public key file or z85 text)")
    from ..security import ClientCurve
    return ClientCurve(secret_file, server_key)


def _check_cache_bounds(max_entries: Any, max_idle: Any) -> None:
    if type(max_entries) is not int or max_entries < 0:
        raise InvalidRequest(f"cache_max_entries must be an int >= 0; got {max_entries!r}")
    if type(max_idle) is bool or not isinstance(max_idle, (int, float)) or not max_idle > 0:
        raise InvalidRequest(f"cache_max_idle must be a number of seconds > 0; got {max_idle!r}")


def connect(endpoints: Optional[Endpoints] = None, *, session_ttl: float = 10.0,
            partition_depth: Optional[int] = None,
            request_timeout: float = 5.0, default_timeout: Optional[float] = None,
            name: Optional[str] = None, curve_secret_file: Optional[str] = None,
            curve_server_key: Any = None, etcd: Optional[str] = None, cluster: Optional[str] = None,
            cache_locks: bool = False, cache_max_entries: int = DEFAULT_MAX_ENTRIES,
            cache_max_idle: float = DEFAULT_MAX_IDLE) -> Client:
    """Open a session with the shards at ``endpoints`` (a list of ``tcp://host:port``
    strings in shard order, or one comma-separated string; or a list of replica
    sets, one list of replica endpoints per shard), or with the replicated
    cluster named ``cluster`` whose primaries are published in etcd
    (``etcd="http://127.0.0.1:2379"``). With replica sets the client follows
    each shard's primary across failovers (docs/replication.md).

    ``session_ttl``: seconds the session lives without an acknowledged
    heartbeat (heartbeats go every ttl/4). ``partition_depth``: None adopts the
    cluster's; a different value is refused. ``request_timeout``: seconds a
    shard has to answer before ShardUnavailable. Raises ShardUnavailable if a
    shard does not answer.

    CURVE (authentication and encryption, docs/security.md): ``curve_secret_file``
    is this client's secret key file (``NAME.key_secret`` from ``lockmgr keygen``;
    its public key must be in the shards' client or admin key directory) and
    ``curve_server_key`` the shards' public key (a ``.key`` file or its 40-character
    z85 text; a list gives one per shard, in shard order). A shard that does not
    admit the key never answers: ShardUnavailable.

    Lock caching (docs/service.md, "Lock caching"): with ``cache_locks=True``
    a committed transaction's locks stay held for this client (the shards
    count them as its session's) and a later transaction of the client that
    asks for a cached lock, or a weaker mode of it, gets it with no round trip
    and the same fencing token. When another session (or another transaction
    of this client) asks for a conflicting mode, the shard calls back and the
    client gives the lock up at once if no transaction uses it, else when the
    using transaction ends. An abort, a deadlock, or the end of the session
    ends the cache's hold. ``cache_max_entries`` (default 10,000) bounds the
    locks cached (the least recently used idle ones go first);
    ``cache_max_idle`` (seconds, default 30) gives up locks unused that long.
    A transaction begun with a ``gtrid`` (2PC) never uses the cache.
    """
    from .locate import attach_resolver, resolve_endpoints
    eps, resolver = resolve_endpoints(endpoints, etcd, cluster, request_timeout)
    if resolver is not None and partition_depth is None:
        partition_depth = getattr(resolver, "partition_depth", None)
    c = Client(eps, session_ttl=session_ttl, partition_depth=partition_depth,
               request_timeout=request_timeout, default_timeout=default_timeout, name=name,
               curve_secret_file=curve_secret_file, curve_server_key=curve_server_key,
               cache_locks=cache_locks, cache_max_entries=cache_max_entries, cache_max_idle=cache_max_idle)
    attach_resolver(c, resolver)
    return c
