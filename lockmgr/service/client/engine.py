"""The client engine: one DEALER per shard shared by every thread and task of
a client, the session (HELLO, heartbeats, lease), retries and deadlines.

Interface:
    _Engine(endpoints, session_ttl, partition_depth, request_timeout, name, curve=None)
        (curve: a security.ClientCurve; its key pair authenticates every socket, encrypted)
        .call_many(specs) -> [result or exception]     a synchronous batch of shard calls
        .submit(calls)                                   callbacks (fire-and-forget)
        .submit_async(calls, drv), .loop_driver(loop)    asyncio calls
        .post(shard, typ, args)                          fire-and-forget
        .check_session(), .shutdown()
        .add_listener(fn), .remove_listener(fn), .state, .gen, .renew(), .begin_session()   (session states)
        .txn_on_lost(core, fn), .valid_for(core), .watch_registry                    (issue 15)
        .n, .endpoints, .epoch, .partition_depth, .request_timeout, .session, .dead, .closed
    _Call, _Waiter, _LoopDriver
    Owner                       who owns the sockets (docs/service.md ("Client engine ownership"))

Structure (leader/follower): a caller that finds the sockets free owns them,
sends its own frame and receives its own reply (no thread switch); callers
that arrive meanwhile queue their calls, which the owner sends coalesced in
one frame per shard (pipelining) and completes; an asyncio event loop owns
them the same way while its calls are outstanding, serving them from
``add_reader`` callbacks (``_LoopDriver``); a housekeeping thread sends
heartbeats, serves asyncio calls when their loop does not own the sockets and
picks up answers no one is waiting for; deadlines, retries and the session
lease are checked by whoever owns the sockets. Design: docs/service.md
("Client engine", "Client engine ownership"). Protocol: docs/protocol.md.
"""

import collections
import enum
import heapq
import itertools
import logging
import os
import random
import select
import threading
import time
from typing import Optional, Union

import zmq

from .. import wire, zdirect
from ..zdirect import Poller
from ...errors import ClientForked, InvalidRequest, SessionExpired, ShardUnavailable, TransactionAborted
from ..routing import parse_endpoints
from ...rules import ACTIVE as _ACTIVE, PREPARED as _PREPARED
from .notify import Dispatcher, SessionState
from . import hot as _hot
from .hot import Mutex as _Mutex     # C-level acquire/release: taken 2-3 times per call

# _Engine's base class: compiled, the extension type engine.pxd cimports from
# _hot (Cython binds the name; an import here would be an assignment to it);
# the pure-Python build takes hot's Python class from here (linters cannot see it).
globals().setdefault("EngineBase", _hot.EngineBase)

_monotonic = time.monotonic    # (a module global: no attribute lookup on the time module per call)
# one line per notable event (session expired or ended, a shard restarted, a
# no-wait release that failed); never on the hot path
_log = logging.getLogger("lockmgr.client")

# Bumped in every forked child: an engine made before the fork sees a newer value
# and refuses every call at once (ClientForked) -- its ZeroMQ context, sockets,
# housekeeping thread and lock are the parent's, and using them would hang
# (docs/service.md, "Clients and fork()").
_FORKS = [0]
_heappush, _heappop = heapq.heappush, heapq.heappop     # (no module attribute lookup per call)


