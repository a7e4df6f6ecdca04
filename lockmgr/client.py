"""The synchronous client of the lock service.

Interface:
    connect(endpoints, *, session_ttl=10.0, partition_depth=None,
            request_timeout=5.0, default_timeout=None, name=None) -> Client
    Client
        .begin(name=None, *, gtrid=None) -> Transaction
        .transaction(**kw)       context manager: commit / abort
        .close(), context-manager use
        .snapshot(), .wait_for_graph(), .stats(), .deadlocks(), .session_id, .expired
        .endpoints, .partition_depth
        .recover(), .indoubt(), .resolve(gtrid, commit)      2PC (docs/design.md ("Two-phase commit in the service"))
    Transaction  (same methods, semantics and exceptions as lockmgr.Transaction)
        .lock(), .try_lock(), .lock_many(), .unlock(), .held(), .prepare(), .commit(), .abort()
    admin_query(endpoints, typ, timeout=2.0)    session-less PING/SNAPSHOT/GRAPH/STATS/INDOUBT/DEADLOCKS

Structure: one ``_Engine`` per client owns one DEALER socket per shard, shared
by every thread and task (leader/follower): a caller that finds the sockets
free owns them, sends its own frame and receives its own reply (no thread
switch); callers that arrive meanwhile queue their calls, which the owner
sends coalesced in one frame per shard (pipelining) and completes; an
asyncio event loop owns them the same way while its calls are outstanding,
serving them from ``add_reader`` callbacks (``_LoopDriver``); a housekeeping
thread sends heartbeats, serves asyncio calls when their loop does not own
the sockets and picks up answers no one is waiting for; deadlines, retries
and the session lease are checked by whoever owns the sockets.
Transaction logic (routing, strong locks on every shard, merging) is written
once as generators (``_ops``) that yield batches of shard calls; the sync
client drives them with blocking waits, ``lockmgr.aio`` with awaits.
Design: docs/design.md ("The lock service"). Protocol: docs/protocol.md.
"""

import collections
import heapq
import itertools
import os
import random
import threading
import time
import zlib
from contextlib import contextmanager

import zmq

from .service import wire
from .rules import check_mode, check_timeout
from .errors import (DeadlockDetected, InvalidRequest, LockError, LockNotAvailable, LockTimeout,
                     TransactionAborted, TransactionCommitted)
from .embedded.manager import LockInfo
from .modes import Mode, SUPREMUM
from ._core import BACKEND as _BACKEND
from .paths import encode, prefix_ends

if _BACKEND == "c":
    # the compiled twin of paths.encode: same keys, same errors (tests/test_ctable.py)
    from ._core._ctable import encode  # noqa: F811
from .service.wire import SessionExpired, ShardUnavailable

__all__ = ["connect", "Client", "Transaction", "admin_query", "SessionExpired", "ShardUnavailable"]

ACTIVE = "active"
PREPARED = "prepared"
COMMITTED = "committed"
ABORTED = "aborted"
_MODES = tuple(Mode)
_IS, _IX = 1, 2

# ------------------------------------------------------------ transaction ids

_ID_EPOCH_MS = 1577836800000          # 2020-01-01T00:00:00Z
_ID_COUNTER_BITS = 8
_ID_TAG_BITS = 16
_id_lock = threading.Lock()
_id_last = [0, 0]                     # last ms, counter
_id_tag = random.SystemRandom().getrandbits(_ID_TAG_BITS)


def _reseed_after_fork():
    global _id_tag, _id_lock
    _id_lock = threading.Lock()
    _id_tag = random.SystemRandom().getrandbits(_ID_TAG_BITS)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_after_fork)


def new_txn_id():
    """A unique 64-bit id ordered by begin time: 40 bits of ms since 2020, an
    8-bit per-process counter, a 16-bit random process tag. Strictly increasing
    within a process (a full counter borrows the next millisecond)."""
    with _id_lock:
        ms = int(time.time() * 1000) - _ID_EPOCH_MS
        last, ctr = _id_last
        if ms <= last:
            ms = last
            ctr += 1
            if ctr >> _ID_COUNTER_BITS:
                ms += 1
                ctr = 0
        else:
            ctr = 0
        _id_last[0], _id_last[1] = ms, ctr
        return (ms << (_ID_COUNTER_BITS + _ID_TAG_BITS)) | (ctr << _ID_TAG_BITS) | _id_tag




def _parse_endpoints(endpoints):
    if isinstance(endpoints, str):
        eps = [e.strip() for e in endpoints.split(",") if e.strip()]
    else:
        try:
            eps = [str(e).strip() for e in endpoints]
        except TypeError:
            raise InvalidRequest("endpoints must be a list of 'tcp://host:port' strings or one "
                                 "comma-separated string") from None
    if not eps:
        raise InvalidRequest("no endpoints given")
    for e in eps:
        _check_endpoint(e)
    return eps


def _check_endpoint(e):
    """``tcp://HOST:PORT`` (PORT 1..65535) or ``ipc://PATH``; anything else is bad input."""
    scheme, sep, rest = e.partition("://")
    if not sep:
        raise InvalidRequest(f"endpoint {e!r} is not a ZeroMQ endpoint like tcp://127.0.0.1:7400")
    if scheme == "ipc":
        if not rest:
            raise InvalidRequest(f"endpoint {e!r}: ipc:// needs a path")
        return
    if scheme != "tcp":
        raise InvalidRequest(f"endpoint {e!r}: transport {scheme!r} is not supported (use tcp:// or ipc://)")
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidRequest(f"endpoint {e!r} needs a host and a port in 1..65535, like tcp://127.0.0.1:7400")


# ------------------------------------------------------------------- engine

class _Waiter:
    """The calls of one synchronous ``call_many``: a binary semaphore the thread
    sleeps on, woken when its last call completes or when it is promoted to
    be the socket owner (leader). Every field is changed under ``_Engine._mu``."""

    __slots__ = ("ev", "left", "signalled", "promoted", "since")

    def __init__(self, n):
        self.ev = threading.Lock()
        self.ev.acquire()
        self.left = n
        self.signalled = False
        self.promoted = False
        self.since = time.monotonic()

    def signal(self):
        if not self.signalled:
            self.signalled = True
            self.ev.release()


class _Call:
    __slots__ = ("shard", "typ", "args", "seq", "result", "error", "deadline", "first_sent", "retry_at",
                 "backoff", "w", "cb", "done", "urgent")

    def __init__(self, shard, typ, args, deadline, w=None, cb=None, urgent=False):
        self.shard = shard
        self.typ = typ
        self.args = args
        self.seq = 0
        self.result = None
        self.error = None
        self.deadline = deadline
        self.first_sent = 0.0
        self.retry_at = 0.0
        self.backoff = 0.0
        self.w = w
        self.cb = cb
        self.done = False
        self.urgent = urgent     # a callback that someone must receive promptly (asyncio, HELLO)


_HK = object()       # the owner token of the housekeeping thread
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
# pyzmq's compiled socket calls, without the Python wrappers (as in the shard)
_ZSocket = zmq.backend.Socket if issubclass(zmq.Socket, zmq.backend.Socket) else zmq.Socket
_zrecv, _zsend, _zget = _ZSocket.recv, _ZSocket.send, _ZSocket.get
_zmq_poll = zmq.zmq_poll
# the most two machines' monotonic clocks may differ in rate (a fraction: 1000 ppm,
# ten times what commodity crystal oscillators drift)
MAX_CLOCK_DRIFT = 0.001
_ORPHAN_DELAY = 0.002  # s an unowned, unanswered call may wait before the housekeeper receives it