def _after_fork_in_child():
    _FORKS[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ------------------------------------------------------------------- engine

class _Waiter:
    """The calls of one synchronous ``call_many``: a binary semaphore the thread
    sleeps on, woken when its last call completes or when it is promoted to
    be the socket owner (leader). Every field is changed under ``_Engine._mu``."""

    __slots__ = ("ev", "left", "signalled", "promoted", "since")

    def __init__(self, n, since):
        # the semaphore (a Lock, held while not signalled) is made only when the
        # thread is about to sleep on it (_Engine._follow): a caller that owns the
        # sockets and gets its answers itself -- the usual case -- never needs one
        self.ev = None
        self.left = n
        self.signalled = False
        self.promoted = False
        self.since = since

    def signal(self):
        if not self.signalled:
            self.signalled = True
            if self.ev is not None:
                self.ev.release()


class _Call:
    __slots__ = ("shard", "typ", "args", "seq", "result", "error", "deadline", "first_sent", "backoff", "w",
                 "cb", "done", "urgent")

    def __init__(self, shard, typ, args, deadline, w=None, cb=None, urgent=False):
        self.shard = shard
        self.typ = typ
        self.args = args
        self.seq = 0
        self.result = None
        self.error = None
        self.deadline = deadline
        self.first_sent = 0.0
        self.backoff = 0.0
        self.w = w
        self.cb = cb
        self.done = False
        self.urgent = urgent     # a callback that someone must receive promptly (asyncio, HELLO)


class _Reclaim:
    """A reclaim in progress on one restarted shard (``_Engine._reclaims``)."""

    __slots__ = ("old", "new", "since", "waiting", "left", "cores")

    def __init__(self, old, new, since):
        self.old = old              # the epoch the locks were granted in
        self.new = new              # the shard's epoch now
        self.since = since
        self.waiting = False        # for an answer to be recorded (ops._settled)
        self.left = 0               # RECLAIM requests unanswered
        self.cores = {}             # txn id -> _TxnCore reclaimed


def _next_try(c, sent):
    """When call ``c``, sent at ``sent``, is retried: a backoff later, never past its deadline."""
    when = sent + c.backoff
    if c.deadline is not None and c.deadline < when:
        return c.deadline
    return when


def _depth(item):
    return len(item[0])


class Owner(enum.Enum):
    """Who owns the engine's sockets (``_Engine._owner_kind``); docs/service.md
    ("Client engine ownership") has the transitions."""

    NONE = enum.auto()           # no one: the next caller takes them
    SYNC_CALLER = enum.auto()    # a thread in call_many; _Engine._owner is its _Waiter
    SENDER = enum.auto()         # a thread in submit that sends what is queued and lets go at once
    HOUSEKEEPER = enum.auto()    # the housekeeping thread
    LOOP = enum.auto()           # an asyncio event loop; _Engine._owner is its _LoopDriver


# The members as module globals: the hot path compares them, and ``Owner.NONE``
# (an attribute of an Enum class) costs several times a global's lookup.
_NONE, _SYNC_CALLER, _SENDER, _HOUSEKEEPER, _LOOP = (Owner.NONE, Owner.SYNC_CALLER, Owner.SENDER,
                                                      Owner.HOUSEKEEPER, Owner.LOOP)

_OK = wire.OK
_MAX_REQUESTS = wire.MAX_REQUESTS
_pack_requests, _pack_request = wire.pack_requests, wire.pack_request
# the socket calls of the hot path: libzmq's own where possible (zdirect.py)
_unpack_replies, _REPLY_SHAPES = wire.unpack_replies, wire.REPLY_SHAPES
# the most two machines' monotonic clocks may differ in rate (a fraction: 1000 ppm,
# ten times what commodity crystal oscillators drift)
MAX_CLOCK_DRIFT = 0.001
RECLAIM_WAIT = 0.1   # s a reclaim waits for a thread to record a lock answer it received
MAX_RECLAIM = wire.MAX_BATCH   # locks in one RECLAIM request
_ORPHAN_DELAY = 0.002  # s an unowned, unanswered call may wait before the housekeeper receives it
_HEAP_SWEEP_MIN = 256  # timers: the smallest heap that _push_timer sweeps of answered calls
_HANDOFF_AFTER = 0.002  # s: an owner whose calls are older than this hands the sockets to a newer caller
# session states (notify.SessionState) as module globals, and when a session counts as
# SUSPENDED: less than this fraction of its lease is left on some shard (heartbeats go
# every ttl/4, so a healthy session keeps more than 3/4 of it)
_S_CONNECTED, _S_SUSPENDED, _S_RECONNECTED, _S_LOST = (SessionState.CONNECTED, SessionState.SUSPENDED,
                                                      SessionState.RECONNECTED, SessionState.LOST)
SUSPEND_LEFT = 0.5
VALID_MARGIN = 0.1      # Transaction.valid_for(): the lease left less this fraction of the TTL
_PUSH_WATCH_DELAY = 0.003  # s the sockets stay free before the housekeeper watches them for notices


class _Engine(EngineBase):  # type: ignore[name-defined]  # noqa: F821  (see above)
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

    def __init__(self, endpoints, session_ttl, partition_depth, request_timeout, name, curve=None, cache_on=False):
        if type(session_ttl) is bool or not isinstance(session_ttl, (int, float)) or not 0.05 <= session_ttl <= 3600:
            raise InvalidRequest(f"session_ttl must be a number of seconds in 0.05..3600; got {session_ttl!r}")
        if type(request_timeout) is bool or not isinstance(request_timeout, (int, float)) or not request_timeout > 0:
            raise InvalidRequest(f"request_timeout must be a number of seconds > 0; got {request_timeout!r}")
        if partition_depth is not None and (type(partition_depth) is not int or not 1 <= partition_depth <= 32):
            raise InvalidRequest(f"partition_depth must be None or an int in 1..32; got {partition_depth!r}")
        self.endpoints = parse_endpoints(endpoints)
        self.n = len(self.endpoints)
        self.ttl = float(session_ttl)
        # the lease as this client counts it: ttl from the send time of the latest
        # request a shard answered, less what clock rates may differ by (the shard
        # counts ttl from when it handled that request, which is later); see
        # docs/service.md ("Sessions and leases")
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
        self._born = _FORKS[0]           # fork generation (ClientForked in a child)
        self._pid = os.getpid()
        self.session = random.SystemRandom().getrandbits(63) | 1
        self.epoch = [0] * self.n
        self.dead = None                 # the message once the session has expired / closed
        self.closed = False
        self._close_sent = False         # CLOSE went to every shard (once the session is dead)
        self._deferred_error = None      # a no-wait release's failure, for the next call
        self._lease_base = [0.0] * self.n
        self._hb_sent = [None] * self.n  # send time of the outstanding heartbeat, or None
        self._hello_pending = [False] * self.n
        self._secret = [None] * self.n   # per shard: the session's secret (from HELLO) to re-bind it
        self._grace_until = [0.0] * self.n   # per shard: when its grace period after a restart ends at the latest
        # lock reclaim after a shard restart (docs/service.md, "Restarts: reclaim and grace")
        self.txns = {}                   # txn id -> _TxnCore of the active transactions holding locks
        self._reclaims = {}              # shard -> _Reclaim in progress
        self.reclaim_waiting = False     # a reclaim waits for answers to be recorded (ops._settled)
        self._parked = [dict() for _ in range(self.n)]   # seq -> call the shard did not know the session for
        # replica sets (docs/replication.md): a locate.Locator finds a shard's new primary when it
        # stops answering or answers E_NOT_PRIMARY; the owner re-points the socket (repoint)
        self.locator = None
        self._repoints = {}              # shard -> the endpoint its socket moves to at the next turn
        self.repoints = 0                # sockets moved to a new primary
        self._ctx = zmq.Context()
        self._socks = []
        for ep in self.endpoints:
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.RCVHWM, 0)
            if curve is not None:        # CURVE: authenticated and encrypted (docs/security.md)
                try:
                    curve.apply(s, len(self._socks))
                except BaseException:
                    s.close(0)
                    for o in self._socks:
                        o.close(0)
                    self._ctx.term()
                    raise
            s.connect(ep)
            self._socks.append(s)
        self._fds = [s.getsockopt(zmq.FD) for s in self._socks]   # watched by an asyncio owner
        # the hot paths' calls on them (zdirect.Conn: the libzmq handle read once)
        self._conns = [zdirect.Conn(s) for s in self._socks]
        self._driver = None              # the _LoopDriver of the event loop that used the client last
        self._mu = _Mutex()
        self._session_cv = threading.Condition(self._mu)    # a (new) session opened, or failed to
        # who owns the sockets: _owner_kind (an Owner) and _owner (the owning
        # _Waiter for SYNC_CALLER, _LoopDriver for LOOP, else None), changed
        # together, under _mu, only by _set_owner
        self._owner_kind = _NONE
        self._owner: "Optional[Union[_Waiter, _LoopDriver]]" = None
        self._polling = False            # the owner sleeps in poll (wake it through the pipe)
        self._pipe_full = False          # a wake byte is in the pipe
        self._followers = {}             # id -> _Waiter of sync callers waiting for an owner's service
        self.reclaims = 0                # reclaims started (shard restarts seen)
        self.handoffs = 0                # times a long-waiting owner handed the sockets to a newer caller
        self._urgent = 0                 # outstanding calls someone must receive promptly
        self._orphaned_at = None         # when an owner last let go with calls unanswered
        self._hk_ev = threading.Event()
        self._hk_wake_at = 0.0
        # notices pushed by the shards (wire.PUSH_SEQ): handlers by kind; while
        # _push_wanted > 0 the housekeeper also watches the sockets' ZMQ_FDs when
        # no one owns them, so a notice is read within a moment, not at the next call
        self._push_handlers = {wire.N_TXN_LOST: self._on_txn_lost_push}
        self._push_wanted = 0
        self._free_since = 0.0           # when the last owner let go (the watch starts _PUSH_WATCH_DELAY later)
        self.pushes = 0                  # notices received
        self._hk_selecting = False       # the housekeeper sleeps in select (wake it through _hk_w)
        # session states and listeners (docs/service.md, "Session states and listeners"):
        # ``gen`` counts the sessions this engine opened (a transaction of an older one
        # raises SessionExpired); after LOST a new session is opened when something
        # needs one (renew), at once while listeners or watches want it
        self.gen = 0
        self.state = _S_CONNECTED
        self.last_dead = None            # why the latest session ended
        self._listeners = []
        self._dispatch = Dispatcher()
        self._renew_wanted = False
        self.renewals = 0                # new sessions opened after LOST
        self.lost_cbs = {}               # txn id -> _TxnCore with on_lost callbacks
        self._lost_wanted = False        # N_TXN_LOST notices are wanted (someone used on_lost)
        self.watchers = 0                # open watches (watch.py): they want a session back at once
        self.watch_registry = None       # watch.WatchRegistry, once the client watches
        self.valid_margin = VALID_MARGIN * self.ttl
        self._hk_r, self._hk_w = os.pipe()
        os.set_blocking(self._hk_r, False)
        os.set_blocking(self._hk_w, False)
        # lock caching (cache.py): CACHE_ON follows every HELLO; the cache's sweep,
        # run by the housekeeper under _mu (returns when it is next due)
        self.cache_on = bool(cache_on)
        self.cache_tick = None
        self.cache_clear = None          # (the cache) empty it: the session it was kept in is gone
        self._seq = [1] * self.n
        self._pending = [dict() for _ in range(self.n)]
        self._outq = collections.deque()
        self._heap = []
        self._heap_limit = _HEAP_SWEEP_MIN      # sweep the answered calls' timers at this size (_push_timer)
        self._tick = itertools.count()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        # zmq_poll's items: every shard socket (bit i: shard i), then the wake pipe (bit n)
        self._poller = Poller(self._socks + [self._wake_r])
        self._ready = threading.Event()
        self._hello_error = None
        self._hello_left = self.n
        self._thread = threading.Thread(target=self._housekeeper, name="lockmgr-client-io", daemon=True)
        self._thread.start()
        # Open the session on every shard; wait for all of them.
        now = _monotonic()
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

    def repoint(self, i, endpoint):
        """Shard ``i``'s primary is now at ``endpoint`` (a replica set failed over): the
        socket owner moves the socket at its next turn and sends what is in flight there."""
        with self._mu:
            if endpoint == self.endpoints[i]:
                return
            self._repoints[i] = endpoint
            if self._owner_kind is _NONE:
                self._orphaned_at = _monotonic() - _ORPHAN_DELAY
                self._wake_hk()
            else:
                self._wake_owner_locked()

    def _apply_repoints(self):
        """(the owner, under _mu) Move the sockets of re-pointed shards; resend their calls."""
        todo, self._repoints = self._repoints, {}
        for i, ep in todo.items():
            old = self.endpoints[i]
            s = self._socks[i]
            try:
                s.disconnect(old)
            except zmq.ZMQError:
                pass
            s.connect(ep)
            self.endpoints[i] = ep
            self.repoints += 1
            _log.info("session %#x: shard %d moved from %s to %s (its primary)", self.session, i, old, ep)
            if self.dead is None and not self._hello_pending[i] and self._hello_left == 0:
                # a new primary: open the session there first (it knows it from the log and holds
                # the session's other requests in its grace period until the reclaim is done)
                now = _monotonic()
                self._send_hello(i, now)
                self._send_all(now)
            reqs = []
            for seq, c in self._pending[i].items():
                if not c.done:
                    req = [c.typ, seq]
                    req.extend(c.args)
                    reqs.append(req)
            if reqs:
                self._send_frame(i, reqs)

    def _refused_locked(self, calls):
        """Fail ``calls`` if the session is dead or the client closed (under _mu)."""
        if self.dead is not None or self.closed:
            for c in calls:
                self._fail(c, SessionExpired(self.dead or "the client was closed"))
            return True
        return False

    def forked(self):
        """The error to raise if this process is a fork of the one that made the engine, else None."""
        if self._born == _FORKS[0]:
            return None
        return ClientForked(f"this client (session {self.session:#x}) was connected in process {self._pid} "
                            f"and cannot be used in a forked child (pid {os.getpid()}): its sockets and "
                            f"session belong to the parent; connect a new client in the child")

    def submit(self, calls):
        """Queue calls completed through their callbacks (asyncio, fire-and-forget).
        The calling thread sends them itself when no one owns the sockets."""
        if self._born != _FORKS[0]:
            raise self.forked()
        mu = self._mu
        mu.acquire()
        try:
            if self._refused_locked(calls):
                return
            for c in calls:
                if c.urgent:
                    self._urgent += 1
            self._outq.extend(calls)
            kind = self._owner_kind
            if kind is _NONE:
                self._set_owner(_SENDER)
                try:
                    self._send_all(_monotonic())
                finally:
                    self._leave_locked()
            elif kind is _LOOP and self._owner.tid == threading.get_ident():
                self._drv_io(self._owner)   # e.g. a RELEASE posted by a coroutine while its loop owns the sockets
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
        if self._born != _FORKS[0]:
            raise self.forked()
        mu = self._mu
        mu.acquire()
        try:
            if self._refused_locked(calls):
                return
            self._urgent += len(calls)
            self._outq.extend(calls)
            if self._owner_kind is _NONE:
                self._set_owner(_LOOP, drv)
                self._polling = True     # others wake it through the pipe, which the loop watches
                drv.attach()
            if self._owner is drv:
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
        now = _monotonic()
        drv.last_io = now
        if self.closed or self.dead is not None or (self._hello_left == 0
                                                     and now > self._lease_end()):
            self._turn_locked(now)        # fails every call
        else:
            if self.reclaim_waiting:
                self._retry_reclaims(now)
            if self._repoints:
                self._apply_repoints()    # a replica set's primary moved (Locator): as _turn_locked
            if send and self._outq:
                self._send_all(now)
            heap = self._heap
            if heap and heap[0][0] <= now:
                self._timers(now)
        if self._owner is drv:
            for i in range(self.n):
                self._recv(i, True)
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
        self.submit([_Call(shard, typ, args, _monotonic() + self.request_timeout)])

    def post_quiet(self, shard, typ, args):
        """A no-wait release (its request carries the quiet flag): queued to leave in
        the next frame to that shard -- another call's, or the housekeeper's within
        _ORPHAN_DELAY. The shard answers it only along with its next reply to the
        session (or to a retry); it is retried as any call until then. A failure is
        raised by the next call on the session (``check_session``)."""
        if self._born != _FORKS[0]:
            raise self.forked()
        c = _Call(shard, typ, args, _monotonic() + self.request_timeout, cb=self._on_quiet)
        with self._mu:
            if self._refused_locked([c]):
                return
            self._outq.append(c)
            if self._owner_kind is _NONE:
                if self._orphaned_at is None:
                    self._orphaned_at = _monotonic()
                if self._hk_wake_at > self._orphaned_at + _ORPHAN_DELAY:
                    self._wake_hk()
            else:
                self._wake_owner_locked()

    def _on_quiet(self, c):
        """A no-wait release was answered (under _mu): keep a failure for the next call."""
        if c.error is not None and not isinstance(c.error, SessionExpired):
            _log.warning("session %#x: a no-wait %s on shard %d failed: %s", self.session,
                         wire.TYPE_NAMES.get(c.typ, c.typ), c.shard, c.error)
            if self._deferred_error is None:
                self._deferred_error = c.error

    def on_push(self, kind, fn):
        """Call ``fn(shard_index, payload)`` for each notice of ``kind`` (payload[0])
        a shard pushes (docs/protocol.md, "Notices"). ``fn`` runs in whichever thread
        owns the sockets, with the engine's lock held: it must be quick and must not
        call the engine (hand the work to a queue, an Event, a loop's
        call_soon_threadsafe). An exception in it is logged and otherwise ignored."""
        with self._mu:
            if fn is None:
                self._push_handlers.pop(kind, None)
            else:
                self._push_handlers[kind] = fn

    def want_pushes(self, delta):
        """Count a user of notices in (+1) or out (-1): while any is counted, a
        notice is read as soon as it arrives, even when no call is outstanding."""
        with self._mu:
            n = self._push_wanted + delta
            if n < 0:
                raise ValueError("want_pushes: more users counted out than in")
            self._push_wanted = n
            self._wake_hk()

    def _on_push(self, i, status, payload):
        """A notice from shard ``i`` (under _mu, in the socket owner's thread)."""
        if status != _OK or type(payload) is not list or not payload:
            return
        self.pushes += 1
        fn = self._push_handlers.get(payload[0])
        if fn is None:
            return             # a kind this client does not use
        try:
            fn(i, payload)
        except Exception:
            _log.exception("lockmgr client: a notice handler failed (kind %r)", payload[0])

    def _wake_hk(self):
        """Wake the housekeeper (from its Event wait, or its select on the sockets)."""
        self._hk_ev.set()
        if self._hk_selecting:
            try:
                os.write(self._hk_w, b"x")
            except OSError:
                pass

    def _read_pushes_locked(self):
        """The owner, about to let go while notices are wanted: read what the sockets
        hold (reading ZMQ_EVENTS also re-arms their ZMQ_FD for the housekeeper's select)."""
        conns = self._conns
        for _ in range(4):
            if self._outq and self.dead is None and not self.closed:
                # what is queued (lock caching's give-ups, queued by notice handlers) goes
                # first: a send may consume the ZMQ_FD's edge, so EVENTS is read after it
                self._send_all(_monotonic())
            for i in range(self.n):
                if conns[i].readable():
                    self._recv(i, True)
            if not self._outq or self.dead is not None or self.closed:
                break

    def lease_over(self):
        """True once the session is dead for this client (lease ran out, or expired)."""
        if self.dead is not None:
            return True
        if not self._hello_left and _monotonic() > self._lease_end():
            self._expire_unlocked()
            return self.dead is not None
        return False

    def _lease_end(self):
        """When the session's lease may have run out on some shard, by this client's
        clock (the earliest lease base plus the lease; a loop, not min(): this is on
        every call's path)."""
        bases = self._lease_base
        m = bases[0]
        for k in range(1, len(bases)):
            if bases[k] < m:
                m = bases[k]
        return m + self.lease

    def check_session(self):
        """Raise SessionExpired if the session is over; else the failure of a no-wait
        release answered since the last call, if any (once)."""
        if self._born != _FORKS[0]:
            raise self.forked()
        if self.dead is not None:
            raise SessionExpired(self.dead)
        if self._hello_left:
            self.renew()          # a new session is being opened (after LOST): wait for it
        elif _monotonic() > self._lease_end():
            self._expire_unlocked()
            dead = self.dead
            if dead is not None:
                raise SessionExpired(dead)
        err = self._deferred_error
        if err is not None:
            self._deferred_error = None
            raise err

    def shutdown(self):
        if self._born != _FORKS[0]:
            self.closed = True        # a forked child: the sockets, thread and session are the parent's
            return
        with self._mu:
            if self.closed:
                return
            if self.lost_cbs:
                err = SessionExpired(self.dead or "the client was closed")
                for core in list(self.lost_cbs.values()):
                    self._txn_lost_locked(core, err)
            if self.watch_registry is not None:
                self.watch_registry.client_closed()
            self.closed = True
            self._session_cv.notify_all()
            self._wake_owner_locked()
        self._wake_hk()
        self._dispatch.stop()
        self._thread.join(5.0)
        deadline = _monotonic() + 5.0
        while self._owner_kind is not _NONE and _monotonic() < deadline:
            with self._mu:
                self._wake_owner_locked()
            time.sleep(0.001)
        for c in self._conns:
            c.close()                 # (a late call now fails: the handles would dangle)
        for s in self._socks:
            s.close(0)
        self._ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)
        os.close(self._hk_r)
        os.close(self._hk_w)

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

    def _expire_unlocked(self):
        with self._mu:
            if self.dead is None and not self._hello_left and _monotonic() > self._lease_end():
                self._expire_local()

    def _expire_local(self):
        if self.dead is None:
            self.dead = (f"session {self.session:#x} expired: no heartbeat was acknowledged by every shard "
                         f"within its TTL of {self.ttl:g}s; its locks have been released")
            _log.warning("%s (client %s)", self.dead, self.name)
            self._session_lost_locked()

    # -- session states, listeners, a new session after LOST (under _mu unless said otherwise);
    # docs/service.md ("Session states and listeners")

    def add_listener(self, fn):
        """Call ``fn(state)`` (a SessionState) at each change of the session's state,
        on the client's notification thread, in order."""
        if not callable(fn):
            raise InvalidRequest(f"a listener must be callable; got {fn!r}")
        with self._mu:
            if self.closed:
                raise SessionExpired("the client was closed")
            self._listeners.append(fn)
            self._wake_hk()            # it watches the lease for SUSPENDED from now on

    def remove_listener(self, fn):
        """Stop calling ``fn`` (InvalidRequest if it is not a listener)."""
        with self._mu:
            try:
                self._listeners.remove(fn)
            except ValueError:
                raise InvalidRequest(f"{fn!r} is not a listener of this client") from None

    def _set_state_locked(self, event):
        """Move to the state of ``event`` and queue the listeners' calls."""
        state = _S_CONNECTED if event is _S_RECONNECTED else event
        if state is self.state and event is not _S_CONNECTED:
            return
        self.state = state
        if event is _S_LOST or event is _S_CONNECTED:
            _log.info("session %#x of client %s: %s", self.session, self.name, event.value)
        for fn in self._listeners:
            self._dispatch.put(fn, event)

    def _check_state_locked(self, now):
        """SUSPENDED when less than SUSPEND_LEFT of the lease is left on some shard or a
        reclaim is under way; RECONNECTED when neither is true any more."""
        if self.dead is not None or self._hello_left or self.closed:
            return
        low = self._lease_end() - now < self.lease * SUSPEND_LEFT or bool(self._reclaims)
        if self.state is _S_CONNECTED:
            if low:
                self._set_state_locked(_S_SUSPENDED)
        elif self.state is _S_SUSPENDED and not low:
            self._set_state_locked(_S_RECONNECTED)

    def _suspend_at(self):
        """When the session would become SUSPENDED, for the housekeeper's sleep."""
        return self._lease_end() - self.lease * SUSPEND_LEFT

    def _session_lost_locked(self):
        """The session just died (``dead`` is set): LOST, every on_lost callback, and a
        new session at once if listeners or watches want one."""
        self.last_dead = self.dead
        if self.closed:
            return
        self._set_state_locked(_S_LOST)
        if self.lost_cbs:
            err = SessionExpired(self.dead)
            for core in list(self.lost_cbs.values()):
                self._txn_lost_locked(core, err)
        if self._listeners or self.watchers:
            self._renew_wanted = True
            if self._owner_kind is _NONE:
                self._hand_to_hk_locked()
            else:
                self._wake_owner_locked()

    def renew(self, timeout=None):
        """Make sure a session is open: after LOST, have the socket owner open a new
        one (``_renew_locked``) and wait for it, up to ``timeout`` (default: the
        request timeout): ShardUnavailable if a shard does not answer by then (the
        client keeps trying); SessionExpired if the client was closed. Any thread,
        not under _mu."""
        if self._born != _FORKS[0]:
            raise self.forked()
        deadline = _monotonic() + (self.request_timeout if timeout is None else timeout)
        with self._session_cv:
            while True:
                if self.closed:
                    raise SessionExpired("the client was closed")
                if self.dead is None and not self._hello_left:
                    if _monotonic() <= self._lease_end():
                        return
                    self._expire_local()
                if self._hello_error is not None and self.gen:
                    raise self._hello_error
                if self.dead is not None and not self._renew_wanted:
                    self._renew_wanted = True
                    if self._owner_kind is _NONE:
                        self._hand_to_hk_locked()
                    else:
                        self._wake_owner_locked()
                left = deadline - _monotonic()
                if left <= 0:
                    missing = [self.endpoints[i] for i in range(self.n) if self._hello_pending[i]]
                    raise ShardUnavailable(f"a new session (after {self.last_dead}) could not be opened within "
                                           f"{self.request_timeout:g}s: no answer to HELLO from {missing}; "
                                           f"the client keeps trying")
                self._session_cv.wait(min(left, 0.5))

    def request_renew(self):
        """``renew`` without waiting (an asyncio caller): returns the generation the
        next transaction will belong to."""
        with self._mu:
            if self.closed:
                raise SessionExpired("the client was closed")
            if self.dead is None and not self._hello_left and _monotonic() > self._lease_end():
                self._expire_local()
            if self.dead is None:
                return self.gen
            if not self._renew_wanted:
                self._renew_wanted = True
                if self._owner_kind is _NONE:
                    self._hand_to_hk_locked()
                else:
                    self._wake_owner_locked()
            return self.gen + 1

    def begin_session(self):
        """For ``Client.begin``: make sure a session is open (a new one is opened
        after LOST; see ``renew``), then ``check_session``."""
        if self.dead is not None or self._hello_left:
            self.renew()
        try:
            self.check_session()
        except SessionExpired:
            if self.closed:
                raise
            self.renew()          # the lease ran out just now: a new session
            self.check_session()

    def _renew_locked(self, now):
        """(the owner) Open a new session in place of the dead one, whose calls have
        failed and whose CLOSE has gone out (``_turn_locked``). Sequence numbers go on
        from the old session's (a late answer to it can never complete a new call)."""
        self._renew_wanted = False
        old = self.session
        self.gen += 1
        self.renewals += 1
        self.session = random.SystemRandom().getrandbits(63) | 1
        _log.info("client %s: session %#x is gone (%s); opening session %#x", self.name, old, self.last_dead,
                  self.session)
        n = self.n
        self.dead = None
        self._close_sent = False
        self._deferred_error = None
        self.epoch = [0] * n
        self._lease_base = [now] * n
        self._hb_sent = [None] * n
        self._hello_pending = [False] * n
        self._secret = [None] * n
        self._grace_until = [0.0] * n
        self.txns = {}
        if self.cache_clear is not None:
            self.cache_clear()            # the cached locks went with the old session
        self._reclaims = {}
        self.reclaim_waiting = False
        self._parked = [dict() for _ in range(n)]
        self._hello_error = None
        self._hello_left = n
        self._ready.clear()
        for i in range(n):
            self._send_hello(i, now)

    # -- per transaction: lost locks (on_lost), under _mu unless said otherwise

    def txn_on_lost(self, core, fn):
        """Call ``fn(error)`` once ``core``'s locks are known to be gone (any thread)."""
        if not callable(fn):
            raise InvalidRequest(f"on_lost takes a callable; got {fn!r}")
        with self._mu:
            if not self._lost_wanted:
                self._lost_wanted = True
                self._push_wanted += 1      # N_TXN_LOST notices are read as they arrive
                self._wake_hk()
            if core.lost is not None:
                self._dispatch.put(fn, core.lost)
                return
            if core.state is not _ACTIVE and core.state is not _PREPARED:
                return                      # finished: its locks were released, not lost
            if core.gen != self.gen or self.dead is not None:
                self._txn_lost_locked(core, SessionExpired(self.last_dead or "the session expired"))
                self._dispatch.put(fn, core.lost)
                return
            if core.lost_cbs is None:
                core.lost_cbs = []
            core.lost_cbs.append(fn)
            self.lost_cbs[core.id] = core

    def txn_lost(self, core, err):
        """(any thread) ``core``'s locks are gone: its on_lost callbacks, once."""
        with self._mu:
            self._txn_lost_locked(core, err)

    def _queue_locked(self, calls):
        """(under _mu, any thread) Queue calls completed through their callbacks and
        make sure an owner sends them."""
        for c in calls:
            if c.urgent:
                self._urgent += 1
            self._outq.append(c)
        if self._owner_kind is _NONE:
            self._hand_to_hk_locked()
        else:
            self._wake_owner_locked()

    def _txn_lost_locked(self, core, err):
        if core.lost is not None:
            return
        core.lost = err
        self.lost_cbs.pop(core.id, None)
        cbs = core.lost_cbs
        core.lost_cbs = None
        if cbs:
            for fn in cbs:
                self._dispatch.put(fn, err)

    def _on_txn_lost_push(self, i, payload):
        """N_TXN_LOST [1, txn, status, message]: the shard dropped the txn's locks."""
        if len(payload) < 4:
            return
        core = self.lost_cbs.get(payload[1])
        if core is not None:
            self._txn_lost_locked(core, wire.error_for(payload[2], payload[3]))

    def forget_txn(self, core):
        """A transaction with on_lost callbacks finished (commit/abort): drop them."""
        with self._mu:
            self.lost_cbs.pop(core.id, None)
            core.lost_cbs = None

    def valid_for(self, core):
        """Seconds ``core``'s locks are certainly still held, by this client's clock."""
        st = core.state
        if st is _PREPARED:
            return float("inf")         # durable until decided: no lease ends them
        if (st is not _ACTIVE or core.lost is not None or core.doom or core.gen != self.gen
                or self.dead is not None or self._hello_left):
            return 0.0
        eps = self.epoch
        for s, e in core.touched.items():
            if (e and eps[s] != e) or s in self._reclaims:
                return 0.0
        left = self._lease_end() - _monotonic() - self.valid_margin
        return left if left > 0.0 else 0.0

    # -- ownership (under _mu)

    def _set_owner(self, kind, owner=None):
        """The one place the owner changes: ``kind`` (an Owner) and ``owner``,
        the _Waiter of a SYNC_CALLER or the _LoopDriver of a LOOP (else None)."""
        self._owner_kind = kind
        self._owner = owner

    def _wake_owner_locked(self):
        if self._owner_kind is _HOUSEKEEPER and not self._polling:
            self._wake_hk()
        if self._polling and not self._pipe_full:
            self._pipe_full = True
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def _hand_to_hk_locked(self):
        """Make the housekeeper the owner if no one is (it serves HELLOs, asyncio calls)."""
        if self._owner_kind is _NONE:
            self._set_owner(_HOUSEKEEPER)
            self._wake_hk()

    def _leave_locked(self):
        """The owner lets go of the sockets: promote a waiting follower, or hand
        the role to the housekeeper, or let go (unanswered lazy calls are picked
        up by the next owner, or by the housekeeper within _ORPHAN_DELAY)."""
        if self.closed:
            self._set_owner(_NONE)
            return              # every call has been failed; nothing left to serve
        fl = self._followers
        while fl:
            k = next(iter(fl))
            w = fl.pop(k)
            if w.left > 0:
                self._set_owner(_SYNC_CALLER, w)
                w.promoted = True
                w.signal()
                return
        if self._urgent > 0 or (self.dead is not None and (self._renew_wanted or self._any_pending())):
            self._set_owner(_HOUSEKEEPER)
            self._wake_hk()
            return
        if self._push_wanted > 0:
            self._read_pushes_locked()
            # the housekeeper watches the sockets once they have been free for
            # _PUSH_WATCH_DELAY (a busy client's replies would wake its select at
            # every call; meanwhile a notice rides with the next call's reply, or
            # is read when the watch starts): wake it only if it sleeps past that
            now = _monotonic()
            self._free_since = now
            if not self._hk_selecting and self._hk_wake_at > now + 4 * _PUSH_WATCH_DELAY:
                self._hk_ev.set()
        self._set_owner(_NONE)
        if self._outq or self._any_pending():
            now = _monotonic()
            if self._orphaned_at is None:
                self._orphaned_at = now
            if self._hk_wake_at > self._orphaned_at + _ORPHAN_DELAY:
                self._wake_hk()
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
        if self.cache_on:
            # (in the same frame, after the HELLO: the session caches locks; sent again
            # after every HELLO, as a restarted shard has forgotten it)
            self._outq.append(_Call(i, wire.CACHE_ON, [], now + self.request_timeout, cb=self._on_cache_on))

    def _on_cache_on(self, c):
        if c.error is not None and self.dead is None and not self.closed:
            _log.warning("session %#x: CACHE_ON on shard %d failed: %s", self.session, c.shard, c.error)

    def _on_hello(self, c):
        i = c.shard
        self._hello_pending[i] = False
        if c.error is not None:
            if isinstance(c.error, SessionExpired):
                self._expire_by_shard(str(c.error))
            elif self._hello_left > 0 and not isinstance(c.error, ShardUnavailable):
                self._hello_error = c.error
                self._ready.set()
                self._session_cv.notify_all()
            elif self.gen and self._hello_left > 0 and not self.closed and self.dead is None:
                self._send_hello(i, _monotonic())     # a new session (after LOST): keep trying
            return
        epoch, index, nshards, depth = c.result[:4]
        if len(c.result) > 4:
            self._secret[i] = c.result[4]
        if len(c.result) > 5 and c.result[5] > 0:
            # the shard restarted and holds requests until its grace period ends: calls
            # to it wait that long past their request timeout (_timers)
            self._grace_until[i] = _monotonic() + c.result[5] / 1000.0
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
        old = self.epoch[i]
        if self._hello_left == 0 and old and epoch != old:
            # shard i restarted: reclaim what the transactions hold there (the new epoch
            # is taken once that is done, so they are not aborted meanwhile)
            if c.first_sent > self._lease_base[i] + self.lease:
                self._expire_local()        # the lease had run out before this HELLO: nothing to reclaim
                return
            self._lease_base[i] = max(self._lease_base[i], c.first_sent)
            self._start_reclaim(i, old, epoch, time.monotonic())
            return
        self.epoch[i] = epoch
        self._lease_base[i] = max(self._lease_base[i], c.first_sent)
        if self._parked[i]:
            self._resend_parked(i)
        if self._hello_left > 0:
            self._hello_left -= 1
            if self._hello_left == 0 or self._hello_error is not None:
                self._ready.set()
                self._session_cv.notify_all()
                if self._hello_left == 0 and self._hello_error is None:
                    self._set_state_locked(_S_CONNECTED)
                    if self.gen and self.watch_registry is not None:
                        self.watch_registry.resync_all()      # a new session: watch again

    def _on_heartbeat(self, c):
        i = c.shard
        self._hb_sent[i] = None
        if c.error is None:
            self._lease_base[i] = max(self._lease_base[i], c.first_sent)
            if c.result[0] != self.epoch[i] and i not in self._reclaims:
                self.epoch[i] = c.result[0]
                if self.watch_registry is not None:
                    self.watch_registry.resync_shard(i)
        elif isinstance(c.error, SessionExpired):
            self._expire_by_shard(str(c.error))
        elif isinstance(c.error, ShardUnavailable) and "unknown session" in str(c.error):
            # the shard restarted: open the session again (transactions that held
            # locks there learn of the new epoch and abort)
            if not self._hello_pending[i] and self.dead is None:
                self._send_hello(i, _monotonic())
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

    # -- reclaim after a shard restart (under _mu); docs/service.md ("Restarts: reclaim and grace")

    def _park(self, i, c):
        """A call shard i answered 'unknown session' (it restarted): keep it, open
        the session again, and send it once the session's locks are reclaimed
        there. False if the session is over (the call fails)."""
        if self.dead is not None or self.closed or c.typ == wire.HEARTBEAT:
            return False                   # (a heartbeat's callback opens the session again)
        self._repend(i, c)
        self._parked[i][c.seq] = c
        if not self._hello_pending[i]:
            self._send_hello(i, time.monotonic())
        return True

    def _repend(self, i, c):
        """Put a call taken out of shard i's pending map back (an answer that keeps
        it: a restarted shard, a standby), in seq order: a frame's ack is the first
        pending seq, and the shard forgets its answers below the ack and refuses
        those seqs (E_STALE, unanswered), so a call put back at the end of the map
        would never be answered."""
        pending = self._pending[i]
        pending[c.seq] = c
        if next(iter(pending)) != min(pending):
            items = sorted(pending.items())
            pending.clear()
            pending.update(items)

    def _resend_parked(self, i):
        parked = self._parked[i]
        pending = self._pending[i]
        reqs = []
        for seq, c in list(parked.items()):
            if not c.done and pending.get(seq) is c:
                req = [c.typ, seq]
                req.extend(c.args)
                reqs.append(req)
        parked.clear()
        if reqs:
            self._send_frame(i, reqs)

    def _start_reclaim(self, i, old, new, now):
        r = self._reclaims.get(i)
        if r is not None and r.new == new:     # (a second answer to HELLO)
            return
        _log.info("session %#x: shard %d (%s) restarted (epoch %d -> %d); reclaiming its locks", self.session,
                  i, self.endpoints[i], old, new)
        r = self._reclaims[i] = _Reclaim(old, new, now)
        self._try_reclaim(i, r, now)

    def _retry_reclaims(self, now=None):
        now = time.monotonic() if now is None else now
        for i, r in list(self._reclaims.items()):
            if r.waiting:
                self._try_reclaim(i, r, now)

    def recorded(self):
        """ops: a lock answer was recorded (a reclaim may have waited for it)."""
        with self._mu:
            self._retry_reclaims()
            if self._outq:
                self._wake_owner_locked()
                if self._owner_kind is _NONE:
                    self._hand_to_hk_locked()

    def _try_reclaim(self, i, r, now):
        """Send RECLAIM to shard i: every active transaction's locks there, in one
        frame (MAX_RECLAIM locks a request). A transaction whose answer from the
        shard is received but not yet recorded by its thread is waited for (up to
        RECLAIM_WAIT; then it is left out and aborted: its locks are not reclaimed)."""
        old = r.old
        inflight = {c.args[0] for c in self._pending[i].values() if c.typ == wire.LOCK or c.typ == wire.LOCK_MANY}
        cores = []
        late = []
        for tid, core in list(self.txns.items()):
            if core.state is not _ACTIVE:
                if core.state is not _PREPARED:
                    self.txns.pop(tid, None)
                continue
            if core.touched.get(i) != old or core.doom:
                continue
            if i in core.busy and tid not in inflight:
                late.append(core)
                continue
            cores.append(core)
        if late and now - r.since < RECLAIM_WAIT:
            r.waiting = True
            self.reclaim_waiting = True
            return
        r.waiting = False
        self.reclaim_waiting = any(x.waiting for x in self._reclaims.values())
        for core in late:
            core.doom = (f"shard {i} restarted (epoch {old} -> {r.new}) before the answer of a lock of transaction "
                         f"{core.id} was recorded; its locks there were not reclaimed and the transaction has "
                         f"been aborted")
            if core.lost_cbs is not None:
                self._txn_lost_locked(core, TransactionAborted(core.doom))
        chunks = []
        cur, n = [], 0
        for core in cores:
            items = sorted(((list(p), m, t) for p, (m, t) in list(core.locks.get(i, {}).items())), key=_depth)
            r.cores[core.id] = core
            k = 0
            while True:
                room = MAX_RECLAIM - n
                part = items[k:k + room]
                cur.append([core.id, part])
                n += len(part)
                k += len(part)
                if n >= MAX_RECLAIM:
                    chunks.append(cur)
                    cur, n = [], 0
                if k >= len(items):
                    break
        if cur or not chunks:
            chunks.append(cur)
        r.left = len(chunks)
        dl = now + self.request_timeout
        for k, ch in enumerate(chunks):
            c = _Call(i, wire.RECLAIM, [old, k == len(chunks) - 1, ch], dl,
                      cb=lambda c, r=r: self._on_reclaim(c, r), urgent=True)
            self._urgent += 1
            self._outq.append(c)
        self.reclaims += 1

    def _on_reclaim(self, c, r):
        i = c.shard
        if c.error is not None:
            why = (f"shard {i} restarted (epoch {r.old} -> {r.new}) and the locks of transaction {{}} could not "
                   f"be reclaimed ({c.error}); the transaction has been aborted")
            for tid, _ in c.args[2]:
                core = r.cores.get(tid)
                if core is not None and not core.doom:
                    core.doom = why.format(tid)
                    if core.lost_cbs is not None:
                        self._txn_lost_locked(core, TransactionAborted(core.doom))
        else:
            for tid, why in c.result[1]:
                core = r.cores.get(tid)
                if core is not None:
                    core.doom = why
                    if core.lost_cbs is not None:
                        self._txn_lost_locked(core, TransactionAborted(why))
        r.left -= 1
        if r.left > 0 or self._reclaims.get(i) is not r:
            return
        for core in r.cores.values():
            if not core.doom and core.touched.get(i) == r.old:
                core.touched[i] = r.new
        del self._reclaims[i]
        self.reclaim_waiting = any(x.waiting for x in self._reclaims.values())
        self.epoch[i] = r.new
        self._resend_parked(i)
        if self.watch_registry is not None:
            self.watch_registry.resync_shard(i)      # the restarted shard has no watches

    def _expire_by_shard(self, msg):
        if self.dead is None:
            self.dead = msg
            _log.warning("session %#x of client %s ended by a shard: %s", self.session, self.name, msg)
            self._session_lost_locked()

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
        if self.dead is None and self._hello_left == 0 and now > self._lease_end():
            self._expire_local()
        if self.dead is not None:
            self._fail_all(SessionExpired(self.dead), keep_close=True)
            if self._renew_wanted:
                self._renew_locked(now)
        elif self._listeners:
            self._check_state_locked(now)
        if self.reclaim_waiting:
            self._retry_reclaims(now)
        if self._repoints:
            self._apply_repoints()
        if self._outq:
            self._send_all(now)
        heap = self._heap
        if heap and heap[0][0] <= now:
            self._timers(now)

    def _quiet_locked(self, now):
        """True if a loop turn (_turn_locked) at ``now`` would do nothing but send
        what is queued: nothing closed, expired, renewing, reclaiming, re-pointed,
        queued or due, and no listener to tell. A caller that takes the free sockets
        then sends its calls itself (_serve's first turn)."""
        heap = self._heap
        return (not self.closed and self.dead is None and self._hello_left == 0 and not self._outq
                and not self._listeners and not self.reclaim_waiting and not self._repoints
                and now <= self._lease_end() and not (heap and heap[0][0] <= now))

    def _any_pending(self):
        """True if a call is unanswered on some shard (any(), written out: on every call's path)."""
        for p in self._pending:
            if p:
                return True
        return False

    def _heap_top(self):
        """The time of the next retry/deadline of a call still unanswered, or None
        (entries of answered calls are dropped lazily, here and in _serve)."""
        heap = self._heap
        while heap and heap[0][2].done:
            _heappop(heap)
        return heap[0][0] if heap else None

    def _serve(self, w=None, calls=None, now=0.0):
        """Own the sockets until ``w``'s calls are done (or, for the
        housekeeper, ``w`` None, until nothing urgent is left); then hand the role on.
        Entered and left without ``_mu`` held; the caller is the owner.
        ``calls``: w's calls, not queued yet (call_many, taking free sockets at
        ``now``): sent in the first turn, straight out if the turn has nothing else
        to do (_quiet_locked), else queued behind what is there. Sent straight out,
        they get their retry timers only if the first poll does not answer them
        (the poll ends by their first retry; most are answered, and a timer
        pushed and popped unused costs more than the check).
        Returns True if ``w`` handed the role to a newer caller before its own
        calls were done (it then follows)."""
        mu = self._mu
        poller = self._poller
        n = self.n
        heap = self._heap
        hk = w is None
        cap = 0.1 if not hk else min(0.1, self.hb_interval)     # the longest poll
        demoted = False
        untimed = None      # calls sent straight out, without their retry timers yet
        due = 0.0           # ... and their first retry (or deadline)
        mu.acquire()
        try:
            while True:
                if calls is not None:
                    if self._quiet_locked(now):
                        due = self._send_calls(calls, now, False)     # the turn's only work: send them
                        untimed = calls
                    else:
                        self._outq.extend(calls)
                        self._turn_locked(now)
                    calls = None
                else:
                    now = _monotonic()
                    if hk:
                        # no one else queues heartbeats while the housekeeper owns the
                        # sockets (e.g. serving an asyncio lock wait longer than the TTL)
                        self._heartbeat_locked(now)
                    self._turn_locked(now)
                if hk:
                    if self._followers or (self._urgent <= 0 and not self._outq
                                           and (not self._any_pending() or self.closed)):
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
                        self._set_owner(_SYNC_CALLER, f)
                        f.promoted = True
                        f.signal()
                        demoted = True
                        return True
                # poll until the next retry/deadline of a call still unanswered (as
                # _heap_top, inline: this is every call's path), at most ``cap``
                nxt = now + cap
                while heap and heap[0][2].done:
                    _heappop(heap)
                if heap and heap[0][0] < nxt:
                    nxt = heap[0][0]
                if untimed is not None and due < nxt:
                    nxt = due
                timeout = max(0, int((nxt - now) * 1000) + 1)
                self._polling = True
                mu.release()
                try:
                    ready = poller.poll(timeout)
                finally:
                    mu.acquire()
                    self._polling = False
                if ready:
                    if ready >> n:
                        self._drain_wake_locked()
                    i = 0
                    while i < n:
                        if ready >> i & 1:
                            self._recv(i, False)
                        i += 1
                    if not hk and w.left == 0 and not self._outq and not (heap and heap[0][0] <= now):
                        return      # answered, and the turn the loop would run has nothing to send
                if untimed is not None:
                    self._time_calls(untimed)
                    untimed = None
        finally:
            if untimed is not None:
                self._time_calls(untimed)
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
                if self.closed and self._owner_kind is _NONE:
                    self._set_owner(_HOUSEKEEPER)
                owner = self._owner
                if self._owner_kind is _LOOP and (not owner.loop.is_running()
                                                  or _monotonic() - owner.last_io > self._drv_stall):
                    # a loop that stopped (or closed) while owning, or one blocked
                    # by its user's code (its timer has not run): it serves no one
                    # now, heartbeats included; take the sockets (safe: the loop
                    # touches them only under _mu after checking that it owns
                    # them; its stale callbacks let go when it runs again)
                    self._set_owner(_HOUSEKEEPER)
                    self._polling = False
                if self._owner_kind is _HOUSEKEEPER:
                    take = True
                else:
                    take = False
                    now = _monotonic()
                    if self._owner_kind is _NONE and not self.closed:
                        self._heartbeat_locked(now)
                        top = self._heap_top()
                        due = (self._outq or (top is not None and top <= now)
                               or (self._orphaned_at is not None and now >= self._orphaned_at + _ORPHAN_DELAY)
                               or (self.dead is None and self._hello_left == 0
                                   and now > self._lease_end())
                               or (self._renew_wanted and self.dead is not None))
                        if due:
                            self._set_owner(_HOUSEKEEPER)
                            take = True
                            self._orphaned_at = None
                    elif self._owner_kind is not _NONE:
                        before = len(self._outq)
                        self._heartbeat_locked(now)
                        if len(self._outq) != before:
                            self._wake_owner_locked()
            if take:
                self._serve()
                if self.closed:
                    with mu:
                        if self._owner_kind is _NONE:
                            return
                continue
            with mu:
                now = _monotonic()
                nxt = self._next_hb(now)
                top = self._heap_top()
                if top is not None and self._owner_kind is _NONE:
                    nxt = min(nxt, top)
                if self._orphaned_at is not None:
                    nxt = min(nxt, self._orphaned_at + _ORPHAN_DELAY)
                if self.dead is None and self._hello_left == 0:
                    nxt = min(nxt, self._lease_end() + 0.001)
                    if self._listeners:
                        self._check_state_locked(now)
                        if self.state is _S_CONNECTED:
                            nxt = min(nxt, self._suspend_at() + 0.001)
                if self.cache_tick is not None and self._owner_kind is _NONE:
                    nxt = min(nxt, self.cache_tick(now))    # lock caching: the idle-age sweep
                    if self._outq:
                        nxt = now                            # it queued give-ups: send them now
                if self.closed:
                    nxt = now + 0.005
                if self._owner_kind is _LOOP:
                    nxt = min(nxt, now + self._drv_stall / 2)    # check that its loop still runs
                nxt = max(nxt, now + 0.001)
                self._hk_wake_at = nxt
                watch = self._push_wanted > 0 and self._owner_kind is _NONE and not self.closed
                if watch and now < self._free_since + _PUSH_WATCH_DELAY:
                    watch = False                 # (just let go: see _leave_locked)
                    nxt = min(nxt, self._free_since + _PUSH_WATCH_DELAY)
                    self._hk_wake_at = nxt
                elif self._push_wanted > 0 and self._owner_kind is not _NONE:
                    # owned: look again within 4 delays (a letting-go owner wakes us
                    # only if we would sleep longer than that)
                    nxt = min(nxt, now + 4 * _PUSH_WATCH_DELAY)
                    self._hk_wake_at = nxt
                if watch:
                    # arm the ZMQ_FDs: they signal a new message only once a read found the
                    # socket empty (reading ZMQ_EVENTS does); read what is there meanwhile
                    self._set_owner(_HOUSEKEEPER)
                    try:
                        self._read_pushes_locked()
                    finally:
                        self._set_owner(_NONE)
                self._hk_selecting = watch
            if not watch:
                self._hk_ev.wait(nxt - now)
                self._hk_ev.clear()
                with mu:
                    self._hk_wake_at = 0.0
                continue
            # notices are wanted and no one owns the sockets: sleep on their ZMQ_FDs too
            # (edge-triggered: every owner reads ZMQ_EVENTS before letting go, which
            # re-arms them; see _read_pushes_locked)
            fds = [self._hk_r] + self._fds
            try:
                ready = select.select(fds, [], [], 0 if self._hk_ev.is_set() else nxt - now)[0]
            except (OSError, ValueError):
                ready = []
            self._hk_ev.clear()
            with mu:
                self._hk_selecting = False
                self._hk_wake_at = 0.0
                if self._hk_r in ready:
                    try:
                        os.read(self._hk_r, 4096)
                    except OSError:
                        pass
                if ready and self._owner_kind is _NONE and not self.closed and ready != [self._hk_r]:
                    self._set_owner(_HOUSEKEEPER)
                    try:
                        self._read_pushes_locked()
                    finally:
                        self._leave_locked()

    def _recv(self, i, drain):
        """Receive and complete what shard ``i``'s socket holds: every frame
        (``drain``: an asyncio owner, woken by the edge-triggered ZMQ_FD, reads
        until a read finds nothing, which re-arms it), or one frame (the poll
        loop: zmq_poll reports the socket again at once if more wait)."""
        pending = self._pending[i]
        conn = self._conns[i]
        lease = 0.0
        _shapes = _REPLY_SHAPES
        more = True
        while more:
            more = drain
            frame = conn.recv()
            if frame is None:
                break
            try:
                reps = _unpack_replies(frame)
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
                    if seq == 0:
                        self._on_push(i, status, payload)
                    continue
                if status == _OK:
                    shape = _shapes.get(c.typ)
                    if shape is not None and not shape(payload, c.args):
                        c.error = wire.malformed_reply(c.typ, payload)
                        self._complete(c)
                        continue
                    c.result = payload
                    if c.first_sent > lease:
                        lease = c.first_sent
                else:
                    if status == wire.E_NOT_PRIMARY and self.locator is not None:
                        # a standby: keep the call (retried at the primary once the socket moves)
                        self._repend(i, c)
                        hint = payload[1] if type(payload) is list and len(payload) == 2 else None
                        self.locator.suspect(i, hint if type(hint) is str else None)
                        continue
                    if status == wire.E_UNKNOWN_SESSION and c.typ != wire.HELLO and self._park(i, c):
                        continue      # sent again once the session is back there (a restarted shard)
                    c.error = wire.error_for(status, payload)
                    if status == wire.E_UNKNOWN_SESSION and c.typ not in (wire.HEARTBEAT, wire.HELLO):
                        c.error = ShardUnavailable(
                            f"shard {i} ({self.endpoints[i]}) does not know this session (it restarted?); "
                            f"{payload}")
                        if not self._hello_pending[i] and self.dead is None:
                            self._send_hello(i, _monotonic())
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
        calls = list(outq)
        outq.clear()
        self._send_calls(calls, now)

    def _send_calls(self, calls, now, timed=True):
        """Send ``calls`` (a seq each, in order; one frame per shard), each with its
        retry timer (``timed``; else the caller gives them theirs: _time_calls).
        Returns the earliest first retry (or deadline) among them."""
        frames = None
        single = len(calls) == 1
        pendings = self._pending
        seqs = self._seq
        retry = self.retry_interval
        due = now + retry
        for c in calls:
            if c.done:
                continue
            i = c.shard
            seq = seqs[i]
            seqs[i] = seq + 1
            c.seq = seq
            c.first_sent = now
            pendings[i][seq] = c
            c.backoff = retry
            when = _next_try(c, now)
            if when < due:
                due = when
            if timed:
                self._push_timer(when, c)
            if single:
                self._send_one(i, c)
            else:
                req = [c.typ, seq]
                req.extend(c.args)
                if frames is None:
                    frames = {}
                lst = frames.get(i)
                if lst is None:
                    frames[i] = [req]
                else:
                    lst.append(req)
        if frames is not None:
            for i, reqs in frames.items():
                self._send_frame(i, reqs)
        return due

    def _time_calls(self, calls):
        """The retry timers of sent calls still unanswered (see _send_calls)."""
        for c in calls:
            if not c.done:
                self._push_timer(_next_try(c, c.first_sent), c)

    def _push_timer(self, when, c):
        """Call ``c``'s next retry (or deadline) at ``when``. An answered call's
        timer is not taken out of the heap (that is O(n)); it is dropped when it
        comes to the top -- a retry interval later, a second of calls at full
        rate, each keeping its call, arguments and future alive for the garbage
        collector to walk (64 asyncio tasks: 300,000 objects, and full
        collections that stalled the loop 50-250 ms). So when the heap reaches
        twice what it held after the last sweep, the answered calls' timers are
        swept out: O(1) per timer, amortized."""
        heap = self._heap
        if len(heap) >= self._heap_limit:
            heap[:] = [e for e in heap if not e[2].done]     # (in place: the loops hold the list)
            heapq.heapify(heap)
            self._heap_limit = max(_HEAP_SWEEP_MIN, 2 * len(heap))
        _heappush(heap, (when, next(self._tick), c))

    def _send_one(self, i, c):
        """Send call ``c`` (its seq given) alone in a frame to shard ``i``: the
        usual case, packed without building the request's lists (wire.pack_request)."""
        try:
            self._conns[i].send(_pack_request(self.session, next(iter(self._pending[i]), self._seq[i]),
                                              c.typ, c.seq, c.args))
        except zmq.ZMQError:
            pass  # retried by the timer

    def _send_frame(self, i, reqs):
        pending = self._pending[i]
        ack = next(iter(pending), self._seq[i])
        n = len(reqs)
        k = 0
        while k < n:
            try:
                self._conns[i].send(_pack_requests(self.session, ack, reqs if n <= _MAX_REQUESTS
                                                      else reqs[k:k + _MAX_REQUESTS]))
            except zmq.ZMQError:
                pass  # retried by the timer
            k += _MAX_REQUESTS

    def _timers(self, now):
        heap = self._heap
        resend = {}
        while heap and heap[0][0] <= now:
            when, _, c = _heappop(heap)
            if c.done:
                continue
            if c.deadline is not None and now >= c.deadline and now < self._grace_until[c.shard]:
                # the shard holds requests in its grace period after a restart: not a dead shard
                c.deadline = self._grace_until[c.shard] + self.request_timeout
            if c.deadline is not None and now >= c.deadline:
                self._pending[c.shard].pop(c.seq, None)
                self._fail(c, ShardUnavailable(
                    f"shard {c.shard} ({self.endpoints[c.shard]}) did not answer "
                    f"{wire.TYPE_NAMES.get(c.typ, c.typ)} within the request timeout"))
                continue
            if self.locator is not None:
                self.locator.suspect(c.shard)     # no answer: is it still the primary?
            # retry: the same (session, seq); the shard answers it once. Within
            # the request timeout the interval stays fixed (a call gets ~4 tries
            # before its deadline, so one lost frame or reply costs one interval,
            # not the call); past it (a lock wait) the interval doubles up to 8 s.
            if now - c.first_sent >= self.request_timeout:
                c.backoff = min(c.backoff * 2, 8.0)
            self._push_timer(_next_try(c, now), c)
            req = [c.typ, c.seq]
            req.extend(c.args)
            resend.setdefault(c.shard, []).append(req)
        for i, reqs in resend.items():
            self._send_frame(i, reqs)

    def _fail_all(self, err, keep_close=False):
        while self._outq:
            c = self._outq.popleft()
            self._fail(c, type(err)(str(err)))
        for pending in self._pending:
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
        if self._born != _FORKS[0]:
            raise self.forked()
        now = _monotonic()
        rt = self.request_timeout
        w = _Waiter(len(specs), now)
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
                kind = self._owner_kind
                if kind is _NONE or (kind is _LOOP and self._owner.tid == threading.get_ident()):
                    # free, or owned by the event loop this very thread runs (blocked
                    # here, so it touches no socket until we are done): take them
                    # (and send the calls in the first turn: _serve)
                    if kind is not _NONE:
                        self._polling = False
                    self._set_owner(_SYNC_CALLER, w)
                    lead = True
                else:
                    self._outq.extend(calls)
                    lead = False
                    self._followers[id(w)] = w
                    self._wake_owner_locked()
        finally:
            mu.release()
        if lead:
            if self._serve(w, calls, now):
                self._follow(w)
        elif w.left:
            self._follow(w)
        return [c.error if c.error is not None else c.result for c in calls]

    def _follow(self, w):
        mu = self._mu       # (acquire/release, not ``with``: C calls when compiled)
        mu.acquire()
        try:
            if w.ev is None:
                ev = _Mutex()
                if not w.signalled:
                    ev.acquire()
                w.ev = ev
        finally:
            mu.release()
        while True:
            if not w.ev.acquire(True, 1.0):
                if not self._thread.is_alive() and self._owner_kind is _NONE and w.left:
                    raise ShardUnavailable("the client's I/O thread has stopped (client closed?)")
                if self._owner_kind is _LOOP:
                    self._wake_hk()        # its loop may have stopped: the housekeeper takes over
                continue
            mu.acquire()
            try:
                w.signalled = False
                promoted = w.promoted
                w.promoted = False
                if not promoted:
                    if w.left == 0:
                        self._followers.pop(id(w), None)
                        return
                    continue
            finally:
                mu.release()
            if self._serve(w):  # the owner now; returns when w's calls are done
                continue        # ... or when it handed the role to a newer caller
            return


def _set_future(fut):
    # (the awaiter reads the call's result and error; a future holding the call,
    # which holds the future in ``w``, made every asyncio call a reference cycle:
    # ~11 objects per transaction left to the full collections, each one then
    # stalling every task of the loop for 10-250 ms)
    if not fut.done():
        fut.set_result(None)


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
            _set_future(fut)
        else:
            try:
                self.loop.call_soon_threadsafe(_set_future, fut)
            except RuntimeError:
                pass        # the loop is closed: no one awaits the call any more

    def attach(self):
        self.last_io = _monotonic()
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