class _Engine:
    """Sockets, session, heartbeats, pipelining: a leader/follower engine.

    One DEALER per shard, shared by every thread and task of the client. The
    sockets (not thread-safe) are used only by their current *owner*, a role
    handed over under ``_mu`` (a full memory barrier, as ZeroMQ requires to
    move a socket between threads). A synchronous caller that finds no owner
    becomes it: it sends its own frame, polls and receives its own reply, then
    hands the role on -- no thread switch at all for a lone caller. A caller
    that finds an owner queues its calls and wakes the owner (self-pipe) if it
    sleeps in poll; the owner sends everything queued in one frame per shard
    (pipelining, coalescing) and completes every reply it receives, whoever
    it belongs to. An owner whose own calls are done promotes a waiting
    follower; if none waits and asyncio calls or HELLOs are outstanding it
    hands the role to the housekeeping thread; otherwise it just lets go,
    and the housekeeper picks up any unanswered call within a few ms.

    The housekeeping thread sends heartbeats to a shard that has acknowledged
    nothing for ttl/4 (any answered request renews the lease: the shard
    renews it on every frame), enforces deadlines and retries when no one
    else owns the sockets, and tracks the session lease.
    """

    def __init__(self, endpoints, session_ttl, partition_depth, request_timeout, name):
        if type(session_ttl) is bool or not isinstance(session_ttl, (int, float)) or not 0.05 <= session_ttl <= 3600:
            raise InvalidRequest(f"session_ttl must be a number of seconds in 0.05..3600; got {session_ttl!r}")
        if type(request_timeout) is bool or not isinstance(request_timeout, (int, float)) or not request_timeout > 0:
            raise InvalidRequest(f"request_timeout must be a number of seconds > 0; got {request_timeout!r}")
        if partition_depth is not None and (type(partition_depth) is not int or not 1 <= partition_depth <= 32):
            raise InvalidRequest(f"partition_depth must be None or an int in 1..32; got {partition_depth!r}")
        self.endpoints = _parse_endpoints(endpoints)
        self.n = len(self.endpoints)
        self.ttl = float(session_ttl)
        # the lease as this client counts it: ttl from the send time of the latest
        # request a shard answered, less what clock rates may differ by (the shard
        # counts ttl from when it handled that request, which is later); see
        # docs/design.md ("Sessions and leases")
        self.ttl_ms = max(1, int(self.ttl * 1000))     # what HELLO tells the shards
        self.lease = self.ttl_ms / 1000.0 * (1.0 - 2 * MAX_CLOCK_DRIFT)
        self.request_timeout = float(request_timeout)
        self.retry_interval = min(1.0, self.request_timeout / 4)
        self.hb_interval = self.ttl / 4
        self._drv_tick = min(0.1, self.retry_interval / 2)   # an asyncio owner's timer (retries, deadlines, lease)
        # an asyncio owner that has not run for this long is taken over by the housekeeper
        self._drv_stall = max(3 * self._drv_tick, min(0.5, self.hb_interval))
        self.partition_depth = partition_depth
        self.name = name or f"pid{os.getpid()}"
        self.session = random.SystemRandom().getrandbits(63) | 1
        self.epoch = [0] * self.n
        self.dead = None                 # the message once the session has expired / closed
        self.closed = False
        self._close_sent = False         # CLOSE went to every shard (once the session is dead)
        self._lease_base = [0.0] * self.n
        self._hb_sent = [None] * self.n  # send time of the outstanding heartbeat, or None
        self._hello_pending = [False] * self.n
        self._secret = [None] * self.n   # per shard: the session's secret (from HELLO) to re-bind it
        self._ctx = zmq.Context()
        self._socks = []
        for ep in self.endpoints:
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.RCVHWM, 0)
            s.connect(ep)
            self._socks.append(s)
        self._fds = [s.getsockopt(zmq.FD) for s in self._socks]   # watched by an asyncio owner
        self._driver = None              # the _LoopDriver of the event loop that used the client last
        self._packer = wire.Packer()
        self._mu = threading.Lock()
        self._owner = None               # None, a _Waiter (a sync caller) or _HK
        self._polling = False            # the owner sleeps in poll (wake it through the pipe)
        self._pipe_full = False          # a wake byte is in the pipe
        self._followers = {}             # id -> _Waiter of sync callers waiting for an owner's service
        self.handoffs = 0                # times a long-waiting owner handed the sockets to a newer caller
        self._urgent = 0                 # outstanding calls someone must receive promptly
        self._orphaned_at = None         # when an owner last let go with calls unanswered
        self._hk_ev = threading.Event()
        self._hk_wake_at = 0.0
        self._seq = [1] * self.n
        self._pending = [dict() for _ in range(self.n)]
        self._outq = collections.deque()
        self._heap = []
        self._tick = itertools.count()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        # zmq_poll's items: every shard socket, then the wake pipe
        self._pollitems = [(s, _POLLIN) for s in self._socks] + [(self._wake_r, _POLLIN)]
        self._ready = threading.Event()
        self._hello_error = None
        self._hello_left = self.n
        self._thread = threading.Thread(target=self._housekeeper, name="lockmgr-client-io", daemon=True)
        self._thread.start()
        # Open the session on every shard; wait for all of them.
        now = time.monotonic()
        with self._mu:
            for i in range(self.n):
                self._send_hello(i, now)
            self._hand_to_hk_locked()
        if not self._ready.wait(self.request_timeout + 0.5):
            self.shutdown()
            raise ShardUnavailable(f"no answer to HELLO within {self.request_timeout:g}s from "
                                   f"{[self.endpoints[i] for i in range(self.n) if not self.epoch[i]]}")
        if self._hello_error is not None:
            self.shutdown()
            raise self._hello_error

    # -- called from any thread

    def _refused_locked(self, calls):
        """Fail ``calls`` if the session is dead or the client closed (under _mu)."""
        if self.dead is not None or self.closed:
            for c in calls:
                self._fail(c, SessionExpired(self.dead or "the client was closed"))
            return True
        return False

    def submit(self, calls):
        """Queue calls completed through their callbacks (asyncio, fire-and-forget).
        The calling thread sends them itself when no one owns the sockets."""
        mu = self._mu
        mu.acquire()
        try:
            if self._refused_locked(calls):
                return
            for c in calls:
                if c.urgent:
                    self._urgent += 1
            self._outq.extend(calls)
            owner = self._owner
            if owner is None:
                self._owner = _SENDER
                try:
                    self._send_all(time.monotonic())
                finally:
                    self._leave_locked()
            elif type(owner) is _LoopDriver and owner.tid == threading.get_ident():
                self._drv_io(owner)     # e.g. a RELEASE posted by a coroutine while its loop owns the sockets
            else:
                self._wake_owner_locked()
        finally:
            mu.release()

    def submit_async(self, calls, drv):
        """Queue asyncio calls (their callback is ``drv.resolve``), on ``drv``'s
        loop thread. A loop that finds the sockets free owns them until its
        calls are answered: it sends, and it receives in add_reader callbacks
        (no other thread involved); otherwise the owner serves the calls and
        completes them through ``call_soon_threadsafe``."""
        mu = self._mu
        mu.acquire()
        try:
            if self._refused_locked(calls):
                return
            self._urgent += len(calls)
            self._outq.extend(calls)
            owner = self._owner
            if owner is None:
                self._owner = owner = drv
                self._polling = True     # others wake it through the pipe, which the loop watches
                drv.attach()
            if owner is drv:
                if self._urgent > len(calls):
                    # other calls are outstanding: their tasks, woken by the same
                    # reply frame, are likely to send next; send once they have
                    # (one frame for all, at the end of this loop iteration)
                    if not drv.flushing:
                        drv.flushing = True
                        drv.loop.call_soon(drv.flush)
                else:
                    self._drv_io(drv)
            else:
                self._wake_owner_locked()
        finally:
            mu.release()

    def loop_driver(self, loop):
        """The _LoopDriver for ``loop`` (the running loop of the calling thread)."""
        d = self._driver
        if d is not None and d.loop is loop:
            return d
        d = _LoopDriver(self, loop)
        with self._mu:
            old = self._driver
            if old is None or self._owner is not old:
                self._driver = d     # else: another loop owns the sockets now; d serves this call only
        return d

    # -- an event loop as the owner (under _mu, on the loop's thread)

    def _drv_io(self, drv, send=True):
        """The owner's work: lease, sends (unless ``send`` is false), timers;
        then whatever the sockets hold (a send can consume the ZMQ_FD edge of
        a reply that arrived meanwhile, so read EVENTS after sending); then
        maybe let go."""
        now = time.monotonic()
        drv.last_io = now
        if self.closed or self.dead is not None or (self._hello_left == 0
                                                     and now > min(self._lease_base) + self.lease):
            self._turn_locked(now)        # fails every call
        else:
            if send and self._outq:
                self._send_all(now)
            heap = self._heap
            if heap and heap[0][0] <= now:
                self._timers(now)
        if self._owner is drv:
            for i, s in enumerate(self._socks):
                self._recv(i, s)
            if self._outq and not drv.flushing:
                drv.flushing = True
                drv.loop.call_soon(drv.flush)
            self._drv_check_leave(drv)

    def _drv_check_leave(self, drv):
        if self._followers or self.closed:
            self._drv_leave(drv)         # a sync caller waits: promote it (it serves everyone)
        elif self._urgent <= 0 and not self._outq and not drv.leaving:
            # nothing asyncio outstanding: let go after the callbacks already
            # scheduled (the tasks just woken usually send their next call at
            # once, and keep the sockets)
            drv.leaving = True
            drv.loop.call_soon(drv.maybe_leave)

    def _drv_leave(self, drv):
        drv.detach()
        self._polling = False
        self._leave_locked()

    def post(self, shard, typ, args):
        """Fire and forget (used for clean-up: RELEASE, UNLOCK rollbacks)."""
        self.submit([_Call(shard, typ, args, time.monotonic() + self.request_timeout)])

    def check_session(self):
        if self.dead is not None:
            raise SessionExpired(self.dead)
        if time.monotonic() > min(self._lease_base) + self.lease:
            self._expire_local()
            raise SessionExpired(self.dead)

    def shutdown(self):
        with self._mu:
            if self.closed:
                return
            self.closed = True
            self._wake_owner_locked()
        self._hk_ev.set()
        self._thread.join(5.0)
        deadline = time.monotonic() + 5.0
        while self._owner is not None and time.monotonic() < deadline:
            with self._mu:
                self._wake_owner_locked()
            time.sleep(0.001)
        for s in self._socks:
            s.close(0)
        self._ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- completion (under _mu)

    def _fail(self, call, err):
        call.error = err
        self._complete(call)

    def _complete(self, call):
        if call.done:
            return
        call.done = True
        if call.urgent:
            self._urgent -= 1
        if call.cb is not None:
            call.cb(call)
        else:
            w = call.w
            if w is not None:
                w.left -= 1
                if w.left == 0:
                    w.signal()

    def _expire_local(self):
        if self.dead is None:
            self.dead = (f"session {self.session:#x} expired: no heartbeat was acknowledged by every shard "
                         f"within its TTL of {self.ttl:g}s; its locks have been released")

    # -- ownership (under _mu)

    def _wake_owner_locked(self):
        if self._owner is _HK and not self._polling:
            self._hk_ev.set()
        if self._polling and not self._pipe_full:
            self._pipe_full = True
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def _hand_to_hk_locked(self):
        """Make the housekeeper the owner if no one is (it serves HELLOs, asyncio calls)."""
        if self._owner is None:
            self._owner = _HK
            self._hk_ev.set()

    def _leave_locked(self):
        """The owner lets go of the sockets: promote a waiting follower, or hand
        the role to the housekeeper, or let go (unanswered lazy calls are picked
        up by the next owner, or by the housekeeper within _ORPHAN_DELAY)."""
        self._owner = None
        if self.closed:
            return              # every call has been failed; nothing left to serve
        fl = self._followers
        while fl:
            k = next(iter(fl))
            w = fl.pop(k)
            if w.left > 0:
                self._owner = w
                w.promoted = True
                w.signal()
                return
        if self._urgent > 0 or (self.dead is not None and any(self._pending)):
            self._owner = _HK
            self._hk_ev.set()
            return
        if self._outq or any(self._pending):
            now = time.monotonic()
            if self._orphaned_at is None:
                self._orphaned_at = now
            if self._hk_wake_at > self._orphaned_at + _ORPHAN_DELAY:
                self._hk_ev.set()
        else:
            self._orphaned_at = None

    # -- HELLO and heartbeats (under _mu)

    def _send_hello(self, i, now):
        self._hello_pending[i] = True
        args = [self.ttl_ms, self.name]
        if self._secret[i] is not None:
            args.append(self._secret[i])    # re-binds the session if the shard still has it
        c = _Call(i, wire.HELLO, args, now + self.request_timeout, cb=self._on_hello, urgent=True)
        self._urgent += 1
        self._outq.append(c)

    def _on_hello(self, c):
        i = c.shard
        self._hello_pending[i] = False
        if c.error is not None:
            if isinstance(c.error, SessionExpired):
                self._expire_by_shard(str(c.error))
            elif self._hello_left > 0 and not isinstance(c.error, ShardUnavailable):
                self._hello_error = c.error
                self._ready.set()
            return
        epoch, index, nshards, depth = c.result[:4]
        if len(c.result) > 4:
            self._secret[i] = c.result[4]
        if self._hello_left > 0:
            if nshards != self.n or index != i:
                self._hello_error = InvalidRequest(
                    f"endpoint {self.endpoints[i]} is shard {index} of {nshards}, but it was given as shard {i} "
                    f"of {self.n}: every client must list the shards in the same order")
            elif self.partition_depth is not None and depth != self.partition_depth:
                self._hello_error = InvalidRequest(
                    f"partition_depth={self.partition_depth} but the cluster routes at depth {depth}; "
                    f"every client must use the cluster's partition depth")
        if self.partition_depth is None or self._hello_left > 0:
            self.partition_depth = self.partition_depth or depth
        self.epoch[i] = epoch
        self._lease_base[i] = max(self._lease_base[i], c.first_sent)
        if self._hello_left > 0:
            self._hello_left -= 1
            if self._hello_left == 0 or self._hello_error is not None:
                self._ready.set()

    def _on_heartbeat(self, c):
        i = c.shard
        self._hb_sent[i] = None
        if c.error is None:
            self._lease_base[i] = max(self._lease_base[i], c.first_sent)
            if c.result[0] != self.epoch[i]:
                self.epoch[i] = c.result[0]
        elif isinstance(c.error, SessionExpired):
            self._expire_by_shard(str(c.error))
        elif isinstance(c.error, ShardUnavailable) and "unknown session" in str(c.error):
            # the shard restarted: open the session again (transactions that held
            # locks there learn of the new epoch and abort)
            if not self._hello_pending[i] and self.dead is None:
                self._send_hello(i, time.monotonic())
        elif isinstance(c.error, ShardUnavailable):
            # no heartbeat answer within the request timeout: the shard is down or
            # cut off; fail what waits on it (a lock wait has no deadline of its own)
            pending = self._pending[i]
            msg = (f"shard {i} ({self.endpoints[i]}) did not answer a heartbeat within the request "
                   f"timeout of {self.request_timeout:g}s")
            for call in list(pending.values()):
                if call.typ != wire.HELLO:
                    del pending[call.seq]
                    self._fail(call, ShardUnavailable(msg))

    def _expire_by_shard(self, msg):
        if self.dead is None:
            self.dead = msg

    def _heartbeat_locked(self, now):
        """Queue a heartbeat to every shard that acknowledged nothing for ttl/4."""
        if self._hello_left > 0 or self.dead is not None:
            return
        for i in range(self.n):
            if self._hb_sent[i] is not None or self._hello_pending[i]:
                continue
            if now < self._lease_base[i] + self.hb_interval:
                continue
            self._hb_sent[i] = now
            self._outq.append(_Call(i, wire.HEARTBEAT, [], now + self.request_timeout, cb=self._on_heartbeat))

    def _next_hb(self, now):
        t = now + self.hb_interval
        for i in range(self.n):
            if self._hb_sent[i] is None and not self._hello_pending[i]:
                t = min(t, self._lease_base[i] + self.hb_interval)
        return t

    # -- the owner's work (under _mu unless said otherwise)

    def _turn_locked(self, now):
        """Lease check, sends, timers: the part of a loop turn before polling."""
        if self.closed:
            self._fail_all(SessionExpired("the client was closed"))
            return
        if self.dead is None and self._hello_left == 0 and now > min(self._lease_base) + self.lease:
            self._expire_local()
        if self.dead is not None:
            self._fail_all(SessionExpired(self.dead), keep_close=True)
        if self._outq:
            self._send_all(now)
        heap = self._heap
        if heap and heap[0][0] <= now:
            self._timers(now)

    def _heap_top(self):
        """The time of the next retry/deadline of a call still unanswered, or None
        (entries of answered calls are dropped lazily, here)."""
        heap = self._heap
        while heap and heap[0][2].done:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _poll_timeout_ms(self, now, cap):
        nxt = now + cap
        top = self._heap_top()
        if top is not None:
            nxt = min(nxt, top)
        return max(0, int((nxt - now) * 1000) + 1)

    def _serve(self, w):
        """Own the sockets until ``w``'s calls are done (or, for the
        housekeeper, until nothing urgent is left); then hand the role on.
        Entered and left without ``_mu`` held; the caller is the owner.
        Returns True if ``w`` handed the role to a newer caller before its own
        calls were done (it then follows)."""
        mu = self._mu
        items = self._pollitems
        socks = self._socks
        wake_r = self._wake_r
        hk = w is _HK
        demoted = False
        mu.acquire()
        try:
            while True:
                now = time.monotonic()
                if hk:
                    # no one else queues heartbeats while the housekeeper owns the
                    # sockets (e.g. serving an asyncio lock wait longer than the TTL)
                    self._heartbeat_locked(now)
                self._turn_locked(now)
                if hk:
                    if self._followers or (self._urgent <= 0 and not self._outq
                                           and (not any(self._pending) or self.closed)):
                        return
                elif w.left == 0 or self.closed:
                    return
                elif self._followers and now - w.since > _HANDOFF_AFTER:
                    # Our calls have waited a while (a lock wait, most likely) and a newer
                    # caller's request has just gone out: let that caller own the sockets,
                    # so its answer wakes it directly rather than waking us first (one
                    # thread hand-off less on its path); we follow until promoted back.
                    f = self._newest_follower()
                    if f is not None:
                        self.handoffs += 1
                        w.since = now
                        self._followers[id(w)] = w
                        self._owner = f
                        f.promoted = True
                        f.signal()
                        demoted = True
                        return True
                timeout = self._poll_timeout_ms(now, 0.1 if not hk else min(0.1, self.hb_interval))
                self._polling = True
                mu.release()
                try:
                    events = _zmq_poll(items, timeout)
                finally:
                    mu.acquire()
                    self._polling = False
                for s, _ in events:
                    if s == wake_r:
                        self._drain_wake_locked()
                    else:
                        self._recv(socks.index(s), s)
        finally:
            if not demoted:
                self._leave_locked()
            mu.release()

    def _drain_wake_locked(self):
        """Empty the wake pipe (its byte has done its job: the owner is awake)."""
        self._pipe_full = False
        try:
            os.read(self._wake_r, 4096)
        except OSError:
            pass

    def _newest_follower(self):
        """The most recent follower with calls left, taken out of the followers (under _mu)."""
        fl = self._followers
        for k in reversed(fl):
            f = fl[k]
            if f.left > 0 and not f.promoted:
                del fl[k]
                return f
        return None

    def _housekeeper(self):
        mu = self._mu
        while True:
            with mu:
                if self.closed and self._owner is None:
                    self._owner = _HK
                owner = self._owner
                if type(owner) is _LoopDriver and (not owner.loop.is_running()
                                                   or time.monotonic() - owner.last_io > self._drv_stall):
                    # a loop that stopped (or closed) while owning, or one blocked
                    # by its user's code (its timer has not run): it serves no one
                    # now, heartbeats included; take the sockets (safe: the loop
                    # touches them only under _mu after checking that it owns
                    # them; its stale callbacks let go when it runs again)
                    self._owner = _HK
                    self._polling = False
                if self._owner is _HK:
                    take = True
                else:
                    take = False
                    now = time.monotonic()
                    if self._owner is None and not self.closed:
                        self._heartbeat_locked(now)
                        top = self._heap_top()
                        due = (self._outq or (top is not None and top <= now)
                               or (self._orphaned_at is not None and now >= self._orphaned_at + _ORPHAN_DELAY)
                               or (self.dead is None and self._hello_left == 0
                                   and now > min(self._lease_base) + self.lease))
                        if due:
                            self._owner = _HK
                            take = True
                            self._orphaned_at = None
                    elif self._owner is not None:
                        before = len(self._outq)
                        self._heartbeat_locked(now)
                        if len(self._outq) != before:
                            self._wake_owner_locked()
            if take:
                self._serve(_HK)
                if self.closed:
                    with mu:
                        if self._owner is None:
                            return
                continue
            with mu:
                now = time.monotonic()
                nxt = self._next_hb(now)
                top = self._heap_top()
                if top is not None and self._owner is None:
                    nxt = min(nxt, top)
                if self._orphaned_at is not None:
                    nxt = min(nxt, self._orphaned_at + _ORPHAN_DELAY)
                if self.dead is None and self._hello_left == 0:
                    nxt = min(nxt, min(self._lease_base) + self.lease + 0.001)
                if self.closed:
                    nxt = now + 0.005
                if type(self._owner) is _LoopDriver:
                    nxt = min(nxt, now + self._drv_stall / 2)    # check that its loop still runs
                nxt = max(nxt, now + 0.001)
                self._hk_wake_at = nxt
            self._hk_ev.wait(nxt - now)
            self._hk_ev.clear()
            with mu:
                self._hk_wake_at = 0.0

    def _recv(self, i, s):
        pending = self._pending[i]
        lease = 0.0
        # drain while EVENTS says a message is ready (rather than until a
        # zmq.Again, whose construction costs more than the check)
        while _zget(s, _EVENTS) & _POLLIN:
            try:
                frame = _zrecv(s, _NOBLOCK)
            except zmq.Again:
                break
            try:
                reps = wire.unpack_replies(frame)
            except Exception:
                continue
            if type(reps) is not list:
                continue
            for rep in reps:
                try:
                    seq, status, payload = rep
                except (TypeError, ValueError):
                    continue
                c = pending.pop(seq, None)
                if c is None:
                    continue
                if status == wire.OK:
                    err = wire.check_reply(c.typ, payload, c.args)
                    if err is not None:
                        c.error = err
                        self._complete(c)
                        continue
                    c.result = payload
                    if c.first_sent > lease:
                        lease = c.first_sent
                else:
                    c.error = wire.error_for(status, payload)
                    if status == wire.E_UNKNOWN_SESSION and c.typ not in (wire.HEARTBEAT, wire.HELLO):
                        c.error = ShardUnavailable(
                            f"shard {i} ({self.endpoints[i]}) does not know this session (it restarted?); "
                            f"{payload}")
                        if not self._hello_pending[i] and self.dead is None:
                            self._send_hello(i, time.monotonic())
                    elif status == wire.E_SESSION_EXPIRED:
                        self._expire_by_shard(str(payload))
                    elif status != wire.E_UNKNOWN_SESSION and status != wire.E_PROTOCOL:
                        if c.first_sent > lease:
                            lease = c.first_sent
                self._complete(c)
        # any answer to a request of this session renews the lease on that shard
        # (the shard renews it on every frame of a known session); HELLO and
        # heartbeat callbacks do the same for themselves
        if lease > self._lease_base[i] and self.epoch[i] and not self._hello_pending[i]:
            self._lease_base[i] = lease

    def _send_all(self, now):
        outq = self._outq
        frames = {}
        pendings = self._pending
        seqs = self._seq
        heap = self._heap
        tick = self._tick
        retry = self.retry_interval
        while outq:
            c = outq.popleft()
            if c.done:
                continue
            i = c.shard
            seq = seqs[i]
            seqs[i] = seq + 1
            c.seq = seq
            c.first_sent = now
            pendings[i][seq] = c
            req = [c.typ, seq]
            req.extend(c.args)
            lst = frames.get(i)
            if lst is None:
                frames[i] = [req]
            else:
                lst.append(req)
            c.backoff = retry
            when = now + retry
            if c.deadline is not None and c.deadline < when:
                when = c.deadline
            heapq.heappush(heap, (when, next(tick), c))
        for i, reqs in frames.items():
            self._send_frame(i, reqs)

    def _send_frame(self, i, reqs):
        pending = self._pending[i]
        ack = next(iter(pending), self._seq[i])
        pack = self._packer.pack
        for k in range(0, len(reqs), wire.MAX_REQUESTS):
            try:
                _zsend(self._socks[i], pack([wire.VERSION, self.session, ack, reqs[k:k + wire.MAX_REQUESTS]]),
                       _NOBLOCK)
            except zmq.ZMQError:
                pass  # retried by the timer

    def _timers(self, now):
        heap = self._heap
        resend = {}
        while heap and heap[0][0] <= now:
            when, _, c = heapq.heappop(heap)
            if c.done:
                continue
            if c.deadline is not None and now >= c.deadline:
                self._pending[c.shard].pop(c.seq, None)
                self._fail(c, ShardUnavailable(
                    f"shard {c.shard} ({self.endpoints[c.shard]}) did not answer "
                    f"{wire.TYPE_NAMES.get(c.typ, c.typ)} within the request timeout"))
                continue
            # retry: the same (session, seq); the shard answers it once. Within
            # the request timeout the interval stays fixed (a call gets ~4 tries
            # before its deadline, so one lost frame or reply costs one interval,
            # not the call); past it (a lock wait) the interval doubles up to 8 s.
            if now - c.first_sent >= self.request_timeout:
                c.backoff = min(c.backoff * 2, 8.0)
            when = now + c.backoff
            if c.deadline is not None and c.deadline < when:
                when = c.deadline
            heapq.heappush(heap, (when, next(self._tick), c))
            req = [c.typ, c.seq]
            req.extend(c.args)
            resend.setdefault(c.shard, []).append(req)
        for i, reqs in resend.items():
            self._send_frame(i, reqs)

    def _fail_all(self, err, keep_close=False):
        while self._outq:
            c = self._outq.popleft()
            self._fail(c, type(err)(str(err)))
        for i, pending in enumerate(self._pending):
            for c in list(pending.values()):
                self._fail(c, type(err)(str(err)))
            pending.clear()
        self._heap.clear()
        if keep_close and not self._close_sent:
            self._close_sent = True
            # tell the shards at once rather than letting the leases run out
            for i in range(self.n):
                seq = self._seq[i]
                self._seq[i] += 1
                try:
                    self._socks[i].send(wire.pack_requests(self.session, seq, [[wire.CLOSE, seq]]), zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass

    # -- sync driving

    def call_many(self, specs):
        """Run shard calls in parallel and wait: specs are (shard, typ, args, extra)
        where extra is the seconds allowed beyond the request timeout, or None
        (no deadline: a lock wait without timeout; liveness comes from heartbeats).
        Returns a list of results or exception instances."""
        now = time.monotonic()
        rt = self.request_timeout
        w = _Waiter(len(specs))
        calls = [_Call(shard, typ, args, None if extra is None else now + rt + extra, w)
                 for shard, typ, args, extra in specs]
        mu = self._mu
        mu.acquire()
        try:
            if self.dead is not None or self.closed:
                err = self.dead or "the client was closed"
                for c in calls:
                    self._fail(c, SessionExpired(err))
                lead = False
            else:
                self._outq.extend(calls)
                owner = self._owner
                if owner is None or (type(owner) is _LoopDriver and owner.tid == threading.get_ident()):
                    # free, or owned by the event loop this very thread runs (blocked
                    # here, so it touches no socket until we are done): take them
                    if owner is not None:
                        self._polling = False
                    self._owner = w
                    lead = True
                else:
                    lead = False
                    self._followers[id(w)] = w
                    self._wake_owner_locked()
        finally:
            mu.release()
        if lead:
            if self._serve(w):
                self._follow(w)
        elif w.left:
            self._follow(w)
        return [c.error if c.error is not None else c.result for c in calls]

    def _follow(self, w):
        while True:
            if not w.ev.acquire(timeout=1.0):
                if not self._thread.is_alive() and self._owner is None and w.left:
                    raise ShardUnavailable("the client's I/O thread has stopped (client closed?)")
                if type(self._owner) is _LoopDriver:
                    self._hk_ev.set()        # its loop may have stopped: the housekeeper takes over
                continue
            with self._mu:
                w.signalled = False
                promoted = w.promoted
                w.promoted = False
                if not promoted:
                    if w.left == 0:
                        self._followers.pop(id(w), None)
                        return
                    continue
            if self._serve(w):  # the owner now; returns when w's calls are done
                continue        # ... or when it handed the role to a newer caller
            return


_HANDOFF_AFTER = 0.002   # an owner whose calls are older than this hands the sockets to a newer caller

_SENDER = object()   # owner token of a thread that only sends (submit) and lets go at once


def _set_future(fut, call):
    if not fut.done():
        fut.set_result(call)


class _LoopDriver:
    """An asyncio event loop as the owner of the engine's sockets.

    While it owns them (``_Engine._owner is self``), the loop watches every
    socket's ZMQ_FD and the engine's wake pipe with ``add_reader`` and does
    the owner's work in those callbacks, on the loop thread: an asyncio call
    is sent, received and completed with no thread switch. It lets go once no
    asyncio call is outstanding, or at once when a synchronous caller waits
    (promoted as usual). A timer runs retries, deadlines and the lease check.
    The housekeeper takes the sockets from a loop that stopped while owning
    them. Fields other than ``loop``/``tid`` are used on the loop thread only."""

    __slots__ = ("eng", "loop", "tid", "attached", "timer", "leaving", "flushing", "last_io", "__weakref__")

    def __init__(self, eng, loop):
        self.eng = eng
        self.loop = loop
        self.tid = threading.get_ident()
        self.attached = False
        self.timer = None
        self.leaving = False
        self.flushing = False
        self.last_io = 0.0           # when it last did the owner's work (read by the housekeeper)

    def resolve(self, call):
        """The callback of this loop's calls (``call.w`` is the future)."""
        fut = call.w
        if threading.get_ident() == self.tid:
            _set_future(fut, call)
        else:
            try:
                self.loop.call_soon_threadsafe(_set_future, fut, call)
            except RuntimeError:
                pass        # the loop is closed: no one awaits the call any more

    def attach(self):
        self.last_io = time.monotonic()
        if not self.attached:
            self.attached = True
            eng = self.eng
            add = self.loop.add_reader
            for i, fd in enumerate(eng._fds):
                add(fd, self.on_readable, i)
            add(eng._wake_r, self.on_wake)
        if self.timer is None:
            self.timer = self.loop.call_later(self.eng._drv_tick, self.on_timer)

    def detach(self):
        if self.attached:
            self.attached = False
            rm = self.loop.remove_reader
            for fd in self.eng._fds:
                rm(fd)
            rm(self.eng._wake_r)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def on_readable(self, i):
        eng = self.eng
        with eng._mu:
            if eng._owner is not self:
                self.detach()             # stale (the sockets were taken over)
                return
            eng._drv_io(self, send=False)    # receives; the woken tasks' calls go with the queued ones (flush)

    def on_wake(self):
        eng = self.eng
        with eng._mu:
            if eng._owner is not self:
                self.detach()
                return
            eng._drain_wake_locked()
            eng._drv_io(self)

    def on_timer(self):
        eng = self.eng
        self.timer = None
        with eng._mu:
            if eng._owner is not self:
                self.detach()
                return
            eng._drv_io(self)
            if eng._owner is self and self.timer is None:
                self.timer = self.loop.call_later(eng._drv_tick, self.on_timer)

    def flush(self):
        eng = self.eng
        self.flushing = False
        with eng._mu:
            if eng._owner is not self:
                self.detach()
                if eng._outq:
                    eng._wake_owner_locked()
                return
            eng._drv_io(self)

    def maybe_leave(self):
        eng = self.eng
        with eng._mu:
            self.leaving = False
            if eng._owner is not self:
                self.detach()
            elif eng._followers or eng.closed or (eng._urgent <= 0 and not eng._outq):
                eng._drv_leave(self)


# -------------------------------------------------------------- transaction ops

class _TxnCore:
    """State of one transaction, shared by the sync and asyncio front ends."""

    __slots__ = ("eng", "client", "id", "name", "gtrid", "state", "victim", "touched", "doom",
                 "default_timeout", "prepared_at")

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

    def refuse(self):
        if self.state is PREPARED:
            return InvalidRequest(f"transaction {self.id} is prepared: it can only be committed or aborted")
        if self.victim:
            return TransactionAborted(f"transaction {self.id} was aborted as a deadlock victim")
        if self.doom:
            return TransactionAborted(self.doom)
        return TransactionAborted(f"transaction {self.id} is {self.state}")

    def check_active(self):
        if self.state is not ACTIVE:
            raise self.refuse()
        self.eng.check_session()
        eps = self.eng.epoch
        for s, e in self.touched.items():
            if e and eps[s] != e:
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
            for s in self.touched:
                if s != skip:
                    self.eng.post(s, wire.RELEASE, [self.id, False])

    def route(self, key, depth, mode):
        eng = self.eng
        n = eng.n
        if n == 1:
            return (0,)
        p = eng.partition_depth
        if depth >= p:
            end = key if depth == p else key[:prefix_ends(key)[p - 1]]
            return (zlib.crc32(end) % n,)
        if mode == _IS or mode == _IX:
            return (0,)
        return tuple(range(n))


def _prepare(core, resource, mode):
    key = encode(resource)       # validates the path (InvalidRequest)
    path = resource if type(resource) is tuple else (resource,)
    mode = check_mode(mode)
    return path, key, mode


def _failure(core, err, shard):
    """Apply an error from a lock call to the transaction state; return it to raise."""
    if isinstance(err, DeadlockDetected):
        core.abort_everywhere(victim=True, skip=shard)
    elif isinstance(err, TransactionAborted):
        if core.state is ACTIVE:
            if "restarted" in str(err):
                core.doom = str(err)
            core.abort_everywhere(skip=shard)
    elif isinstance(err, SessionExpired):
        core.state = ABORTED
    return err


def _g_lock(core, resource, mode, timeout, nowait):
    core.check_active()
    timeout = check_timeout(timeout)
    path, key, mode = _prepare(core, resource, mode)
    if timeout is None:
        timeout = core.default_timeout
    shards = core.route(key, len(path), mode)
    deadline = None if timeout is None else time.monotonic() + timeout
    wpath = list(path)
    strong = len(shards) > 1
    done = []          # a strong lock: (shard, mode held there before), to undo if a later shard refuses
    token = 0
    for s in shards:
        tmo = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
        ep = core.touched.get(s)
        if ep is None:
            core.touched[s] = ep = 0
        res, = yield [(s, wire.LOCK, [core.id, wpath, mode, bool(nowait), tmo, ep],
                       None if deadline is None else tmo / 1000.0)]
        if isinstance(res, BaseException):
            if isinstance(res, (LockTimeout, LockNotAvailable)) and done:
                # a strong lock on a node above the partition depth failed on a later
                # shard: undo it where it was granted -- released where it was new,
                # set back to the mode held before where it converted one -- so the
                # transaction keeps what it held, as one table would leave it
                rb = yield [(f, wire.UNLOCK, [core.id, wpath, False], 0.0) if not prev
                            else (f, wire.DOWNGRADE, [core.id, wpath, prev], 0.0) for f, prev in done]
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
            core.eng.post(s, wire.RELEASE, [core.id, False])
        raise core.refuse()
    return token


def _g_lock_many(core, items, timeout, nowait):
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
        parsed.append(_prepare(core, it[0], it[1]))
    if timeout is None:
        timeout = core.default_timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    tokens = [0] * len(parsed)
    # In order: a strong item (S/SIX/X on a node above the partition depth: every
    # shard, in shard order) on its own; each run of other items between strong
    # ones in one message per shard, all shards in parallel. Per shard the items
    # keep their order and a strong item comes after exactly the items before it,
    # so a call that succeeds leaves what successive lock() calls would.
    run = {}
    for i, (path, key, mode) in enumerate(parsed):
        shards = core.route(key, len(path), mode)
        if len(shards) == 1:
            run.setdefault(shards[0], []).append(i)
            continue
        if run:
            yield from _g_lock_run(core, parsed, run, tokens, deadline, nowait)
            run = {}
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        tokens[i] = yield from _g_lock(core, path, mode, left, nowait)
    if run:
        yield from _g_lock_run(core, parsed, run, tokens, deadline, nowait)
    if core.state is not ACTIVE:
        raise core.refuse()
    return tokens


def _g_lock_run(core, parsed, groups, tokens, deadline, nowait):
    """Lock ``groups`` ({shard: [item index, ...]}): one LOCK_MANY per shard
    (chunks of MAX_BATCH in rounds), all shards in parallel; fills ``tokens``."""
    order = sorted(groups)
    rounds = max((len(v) + wire.MAX_BATCH - 1) // wire.MAX_BATCH for v in groups.values())
    for r in range(rounds):
        specs, idxs = [], []
        tmo = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
        for s in order:
            chunk = groups[s][r * wire.MAX_BATCH:(r + 1) * wire.MAX_BATCH]
            if not chunk:
                continue
            ep = core.touched.get(s)
            if ep is None:
                core.touched[s] = ep = 0
            specs.append((s, wire.LOCK_MANY,
                          [core.id, [[list(parsed[i][0]), parsed[i][2]] for i in chunk], bool(nowait), tmo, ep],
                          None if tmo is None else tmo / 1000.0))
            idxs.append((s, chunk))
        results = yield specs
        err = None
        for (s, chunk), res in zip(idxs, results):
            if isinstance(res, BaseException):
                if err is None or isinstance(res, DeadlockDetected):
                    err = (res, s)
                continue
            toks, ep2 = res
            if not core.touched.get(s):
                core.touched[s] = ep2
            for i, tok in zip(chunk, toks):
                tokens[i] = tok
        if err is not None:
            raise _failure(core, err[0], err[1])


def _g_unlock(core, resource):
    core.check_active()
    key = encode(resource)
    path = resource if type(resource) is tuple else (resource,)
    wpath = list(path)
    shards = core.route(key, len(path), 5)
    if len(shards) == 1:
        res, = yield [(shards[0], wire.UNLOCK, [core.id, wpath, False], 0.0)]
        if isinstance(res, BaseException):
            raise res
        return None
    # a node above the partition depth: it may be held on several shards
    touched = sorted(core.touched)
    results = (yield [(s, wire.UNLOCK, [core.id, wpath, True], 0.0) for s in touched]) if touched else []
    holding = []
    for s, res in zip(touched, results):
        if isinstance(res, BaseException):
            raise res
        if res[0]:
            holding.append(s)
    if not holding:
        raise InvalidRequest(f"transaction {core.id} does not hold {path!r}")
    results = yield [(s, wire.UNLOCK, [core.id, wpath, False], 0.0) for s in holding]
    for res in results:
        if isinstance(res, BaseException):
            raise res
    return None


def _g_held(core):
    core.check_active() if core.state is ACTIVE else None
    touched = sorted(core.touched)
    if (core.state is not ACTIVE and core.state is not PREPARED) or not touched:
        return {}
    results = yield [(s, wire.HELD, [core.id], 0.0) for s in touched]
    out = {}
    for res in results:
        if isinstance(res, BaseException):
            raise res
        for p, m in res:
            p = tuple(p)
            old = out.get(p)
            out[p] = m if old is None else SUPREMUM[old][m]
    return {p: _MODES[m] for p, m in out.items()}


def _g_finish(core, commit):
    if core.state is PREPARED:        # 2PC: the decision is logged on each shard before the release
        return (yield from _g_decide_own(core, commit))
    if commit:
        if core.state is not ACTIVE and core.state is not PREPARED:
            raise core.refuse()
        try:
            core.check_active()
        except TransactionAborted:
            raise
        except SessionExpired:
            core.state = ABORTED
            raise
    elif core.state is not ACTIVE:
        return None
    else:
        # abort of an active transaction: its locks go either way (released
        # now, or by the shards when the lease runs out), but an expired
        # session is reported, as for every other call
        try:
            core.eng.check_session()
        except SessionExpired:
            core.state = ABORTED
            raise
    core.state = COMMITTED if commit else ABORTED
    touched = sorted(core.touched)
    if not touched or core.eng.dead is not None:
        return None
    results = yield [(s, wire.RELEASE, [core.id, bool(commit)], 0.0) for s in touched]
    if commit:
        for res in results:
            if isinstance(res, BaseException) and not isinstance(res, TransactionAborted):
                raise res
    return None


# ------------------------------------------------------- two-phase commit (2PC)
# docs/design.md ("Two-phase commit in the service"). PREPARE goes to every shard the transaction touched, in
# parallel; each shard answers once the transaction's locks are fsynced in its
# prepare log. DECIDE (commit/abort by gtrid, from any session) is answered
# once the decision is fsynced, and only then are the locks released.

_DECIDE_RESULTS = ("resolved", "done", "unknown")


def _check_gtrid(gtrid):
    if type(gtrid) not in (str, bytes) or not gtrid or len(gtrid) > 256:
        raise InvalidRequest(f"gtrid must be a non-empty str of at most 256 characters; got {gtrid!r}")
    return gtrid


def _g_prepare(core):
    if core.state is not ACTIVE:
        raise core.refuse()
    core.check_active()
    if core.gtrid is None:
        raise InvalidRequest("prepare() needs a global transaction id: begin(gtrid=...)")
    _check_gtrid(core.gtrid)
    touched = sorted(core.touched)
    if not touched:
        # holds nothing anywhere: nothing to make durable (XA's read-only vote)
        core.state = PREPARED
        core.prepared_at = time.time()
        return None
    rt = core.eng.request_timeout
    results = yield [(s, wire.PREPARE, [core.id, core.gtrid, core.touched[s], touched], rt) for s in touched]
    err = None
    for s, res in zip(touched, results):
        if isinstance(res, BaseException) and (err is None or isinstance(res, TransactionAborted)):
            err = res
    if err is None and core.state is ACTIVE:
        core.state = PREPARED
        core.prepared_at = time.time()
        return None
    # vote no: abort everywhere (a shard that prepared logs the abort before releasing)
    if core.state is ACTIVE:
        core.state = ABORTED
        for s in touched:
            core.eng.post(s, wire.RELEASE, [core.id, False])
    if err is None:
        err = core.refuse()
    elif isinstance(err, TransactionAborted):
        err = TransactionAborted(f"prepare failed: {err}; transaction {core.id} has been aborted")
    raise err


def _g_decide_own(core, commit):
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
    _check_gtrid(gtrid)
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
    """Run an ops generator synchronously."""
    try:
        specs = next(gen)
        while True:
            specs = gen.send(eng.call_many(specs))
    except StopIteration as e:
        return e.value


# ------------------------------------------------------------------ sync API

class Transaction:
    """A transaction of a :class:`Client`: the methods, semantics and exceptions
    of :class:`lockmgr.Transaction`, plus :meth:`lock_many`.

    A transaction is used by one thread at a time (as in the embedded API,
    :meth:`abort` may come from another thread and wakes a waiting lock).
    """

    __slots__ = ("_c",)

    def __init__(self, core):
        self._c = core

    @property
    def id(self):
        """The transaction id (unique 64-bit; larger means younger)."""
        return self._c.id

    @property
    def name(self):
        return self._c.name

    @property
    def gtrid(self):
        """The global transaction id given to ``begin`` (for 2PC)."""
        return self._c.gtrid

    @property
    def state(self):
        """'active', 'prepared', 'committed' or 'aborted'."""
        return self._c.state

    @property
    def prepared_at(self):
        """Wall-clock time (``time.time()``) when :meth:`prepare` succeeded, else None."""
        return self._c.prepared_at

    def __repr__(self):
        return f"<lockmgr.client.Transaction id={self._c.id} name={self._c.name!r} {self._c.state}>"

    def lock(self, resource, mode=Mode.X, *, timeout=None, nowait=False):
        """Lock ``resource`` in ``mode`` (intention locks on its ancestors are
        taken by the owning shard). Returns the fencing token.

        One round trip when the path is at least ``partition_depth`` long (or
        the mode is IS/IX); an S/SIX/X lock on a node above the partition depth
        is taken on every shard in shard order. Raises LockTimeout,
        LockNotAvailable, DeadlockDetected (aborted everywhere),
        TransactionAborted, InvalidRequest, SessionExpired, ShardUnavailable.
        """
        return _drive(self._c.eng, _g_lock(self._c, resource, mode, timeout, nowait))

    def try_lock(self, resource, mode=Mode.X):
        """Lock without waiting: True if granted, False if it would wait."""
        try:
            self.lock(resource, mode, nowait=True)
        except LockNotAvailable:
            return False
        return True

    def lock_many(self, items, *, timeout=None, nowait=False):
        """Lock several ``(resource, mode)`` pairs; returns their tokens in order.

        The requests for one shard go in one message (the shard takes them in
        the given order); different shards work in parallel; a strong lock on a
        node above the partition depth goes on its own, after the items before
        it. A call that succeeds leaves what successive ``lock()`` calls would.
        Not atomic: on an error, the locks granted before it are kept, and items
        after it that live on other shards may be granted too.
        """
        return _drive(self._c.eng, _g_lock_many(self._c, items, timeout, nowait))

    def unlock(self, resource):
        """Release one node early (refused while a descendant is held)."""
        return _drive(self._c.eng, _g_unlock(self._c, resource))

    def held(self):
        """Every node held, with its mode (merged across shards: the supremum)."""
        return _drive(self._c.eng, _g_held(self._c))

    def prepare(self):
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

    def commit(self):
        """Release every lock and finish. Raises TransactionAborted if already finished.

        For a prepared transaction the decision is logged durably on every
        shard before its locks there are released; on an error (a shard down)
        the transaction stays prepared (in doubt): call commit() again or
        ``Client.resolve(gtrid, True)``. If another client aborted it meanwhile
        (``Client.resolve(gtrid, False)``), TransactionAborted says so and its
        state is 'aborted'."""
        return _drive(self._c.eng, _g_finish(self._c, True))

    def abort(self):
        """Release every lock and finish as aborted. Idempotent: a no-op on a
        finished transaction. Raises SessionExpired if the session has expired
        (the shards release the locks themselves then); other failures to reach
        a shard are not raised (the lease releases what could not be).

        A prepared transaction is different: its locks outlive the session, so
        every failure is raised (it stays prepared: retry, or ``Client.resolve``),
        and TransactionCommitted if another client committed it meanwhile
        (``Client.resolve(gtrid, True)``; its state is then 'committed')."""
        prepared = self._c.state is PREPARED
        try:
            return _drive(self._c.eng, _g_finish(self._c, False))
        except SessionExpired:
            raise
        except LockError:
            if prepared:
                raise
            return None

    def _abort_quietly(self):
        try:
            self.abort()
        except LockError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
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

    def __init__(self, endpoints, *, session_ttl=10.0, partition_depth=None, request_timeout=5.0,
                 default_timeout=None, name=None):
        self._default_timeout = check_timeout(default_timeout)
        try:
            self._eng = _Engine(endpoints, session_ttl, partition_depth, request_timeout, name)
        except zmq.ZMQError as e:
            raise ShardUnavailable(f"cannot connect: {e}") from None

    @property
    def endpoints(self):
        return list(self._eng.endpoints)

    @property
    def session_id(self):
        return self._eng.session

    @property
    def partition_depth(self):
        return self._eng.partition_depth

    @property
    def expired(self):
        """True once the session is over (lease ran out, or closed)."""
        try:
            self._eng.check_session()
        except SessionExpired:
            return True
        return self._eng.closed

    def begin(self, name=None, *, gtrid=None):
        """Start a transaction (no round trip). Ids increase in begin order."""
        if gtrid is not None and type(gtrid) not in (str, bytes):
            raise InvalidRequest(f"gtrid must be None, str or bytes; got {type(gtrid).__name__}")
        self._eng.check_session()
        return Transaction(_TxnCore(self, name, gtrid))

    @contextmanager
    def transaction(self, **kw):
        """``with client.transaction() as t:`` commits on normal exit, aborts on an exception."""
        t = self.begin(**kw)
        with t:
            yield t

    def _admin(self, typ):
        self._eng.check_session()
        res = self._eng.call_many([(i, typ, [], 0.0) for i in range(self._eng.n)])
        for r in res:
            if isinstance(r, BaseException):
                raise r
        return res

    def snapshot(self):
        """Every request on every shard: a list of LockInfo (a node above the
        partition depth may appear once per shard)."""
        out = []
        for rows in self._admin(wire.SNAPSHOT):
            out.extend(LockInfo(tuple(p), t, _MODES[m], g) for p, t, m, g, _s in rows)
        return out

    def wait_for_graph(self):
        """``{waiting txn: {txns it waits for}}``, the union over shards."""
        g = {}
        for edges in self._admin(wire.GRAPH):
            for k, v in edges:
                g.setdefault(k, set()).update(v)
        return g

    def stats(self):
        """One dict of counters per shard."""
        return self._admin(wire.STATS)

    def deadlocks(self):
        """The deadlock reports kept by the shards (a bounded ring on each), oldest
        first: dicts with ``id``, ``kind`` ('distributed' or 'local'), ``detected_at``
        (wall time), ``detection_ms``, ``cycle``, ``victim`` and ``members`` (per
        transaction: the resource and mode it waited for, its blocker and what the
        blocker held or queued for there). See docs/design.md ("Distributed deadlock detection")."""
        from .service.reports import merge_reports
        return merge_reports(self._admin(wire.DEADLOCKS))
    # -- two-phase commit (docs/design.md ("Two-phase commit in the service"))

    def recover(self):
        """The gtrids of the prepared transactions in doubt on any shard, oldest
        first (what a restarted 2PC coordinator calls). Includes a transaction
        prepared on only some of its shards (see :meth:`indoubt`, ``complete``)."""
        return [d["gtrid"] for d in _drive(self._eng, _g_indoubt(self._eng, False))]

    def indoubt(self):
        """In-doubt transactions across the cluster: a list of dicts with
        ``gtrid, txn, age`` (seconds since prepare), ``shards`` (where it is
        prepared), ``participants`` (every shard it held locks on at prepare),
        ``complete`` (prepared on all participants), ``session`` (the owning
        session if still alive, else 0) and ``locks`` ({path: Mode})."""
        return _drive(self._eng, _g_indoubt(self._eng, True))

    def resolve(self, gtrid, commit):
        """Finish the in-doubt transaction ``gtrid`` on every shard: commit
        (True) or abort (False); each shard logs the decision durably, then
        releases its locks. Idempotent (the same outcome again is a no-op);
        the other outcome, or a gtrid no shard knows, raises InvalidRequest."""
        return _drive(self._eng, _g_resolve(self._eng, gtrid, commit))

    def close(self):
        """End the session: the shards release its unprepared transactions' locks
        (prepared ones stay in doubt). Idempotent."""
        eng = self._eng
        if eng.closed:
            return
        if eng.dead is None:
            try:
                eng.call_many([(i, wire.CLOSE, [], 0.0) for i in range(eng.n)])
            except LockError:
                pass
            eng.dead = eng.dead or "the session was closed"
        eng.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"<lockmgr.Client session={self._eng.session:#x} shards={self._eng.n}>"


def connect(endpoints, *, session_ttl=10.0, partition_depth=None, request_timeout=5.0, default_timeout=None,
            name=None):
    """Open a session with the shards at ``endpoints`` (a list of ``tcp://host:port``
    strings in shard order, or one comma-separated string).

    ``session_ttl``: seconds the session lives without an acknowledged
    heartbeat (heartbeats go every ttl/4). ``partition_depth``: None adopts the
    cluster's; a different value is refused. ``request_timeout``: seconds a
    shard has to answer before ShardUnavailable. Raises ShardUnavailable if a
    shard does not answer.
    """
    return Client(endpoints, session_ttl=session_ttl, partition_depth=partition_depth,
                  request_timeout=request_timeout, default_timeout=default_timeout, name=name)


def admin_query(endpoints, typ, timeout=2.0):
    """Send one session-less admin request (PING, SNAPSHOT, GRAPH, STATS) to each
    shard; returns a list of payloads, or ShardUnavailable instances."""
    eps = _parse_endpoints(endpoints)
    ctx = zmq.Context()
    out = []
    try:
        for ep in eps:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(ep)
            s.send(wire.pack_requests(0, 0, [[typ, 1]]))
            if s.poll(int(timeout * 1000)):
                reps = wire.unpack_replies(s.recv())
                seq, status, payload = reps[0]
                out.append(payload if status == wire.OK else wire.error_for(status, payload))
            else:
                out.append(ShardUnavailable(f"{ep} did not answer within {timeout:g}s"))
            s.close(0)
    finally:
        ctx.term()
    return out
