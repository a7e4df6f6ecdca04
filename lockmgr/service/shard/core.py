"""The shard's logic without I/O: a sans-IO state machine (like h11's).

Interface:
    ShardCore(*, epoch, index=0, nshards=1, partition_depth=2, escalation_threshold=5000,
              log=None, peer_sid=0, probe_delay=..., probe_interval=None, peers=None,
              now=0.0, wall_offset=0.0, random_bytes=os.urandom, grace=None,
              quotas=None, access=None)
        .now                     the current time (monotonic seconds): set by the driver
                                 before every call; the core never reads a clock
        .frame(prefix, sid, ack, reqs, budget)   a decoded frame from connection ``prefix``;
                                 handles up to ``budget`` of its requests, queues the rest
        .resume(budget) -> bool  go on with queued requests; True while some remain
        .backlog                 the queued (unfinished) frames
        .fire_timers(budget) -> bool   fire due timers (when <= now); True while some remain due
        .next_timer() -> float | None  when the next timer is due
        .peer_messages(budget)   handle queued shard-to-shard messages
        .take_replies() -> {prefix: [reply, ...]}     what to send to clients
        .take_peer_messages() -> {shard: [request, ...]}   what to send to other shards
        .durable(batch)          prepare-log tickets that reached the disk (from the log's thread)
        .has_replies, .reply(prefix, reply), .internal_error(where, exc), .internal_errors
        .counters, .epoch, .index, .nshards, .partition_depth, .probes, .twophase, .reclaim
        .user                    the identity of the connection the next ``frame`` came from
                                 (its CURVE key, z85; "" without CURVE): set by the driver
        .access                  who may do what (access.Access), or None: no CURVE, no checks
        .quotas                  the limits (quotas.Quotas)

The driver (lockmgr/service/shard/server.py: ZeroMQ and a clock; tests: a manual
clock and no sockets) decodes frames, sets ``now``, calls these and sends what
they return. Deadlock probes (lockmgr/service/probes.py), two-phase commit
(twophase.py) and lock reclaim after a restart (reclaim.py) plug in through the
methods listed in ``ShardHost``; they touch no other state of the core.

Design and correctness: docs/service.md; 2PC: docs/2pc.md; probes: docs/probes.md.
"""

import collections
import itertools
import os
from typing import Protocol

from sortedcontainers import SortedList

from .. import wire
from ...rules import ACTIVE, EPOCH_BITS, brief, check_mode, check_timeout_ms, check_txn_id, choose_victim
from ..._core import CONFLICT, Table, BACKEND
from ...errors import InvalidRequest, LockError
from ...modes import CONFLICTS, INTENTION, Mode
from ...paths import encode, MAX_DEPTH
from ..probes import DEFAULT_PROBE_DELAY, ProbeEngine
from .timers import Timer, TimerKind
from ..wire import (E_ABORTED, E_DEADLOCK, E_INVALID, E_NOT_AVAILABLE, E_PROTOCOL,
                     E_SESSION_EXPIRED, E_STALE, E_TIMEOUT, E_TOO_BIG, E_UNKNOWN_SESSION,
                     E_UNKNOWN_TYPE, OK)
from .counters import CORE_COUNTERS
from .twophase import TwoPhase
from .reclaim import Reclaim
from .quotas import Quotas, SessionCounts, REPLY_COST, quota_error
from .pages import Pages
from .watches import Watches

try:   # the compiled encoder validates exactly as lockmgr.paths.encode, faster
    from ..._core._ctable import encode as _encode
except ImportError:  # pragma: no cover - no compiler
    _encode = encode

__all__ = ["ShardCore", "ShardHost", "Reply", "PARKED", "EPOCH_BITS"]

PARKED = object()   # a handler's result: the request waits; it is answered later

_T_WAIT, _T_LEASE, _T_PROBE, _T_GRACE = TimerKind.WAIT, TimerKind.LEASE, TimerKind.PROBE, TimerKind.GRACE

MAX_ERROR_CHARS = 1000    # an error reply's message is cut to this (it may quote the request)
MAX_TTL_MS = 3600 * 1000
MAX_CACHE = 200_000       # cached replies per session (beyond: oldest dropped)
MAX_TOMBSTONES = 4096     # finished txn ids remembered per session
MAX_EXPIRED = 65536       # expired session ids remembered (answer SESSION_EXPIRED)
_TXN_LIMIT = 1 << 64
_NEVER = float("inf")     # ShardCore._due with no timer

# LOCK_MANY items come in the compiled table's form (wire.unpack_requests_packed)
# when the table is the compiled one
if BACKEND == "c":
    from ..._core._ctable import PackedItems as _PackedItems
else:
    class _PackedItems:   # type: ignore[no-redef]  # never made: the pure-Python table takes msgpack's lists
        pass

_PEER_ADMIN = frozenset((wire.PEERS, wire.FAULTS))   # admin messages that need the cluster key

# quiet (no-wait) releases: RELEASE [txn, committed, true], UNLOCK [txn, path, check, true]
# (the request's length with the flag); a success is answered only with the next
# reply to the session, or to a retry of it; a failure is answered at once
_RELEASE, _UNLOCK = wire.RELEASE, wire.UNLOCK
_QUIET_LEN = {_RELEASE: 5, _UNLOCK: 6}


class Reply(Exception):
    """Raised by a handler to answer with an error status."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


_Reply = Reply


class ShardHost(Protocol):
    """What the plug-ins (deadlock probes, two-phase commit) may ask of the core.
    ShardCore implements it; nothing else of the core is theirs to touch."""

    now: float
    index: int
    nshards: int
    epoch: int
    peer_sid: int
    counters: "collections.Counter[str]"
    table: Table                      # queries; 2PC also re-locks what is held

    def wall(self) -> float: ...                                  # wall-clock time for reports
    def txn(self, tid): ...                                       # the _Txn of ``tid`` here, or None
    def add_timer(self, when, kind, obj): ...                     # -> the entry (to cancel it)
    def cancel_timer(self, entry): ...
    def end_wait(self, w, status, msg): ...                       # answer a parked lock request
    def drop_txn(self, t): ...                                    # release all of t here, forget it
    def answer(self, sess, seq, status, payload): ...             # a (later) answer, cached
    def push(self, sess, payload): ...                            # a notice to the session (not cached)
    def session_alive(self, sess) -> bool: ...
    def process_woken(self): ...                                  # continue the requests just granted
    # two-phase commit only: its transactions, and the names its handlers raise and return
    def new_txn(self, tid, sess): ...                             # a restored (sess None) or new txn
    def session_txn(self, sess, tid): ...                         # sess's txn tid, made if new
    def check_epoch(self, tid, ep): ...                           # Reply if the client's epoch is old
    Reply: type                                                   # raise Reply(status, message)
    PARKED: object                                                # the handler's "answered later"
    def brief(self, value: object) -> str: ...                    # a bounded quote of bad input
    def forbidden(self, sess, what): ...                          # Reply if sess's key may not ``what``
    # reclaim after a restart only
    def session_open(self, sid) -> bool: ...                      # session ``sid`` is open here
    def mark_expired(self, sid, why): ...                         # a HELLO for ``sid`` gets SESSION_EXPIRED
    def replay(self, held): ...                                   # [(sid, prefix, requests)]: run them next


class _Session:
    __slots__ = ("id", "ttl", "expires", "prefix", "txns", "cache", "order", "ack", "inflight",
                 "tombs", "tomb_order", "name", "secret", "deferred", "user", "nheld", "watches", "caching")

    def __init__(self, sid, ttl, now, prefix, name, secret, user=""):
        self.id = sid
        self.ttl = ttl
        self.expires = now + ttl
        # routing frames of the connection the session is bound to: frames naming the
        # session from any other connection are refused, except a HELLO carrying
        # ``secret`` (the client reconnected), which binds it to the new one
        self.prefix = prefix
        self.secret = secret
        # the answers of quiet (no-wait) releases that succeeded: sent with the next
        # reply that goes to this session anyway (or as the answer to a retry)
        self.deferred = []
        self.txns = {}                # txn id -> _Txn
        self.cache = {}               # seq -> reply, for retries
        self.order = collections.deque()
        self.ack = 0                  # seqs below this are acknowledged by the client
        self.inflight = {}            # seq -> _Wait
        self.tombs = set()            # finished txn ids (a late request for one is refused)
        self.tomb_order = collections.deque()
        self.name = name
        # the identity (CURVE key) that opened the session: frames naming it from any
        # other key are refused, a HELLO with the secret included
        self.user = user
        self.nheld = 0                # locks its open transactions were granted here (quotas.py)
        self.watches = None           # wid -> watches._Watch (watches.py), once it watches
        self.caching = False          # its client caches locks (CACHE_ON): revoke notices go to it


class _Txn:
    __slots__ = ("id", "session", "state", "wait", "gtrid", "participants", "prepared_at", "outcome",
                 "waiters", "nlocks", "name", "nheld")

    def __init__(self, tid, session):
        self.id = tid
        self.nheld = 0                # locks granted here, for the quotas (quotas.py)
        self.session = session        # None for a prepared txn restored from the log
        self.state = ACTIVE         # 2PC: 'preparing' -> 'prepared' -> 'deciding' (then gone)
        self.wait = None              # the _Wait this txn is parked on
        # 2PC slots (gtrid, participants, prepared_at, outcome, nlocks, waiters: the
        # parked PREPARE/DECIDE requests [(session, seq, kind)]) are set when the
        # txn leaves 'active' (see the "Two-phase commit" section), not here: the
        # hot LOCK path creates a _Txn per transaction.


class _Wait:
    __slots__ = ("txn", "seq", "items", "idx", "tokens", "many", "timer", "prev", "deadline")

    def __init__(self, txn, seq, items, idx, tokens, many, prev):
        self.txn = txn
        self.seq = seq
        self.items = items            # [(path, mode), ...]
        self.idx = idx                # the item being waited for
        self.tokens = tokens
        self.many = many
        self.timer = None
        self.prev = prev              # LOCK: the mode held on the node before (0: none), for the reply
        self.deadline = None          # absolute clock time, or None: wait forever


def _path(obj):
    if type(obj) is list:
        if len(obj) > MAX_DEPTH:
            raise _Reply(E_TOO_BIG, f"resource path has {len(obj)} components; at most {MAX_DEPTH} are allowed")
        p = tuple(obj)
    elif type(obj) in (str, int, bytes):
        p = (obj,)
    else:
        raise _Reply(E_INVALID, f"resource must be an array of str/int/bytes components; got {type(obj).__name__}")
    encode(p)  # validates; raises InvalidRequest naming the problem
    return p


def _tomb(sess, tid):
    """Remember that ``tid`` finished in ``sess`` (a late LOCK for it is refused);
    the session keeps the latest MAX_TOMBSTONES."""
    sess.tombs.add(tid)
    sess.tomb_order.append(tid)
    if len(sess.tomb_order) > MAX_TOMBSTONES:
        sess.tombs.discard(sess.tomb_order.popleft())


class ShardCore:
    """One shard's state and logic. Not thread-safe: one driver calls it (the
    prepare log's thread only appends to ``durable``)."""

    def __init__(self, *, epoch, index=0, nshards=1, partition_depth=2, escalation_threshold=5000,
                 log=None, peer_sid=0, probe_delay=DEFAULT_PROBE_DELAY, probe_interval=None, peers=None,
                 now=0.0, wall_offset=0.0, random_bytes=os.urandom, grace=None, quotas=None, access=None):
        if epoch >= (1 << (63 - EPOCH_BITS)):
            raise RuntimeError("epoch space exhausted")
        self.index = index
        self.nshards = nshards
        self.partition_depth = partition_depth
        self.epoch = epoch
        # shard-to-shard frames (and PEERS/FAULTS) must carry this in their session field
        self.peer_sid = peer_sid
        self.now = now
        self._wall_offset = wall_offset
        self._random_bytes = random_bytes     # session secrets (a seeded source in a simulation)
        self.table = self._table = Table(escalation_threshold, epoch << EPOCH_BITS)
        self._sessions = {}
        self._expired = collections.OrderedDict()
        self._txns = {}
        self._timers = SortedList()
        self._due = _NEVER               # the first timer's ``when`` (see _timer_add)
        self._tick = itertools.count()
        self._out = {}
        self._woken = collections.deque()
        self.backlog = collections.deque()   # (sid, prefix, requests, next index): unfinished frames
        self._left = 0                       # requests the current call may still handle
        self.handled = 0                     # requests handled so far (the driver sizes its budget by it)
        self.counters = collections.Counter()
        self.internal_errors = []            # (where, exception) the driver logs
        # who sent the frame being handled (the driver sets it: the connection's CURVE key,
        # "" without CURVE) and what that key may do (None: no CURVE; docs/security.md)
        self.user = ""
        self.access = access
        # quotas (quotas.py): the limits, read on the hot path as plain fields
        self.quotas = q = (quotas or Quotas()).check()
        self.q_session_locks = q.locks_per_session
        self.q_locks = q.locks
        self.q_waits = q.waits_per_session
        self.q_inflight = q.inflight_per_session
        self.q_cache = q.reply_cache_bytes // REPLY_COST    # cached answers a session may keep
        self.nheld = 0                       # locks granted on the shard (to open transactions)
        self.session_counts = SessionCounts()
        self._handlers = {
            wire.HEARTBEAT: self._h_heartbeat, wire.CLOSE: self._h_close, wire.LOCK: self._h_lock_one,
            wire.LOCK_MANY: self._h_lock_many, wire.UNLOCK: self._h_unlock, wire.RELEASE: self._h_release,
            wire.DOWNGRADE: self._h_downgrade,
            wire.HELD: self._h_held,
        }
        self._admin = {wire.PING: self._h_ping, wire.SNAPSHOT: self._h_snapshot, wire.GRAPH: self._h_graph,
                       wire.STATS: self._h_stats, wire.INFO: self._h_info}
        self._handlers[wire.TXN_NAME] = self._h_txn_name
        # client lock caching (docs/service.md, "Lock caching"): the sessions whose
        # transactions' locks may be cached by their client (they are sent
        # N_CACHE_REVOKE when another request waits for one of those locks)
        self._caching = set()
        self._handlers[wire.CACHE_ON] = self._h_cache_on
        self._handlers[wire.CACHE_GIVEUP] = self._h_cache_giveup
        # what the driver tells INFO about its process ({pid, host, started_at}) and a
        # callable giving the prepare log's size in bytes (lockmgr inspection)
        self.info = {}
        self.log_bytes = None
        # two-phase commit (twophase.py): restores the prepared transactions of ``log``
        # before anything is served
        self.twophase = TwoPhase(self, log)
        self._handlers.update(self.twophase.handlers)
        self._admin.update(self.twophase.admin)
        # distributed deadlock detection (lockmgr/service/probes.py, docs/probes.md)
        self.probes = self._probes = ProbeEngine(self, probe_delay, probe_interval, peers)
        self._admin.update(self._probes.admin)
        self._peer = self._probes.peer_types
        # lock reclaim after a restart (reclaim.py): session records in ``log``; on a
        # restart, the grace period in which the sessions that were open reclaim
        self.reclaim = self._reclaim = Reclaim(self, log, grace)
        self._handlers.update(self._reclaim.handlers)
        # SNAPSHOT_PAGE and HELD_PAGE (pages.py): bounded answers that never stall the loop
        self.pages = Pages(self)
        self._handlers.update(self.pages.handlers)
        self._admin.update(self.pages.admin)
        # WATCH / UNWATCH (watches.py): node states pushed as N_WATCH notices; ``_watched``
        # is empty while no one watches (then a flush costs one truth test)
        self.watches = Watches(self)
        self._handlers.update(self.watches.handlers)
        self._watched = self.watches.by_key

    # ------------------------------------------------------------- driving

    def wall(self):
        """Wall-clock time now (for reports and 2PC ages): ``now`` plus the offset
        the driver gave."""
        return self.now + self._wall_offset

    def frame(self, prefix, sid, ack, reqs, budget):
        """A decoded frame from the connection ``prefix`` (its routing frames).
        Handles up to ``budget`` of its requests now; the rest wait in ``backlog``
        (handled by ``resume`` before any newer frame: the driver reads no new
        frame while the backlog is not empty)."""
        self._left = budget
        if self._reclaim.in_grace:         # new requests wait out the grace period (reclaim.py)
            reqs = self._reclaim.hold(sid, prefix, reqs)
        sess = self._sessions.get(sid) if sid else None
        if sess is not None:
            # the identity check: the connection (routing id) and the key it authenticated with
            if (prefix[0] != sess.prefix[0] or self.user != sess.user) and not self._rebind(sess, prefix, reqs):
                return
            sess.prefix = prefix
            sess.expires = self.now + sess.ttl
            if ack > sess.ack:
                sess.ack = ack
                order, cache = sess.order, sess.cache
                while order and order[0] < ack:
                    cache.pop(order.popleft(), None)
            if len(sess.order) >= self.q_cache or len(reqs) + len(sess.inflight) > self.q_inflight:
                self._refuse_frame(sess, prefix, reqs)       # quotas: nothing of the frame is run
                return
            self._session_requests(sess, prefix, reqs, 0)
            return
        self._requests(sid, prefix, reqs, 0)

    def resume(self, budget):
        """Go on with the unfinished frames, oldest first, up to ``budget``
        requests. True while some remain."""
        backlog = self.backlog
        self._left = budget
        while backlog and self._left > 0:
            sid, prefix, reqs, k, self.user = backlog.popleft()
            self._requests(sid, prefix, reqs, k)
            self.process_woken()
        return bool(backlog)

    def next_timer(self):
        """When the next timer is due (``now`` units), or None."""
        return None if self._due == _NEVER else self._due

    # The timers: a SortedList of Timer entries, and ``_due``, the first one's
    # ``when`` (or _NEVER), kept beside it: the driver asks for it twice a turn,
    # and a SortedList's [0] is Python code, dearer than the rest of a turn's
    # bookkeeping. Every change of the list goes through these two (and
    # fire_timers), which keep ``_due`` true.

    def _timer_add(self, entry):
        self._timers.add(entry)
        if entry.when < self._due:
            self._due = entry.when

    def _timer_drop(self, entry):
        timers = self._timers
        timers.discard(entry)
        if entry.when <= self._due:
            self._due = timers[0][0] if timers else _NEVER

    def fire_timers(self, budget):
        """Fire up to ``budget`` timers that are due (when <= now). True while more are due."""
        timers = self._timers
        now = self.now
        while timers and timers[0][0] <= now:
            if budget <= 0:
                return True
            budget -= 1
            _, _, kind, obj = timers.pop(0)
            try:
                if kind is _T_WAIT:
                    self._on_wait_timeout(obj)
                elif kind is _T_PROBE:
                    self._probes.on_timer()
                elif kind is _T_GRACE:
                    self._reclaim.on_timer()
                else:
                    self._on_lease_timer(obj)
                self.process_woken()
            except Exception as e:      # a bug in one timer must not stop the shard
                self.internal_error(f"{kind.value} timer", e)
            finally:
                self._due = timers[0][0] if timers else _NEVER
        return False

    def peer_messages(self):
        """Handle the queued shard-to-shard messages (and what they cause)."""
        if self._probes.inbox:
            try:
                self._probes.turn()
            except Exception as e:
                self.internal_error("probe messages", e)

    def take_replies(self):
        """{routing prefix: [reply, ...]}: what to send to the clients (and forget)."""
        if self._watched:
            self.watches.flush()
        out = self._out
        if out:
            self._out = {}
        return out

    def take_peer_messages(self):
        """{shard index: [request, ...]}: what to send to the other shards."""
        return self._probes.take_outbox()

    def durable(self, batch):
        """The prepare log's thread: tickets that reached the disk (handled at the next WAKE)."""
        self.twophase.durable_batches.append(batch)

    @property
    def has_replies(self):
        """True if replies wait to be taken (``take_replies``), or watched nodes may
        have changed (their notices are made then)."""
        return bool(self._out) or bool(self._watched)

    def reply(self, prefix, rep):
        """Queue a reply that no request of a session produced (a frame the driver
        could not decode, say) for the connection ``prefix``."""
        self._send(prefix, rep)

    def internal_error(self, where, e):
        """Count (and keep for the driver to log) a bug caught at ``where``."""
        self.counters["internal_errors"] += 1
        self.internal_errors.append((where, e))
        del self.internal_errors[:-16]

    # ------------------------------------------------------ the host interface

    def txn(self, tid):
        return self._txns.get(tid)

    def add_timer(self, when, kind, obj):
        entry = Timer(when, next(self._tick), kind, obj)
        self._timer_add(entry)
        return entry

    def cancel_timer(self, entry):
        self._timer_drop(entry)

    def session_alive(self, sess):
        return sess is not None and self._sessions.get(sess.id) is sess

    # (for reclaim after a restart)
    def session_open(self, sid):
        return sid in self._sessions

    def mark_expired(self, sid, why):
        """Answer SESSION_EXPIRED (``why``) to a HELLO for ``sid`` from now on."""
        self._expired[sid] = why
        if len(self._expired) > MAX_EXPIRED:
            self._expired.popitem(last=False)

    def replay(self, held):
        """Requests held back [(sid, prefix, requests)], in arrival order: run them
        before any newer frame (the driver serves the backlog first)."""
        for sid, prefix, reqs in held:
            s = self._sessions.get(sid)
            self.backlog.append((sid, prefix, reqs, 0, s.user if s is not None else ""))

    # (for two-phase commit: the names it raises and returns, and its transactions)
    Reply = Reply
    PARKED = PARKED
    brief = staticmethod(brief)

    def new_txn(self, tid, sess):
        """A new transaction of ``sess`` (None: a prepared one restored from the log)."""
        t = _Txn(tid, sess)
        self._txns[tid] = t
        if sess is not None:
            sess.txns[tid] = t
        return t

    def session_txn(self, sess, tid):
        """``tid`` of ``sess``, made if new (Reply if it finished or is another session's)."""
        return self._txn(sess, tid)

    def check_epoch(self, tid, ep):
        """Reply E_ABORTED if the client's locks of ``tid`` here came from an earlier epoch."""
        self._check_epoch(tid, ep)

    def _send(self, prefix, rep):
        lst = self._out.get(prefix)
        if lst is None:
            self._out[prefix] = [rep]
        else:
            lst.append(rep)

    def answer(self, sess, seq, status, payload):
        """Queue a reply to the session's connection and cache it for retries (the
        session's deferred quiet answers go with it)."""
        rep = [seq, status, payload]
        if sess is not None and sess.id in self._sessions:
            sess.cache[seq] = rep
            sess.order.append(seq)
            if len(sess.order) > MAX_CACHE:
                sess.cache.pop(sess.order.popleft(), None)
            self._send(sess.prefix, rep)
            if sess.deferred:
                for d in sess.deferred:
                    self._send(sess.prefix, d)
                sess.deferred.clear()

    def push(self, sess, payload):
        """Send the session a notice ([wire.PUSH_SEQ, OK, payload]; payload[0] is its
        kind) on its current connection: once, never cached (docs/protocol.md, "Notices")."""
        if sess is not None and sess.id in self._sessions:
            self.counters["pushes"] += 1
            self._send(sess.prefix, [wire.PUSH_SEQ, OK, payload])

    # ------------------------------------------------------------ dispatch
    # A frame: [VERSION, session, ack, requests]. Frames naming a session must come
    # from the connection the session is bound to (see _Session.prefix); the
    # requests of a frame are handled in order, ``budget`` at a time.

    def _rebind(self, sess, prefix, reqs):
        """A frame naming ``sess`` from another connection than the one it is bound
        to: a client that reconnected (its HELLO carries the session's secret) gets
        the session bound to the new connection (True); anyone else is refused, and
        nothing of the session changes -- not its lease, acks or reply cache (False).
        With CURVE, a frame from another key than the session's is refused even
        with the secret (E_FORBIDDEN): a session belongs to the key that opened it."""
        if self.user != sess.user:
            self.counters["forbidden"] += 1
            msg = (f"session {sess.id:#x} belongs to another key on shard {self.index}; "
                   f"nothing of it was read or changed")
            for req in reqs:
                seq = req[1] if type(req) is list and len(req) >= 2 and type(req[1]) is int else 0
                self._send(prefix, [seq, wire.E_FORBIDDEN, msg])
            return False
        for req in reqs:
            if (type(req) is list and len(req) == 5 and req[0] == wire.HELLO and type(req[4]) is int
                    and req[4] == sess.secret):
                self.counters["sessions_rebound"] += 1
                return True
        self.counters["foreign_refused"] += 1
        msg = (f"session {sess.id:#x} is bound to another connection on shard {self.index}; "
               f"a client that reconnected sends HELLO with the session's secret")
        for req in reqs:
            seq = req[1] if type(req) is list and len(req) >= 2 and type(req[1]) is int else 0
            self._send(prefix, [seq, E_UNKNOWN_SESSION, msg])
        return False

    def _refuse_frame(self, sess, prefix, reqs):
        """A frame over the session's in-flight or reply-cache quota: every request
        in it is answered E_QUOTA (not cached, not run)."""
        self.counters["quota_refused"] += len(reqs)
        if len(sess.order) >= self.q_cache:
            err = quota_error("reply_cache_bytes", self.quotas.reply_cache_bytes,
                              f"session {sess.id:#x} keeps {len(sess.order)} answers it has not acknowledged "
                              f"(~{len(sess.order) * REPLY_COST} bytes; acknowledge them with the frame's ack)")
        else:
            err = quota_error("inflight_per_session", self.q_inflight,
                              f"a frame of {len(reqs)} requests while session {sess.id:#x} has "
                              f"{len(sess.inflight)} parked")
        for req in reqs:
            seq = req[1] if type(req) is list and len(req) >= 2 and type(req[1]) is int else 0
            self._send(prefix, [seq, err.status, str(err)])

    def forbidden(self, sess, what):
        """Raise E_FORBIDDEN unless the session's key may ``what`` (an admin action;
        no check without CURVE)."""
        acc = self.access
        if acc is not None and not acc.is_admin(sess.user):
            self.counters["forbidden"] += 1
            raise _Reply(wire.E_FORBIDDEN, f"{what} needs an admin key; this connection's key is not one")

    def _over_budget(self, sid, prefix, reqs, k):
        """True (and the rest of the frame queued) if this call's budget is spent
        before request ``k``."""
        if self._left <= 0:
            self.backlog.append((sid, prefix, reqs, k, self.user))
            return True
        self._left -= 1
        self.handled += 1
        return False

    def _requests(self, sid, prefix, reqs, start):
        """Requests ``start``.. of a frame (session-less ones, HELLO, or a resumed frame)."""
        sess = self._sessions.get(sid) if sid else None
        if sess is not None:
            if sess.prefix[0] != prefix[0]:
                return                  # the session was rebound meanwhile: the old connection's rest is void
            self._session_requests(sess, prefix, reqs, start)
            return
        for k in range(start, len(reqs)):
            if self._over_budget(sid, prefix, reqs, k):
                return
            req = reqs[k]
            if type(req) is not list or len(req) < 2 or type(req[0]) is not int or type(req[1]) is not int:
                self.counters["bad_requests"] += 1
                self._send(prefix, [0, E_PROTOCOL, "a request must be an array [type, seq, *args] "
                                                   "with int type and seq"])
                continue
            typ, seq = req[0], req[1]
            try:
                h = self._handlers.get(typ)
                if h is not None:
                    if sess is None:
                        if sid == 0:
                            raise _Reply(E_UNKNOWN_SESSION, f"{wire.TYPE_NAMES[typ]} needs a session (send HELLO)")
                        if sid in self._expired:
                            raise _Reply(E_SESSION_EXPIRED, f"session {sid:#x} {self._expired[sid]}")
                        raise _Reply(E_UNKNOWN_SESSION,
                                     f"unknown session {sid:#x} on shard {self.index} (epoch {self.epoch}); "
                                     f"send HELLO")
                    if sess.prefix[0] != prefix[0]:
                        raise _Reply(E_UNKNOWN_SESSION, f"session {sid:#x} is bound to another connection "
                                                        f"on shard {self.index}")
                    self._left += 1          # counted again there
                    self.handled -= 1
                    self._session_requests(sess, prefix, reqs, k)
                    return
                if typ == wire.HELLO:
                    sess = self._h_hello(sid, prefix, seq, req[2:])
                    continue
                self._other_request(typ, seq, prefix, req, sid)
            except _Reply as e:
                self.counters["errors"] += 1
                self._reply_error(sess, prefix, seq, e.status, str(e))
            except LockError as e:              # InvalidRequest among them: nothing changed
                self.counters["errors"] += 1
                self._reply_error(sess, prefix, seq, E_INVALID, str(e))

    def _other_request(self, typ, seq, prefix, req, sid):
        if self.access is not None:      # CURVE: peer and admin messages need a peer or admin key
            err = self.access.check(typ, self.user)
            if err is not None:
                self.counters["forbidden"] += 1
                raise _Reply(wire.E_FORBIDDEN, err)
        if self.peer_sid and sid != self.peer_sid and (typ in self._peer or typ in _PEER_ADMIN):
            self.counters["peer_refused"] += 1
            raise _Reply(E_PROTOCOL, f"{wire.TYPE_NAMES[typ]} is a shard-to-shard message: it must carry the "
                                     f"cluster key's session (the shard was started with a cluster key)")
        a = self._admin.get(typ)
        if a is not None:
            try:
                res = a(req[2:])
            except ValueError as e:      # bad arguments: nothing changed
                raise _Reply(E_INVALID, str(e)) from None
            self._send(prefix, [seq, OK, res])
            return
        if typ in self._peer:            # shard -> shard (probes, lockmgr/service/probes.py): no reply
            err = self._probes.accept(req)
            if err:
                raise _Reply(E_PROTOCOL, err)
            return
        raise _Reply(E_UNKNOWN_TYPE, f"unknown message type {typ}")

    def _session_requests(self, sess, prefix, reqs, start):
        """Requests ``start``.. of one frame from a known session, on its own
        connection (the hot loop)."""
        handlers = self._handlers
        cache = sess.cache
        order = sess.order
        inflight = sess.inflight
        ack = sess.ack
        sessions = self._sessions
        sid = sess.id
        out = self._out.get(prefix)
        if out is None:
            out = self._out[prefix] = []
        # this call handles requests start..stop-1 (the budget); the rest waits in the backlog
        n = len(reqs)
        left = self._left
        if start == 0 and left >= n:                  # the whole frame (the usual case)
            stop = n
            batch = reqs
        else:
            stop = start + left
            if stop > n:
                stop = n
            batch = reqs[start:stop]
        self._left = left - (stop - start)
        self.handled += stop - start
        for req in batch:
            if type(req) is not list or len(req) < 2 or type(req[0]) is not int or type(req[1]) is not int:
                self.counters["bad_requests"] += 1
                out.append([0, E_PROTOCOL, "a request must be an array [type, seq, *args] with int type and seq"])
                continue
            typ = req[0]
            seq = req[1]
            try:
                h = handlers.get(typ)
                if h is not None:
                    rep = cache.get(seq)
                    if rep is not None:               # a retry: the first answer again
                        self.counters["retries_answered"] += 1
                        out.append(rep)
                        continue
                    if seq in inflight:               # a retry of a parked request
                        self.counters["retries_answered"] += 1
                        if self._caching:             # (a lost revoke notice is sent again)
                            self._revoke_wait(inflight[seq].txn)
                        continue
                    if seq < ack:
                        raise _Reply(E_STALE, f"seq {seq} was already acknowledged; not executed again")
                    result = h(sess, seq, req[2:])
                    if result is not PARKED:
                        if sid in sessions:           # still alive (not closed by this request)
                            rep = [seq, OK, result]
                            cache[seq] = rep
                            order.append(seq)
                            if len(order) > MAX_CACHE:
                                cache.pop(order.popleft(), None)
                            if req[-1] is True and (typ == _RELEASE or typ == _UNLOCK) and len(req) == _QUIET_LEN[typ]:
                                sess.deferred.append(rep)     # a quiet release: no answer of its own
                            else:
                                out.append(rep)
                            continue
                    elif sid in sessions:
                        continue
                    # the session ended with this request (CLOSE): the rest of the frame is
                    # a dead session's (answered so, and not executed)
                    k = start + 1
                    while reqs[k - 1] is not req:         # (this request's index, + 1)
                        k += 1
                    if k < stop:
                        self._left += stop - k
                        self.handled -= stop - k
                        self._requests(sid, prefix, reqs, k)
                    elif stop < n:
                        self.backlog.append((sid, prefix, reqs, stop, self.user))
                    return
                if typ == wire.HELLO:
                    self._h_hello(sess.id, prefix, seq, req[2:])
                    continue
                self._other_request(typ, seq, prefix, req, sess.id)
            except _Reply as e:
                self.counters["errors"] += 1
                self._reply_error(sess, prefix, seq, e.status, str(e))
            except LockError as e:              # InvalidRequest among them: nothing changed
                self.counters["errors"] += 1
                self._reply_error(sess, prefix, seq, E_INVALID, str(e))
            except (TypeError, ValueError, OverflowError) as e:
                self.counters["bad_requests"] += 1
                self._reply_error(sess, prefix, seq, E_PROTOCOL,
                                  f"malformed {wire.TYPE_NAMES.get(typ, typ)} request: {e}")
        if sess.deferred and out:                     # quiet answers ride with this frame's
            out.extend(sess.deferred)
            sess.deferred.clear()
        if stop < n:
            self.backlog.append((sid, prefix, reqs, stop, self.user))

    def _reply_error(self, sess, prefix, seq, status, msg):
        if len(msg) > MAX_ERROR_CHARS:
            msg = f"{msg[:MAX_ERROR_CHARS]}... (a message of {len(msg)} characters, cut)"
        if sess is not None and sess.id in self._sessions and status not in (E_STALE,):
            self.answer(sess, seq, status, msg)
        else:
            self._send(prefix, [seq, status, msg])

    # ------------------------------------------------------------- sessions

    def _h_hello(self, sid, prefix, seq, args):
        # [ttl_ms, name] opens a session; [ttl_ms, name, secret] also re-binds an
        # existing one to a new connection (checked in _rebind before we get here)
        if not 2 <= len(args) <= 3 or type(args[0]) is not int or not 1 <= args[0] <= MAX_TTL_MS:
            raise _Reply(E_PROTOCOL, f"HELLO takes [ttl_ms (1..{MAX_TTL_MS}), name, secret?]")
        if not sid:
            raise _Reply(E_PROTOCOL, "HELLO needs a nonzero session id")
        if sid in self._expired:
            raise _Reply(E_SESSION_EXPIRED, f"session {sid:#x} {self._expired[sid]}")
        sess = self._sessions.get(sid)
        if sess is None:
            # quotas: sessions of this connection identity (its key, or its routing id), and in all
            identity = self.user or prefix[0]
            counts = self.session_counts
            q = self.quotas
            if len(self._sessions) >= q.sessions:
                raise quota_error("sessions", q.sessions, f"shard {self.index} has {len(self._sessions)} open sessions")
            if counts.count(identity) >= q.sessions_per_identity:
                raise quota_error("sessions_per_identity", q.sessions_per_identity,
                                  f"this {'key' if self.user else 'connection'} has "
                                  f"{counts.count(identity)} open sessions on shard {self.index}")
            secret = self._reclaim.secret_for(sid, args)     # a session back after a restart keeps its own
            sess = _Session(sid, args[0] / 1000.0, self.now, prefix, str(args[1])[:200],
                            secret or int.from_bytes(self._random_bytes(8), "big") >> 1 or 1, self.user)
            counts.opened(sid, identity)
            self._sessions[sid] = sess
            self._timer_add(Timer(sess.expires, next(self._tick), _T_LEASE, sess))
            self.counters["sessions_opened"] += 1
            self._reclaim.session_started(sess)            # its record in the log (group commit)
        # grace_left_ms: requests are held until the grace period after a restart ends
        # (reclaim.py); the client waits that long past its request timeout
        self.answer(sess, seq, OK, [self.epoch, self.index, self.nshards, self.partition_depth, sess.secret,
                                    self._reclaim.grace_left_ms()])
        return sess

    def _h_heartbeat(self, sess, seq, args):
        return [self.epoch]

    def _h_close(self, sess, seq, args):
        self.answer(sess, seq, OK, [])
        self._end_session(sess, "was closed")
        return PARKED

    def _on_lease_timer(self, sess):
        if self._sessions.get(sess.id) is not sess:
            return
        if sess.expires > self.now:
            self._timer_add(Timer(sess.expires, next(self._tick), _T_LEASE, sess))
            return
        self.counters["sessions_expired"] += 1
        self._end_session(sess, "expired: no heartbeat within its TTL")

    def _end_session(self, sess, why):
        """Abort the session's unprepared transactions; forget it."""
        for t in list(sess.txns.values()):
            if t.state != ACTIVE:
                continue  # preparing / prepared / deciding: in doubt until resolved (2PC)
            if t.wait is not None:
                self.end_wait(t.wait, E_SESSION_EXPIRED, f"session {why}; transaction {t.id} aborted")
            self.drop_txn(t)
        if sess.watches is not None:
            self.watches.session_ended(sess)
        self._sessions.pop(sess.id, None)
        if sess.caching:
            self._caching.discard(sess)
        self.session_counts.closed(sess.id)
        self.mark_expired(sess.id, why)
        self._reclaim.session_ended(sess)

    # ---------------------------------------------------------- transactions

    def _txn(self, sess, tid, create=True):
        check_txn_id(tid)
        t = self._txns.get(tid)
        if t is not None:
            if t.session is not sess:
                raise _Reply(E_INVALID, f"transaction {tid} belongs to another session")
            return t
        if tid in sess.tombs:
            raise _Reply(E_ABORTED, f"transaction {tid} has finished on this shard")
        if not create:
            return None
        t = _Txn(tid, sess)
        self._txns[tid] = t
        sess.txns[tid] = t
        return t

    def drop_txn(self, t):
        """Release everything ``t`` holds here and forget it (tombstoned)."""
        woken = self._table.release_all(t.id)
        if woken:
            self._woken.extend(woken)
        self._txns.pop(t.id, None)
        sess = t.session
        n = t.nheld
        if n:
            t.nheld = 0
            self.nheld -= n
        if sess is not None:            # (None: a prepared transaction restored from the log)
            sess.nheld -= n
            sess.txns.pop(t.id, None)
            _tomb(sess, t.id)

    def _run(self, w, nowait=False):
        """Advance ``w`` through its items; answer or park it. Returns the reply
        payload, or PARKED."""
        t = w.txn
        table = self._table
        items = w.items
        tokens = w.tokens
        lock = table.lock
        tid = t.id
        n = len(items)
        idx = w.idx
        append = tokens.append
        while idx < n:
            path, mode = items[idx]
            tok = lock(tid, path, mode, nowait)
            if tok > 0:
                append(tok)
                idx += 1
                continue
            w.idx = idx
            if tok == CONFLICT:
                if self._caching:
                    self._revoke_path(tid, path, mode)
                raise _Reply(E_NOT_AVAILABLE,
                             f"{path!r} is not available in mode {Mode(mode).name} without waiting"
                             + (f" (item {w.idx} of the batch; the {w.idx} before it are held)" if w.many else ""))
            # WAITING: park, arm the timer, look for a deadlock closed by this wait
            self._park(w)
            return PARKED
        w.idx = idx
        if w.many:
            self._count(t, n)
            return [tokens, self.epoch]
        if not w.prev:
            self._count(t, 1)
        return [tokens[0], w.prev, self.epoch]

    def _count(self, t, n):
        """Quotas: ``n`` more locks granted to ``t`` (and its session, and the shard)."""
        t.nheld += n
        t.session.nheld += n
        self.nheld += n

    def _over_locks(self, sess, n):
        """Quotas: the Reply refusing ``n`` more locks for ``sess`` (nothing changed)."""
        if sess.nheld + n > self.q_session_locks:
            return quota_error("locks_per_session", self.q_session_locks,
                               f"session {sess.id:#x} holds {sess.nheld} locks on shard {self.index}")
        return quota_error("locks", self.q_locks, f"shard {self.index} holds {self.nheld} locks")

    def _over_waits(self, sess):
        return quota_error("waits_per_session", self.q_waits,
                           f"the request would wait, and session {sess.id:#x} has {len(sess.inflight)} "
                           f"requests waiting on shard {self.index}")

    def _park(self, w):
        """``w`` waits (the table queued its current item): arm its timer and
        look for a deadlock closed by this wait."""
        t = w.txn
        t.wait = w
        t.session.inflight[w.seq] = w
        if w.deadline is not None:
            w.timer = self.add_timer(w.deadline, _T_WAIT, w)
        self.counters["waits"] += 1
        if self._caching:
            self._revoke_wait(t)
        self._check_deadlock(t)
        if t.wait is w:
            self._probes.on_wait(t, w)     # cross-shard detection (lockmgr/service/probes.py)

    def _check_deadlock(self, t):
        table = self._table
        while t.wait is not None:
            cycle = table.find_cycle(t.id)
            if not cycle:
                return
            victim = self._txns.get(choose_victim(cycle))
            self.counters["deadlocks"] += 1
            if victim is None or victim.wait is None:  # cannot happen: every cycle member waits here
                return
            self._probes.on_local_victim(cycle, victim.id, t.id)
            self.end_wait(victim.wait, E_DEADLOCK,
                           f"transaction {victim.id} was chosen as deadlock victim (youngest in wait-for "
                           f"cycle {cycle} on shard {self.index}); it has been aborted")
            self.drop_txn(victim)

    def end_wait(self, w, status, msg):
        t = w.txn
        if t.wait is w:
            t.wait = None
            self._probes.on_wait_end(t.id)
        t.session.inflight.pop(w.seq, None)
        if w.timer is not None:
            self._timer_drop(w.timer)
            w.timer = None
        self.answer(t.session, w.seq, status, msg)

    def _on_wait_timeout(self, w):
        w.timer = None
        t = w.txn
        if t.wait is not w:
            return
        if self._probes.hold_timeout(w):   # on a cycle being confirmed: decided within HOLD
            return
        woken = self._table.cancel_wait(t.id)
        if woken:
            self._woken.extend(woken)
        self.counters["timeouts"] += 1
        path, mode = w.items[w.idx]
        self.end_wait(w, E_TIMEOUT, f"timed out waiting for {Mode(mode).name} on {path!r}")

    def process_woken(self):
        woken = self._woken
        txns = self._txns
        while woken:
            t = txns.get(woken.popleft())
            if t is None or t.wait is None:
                continue
            w = t.wait
            sess = t.session
            if sess.expires <= self.now:
                # never grant a waiter whose lease has run out: expire the session instead
                self.counters["sessions_expired"] += 1
                self._end_session(sess, "expired: no heartbeat within its TTL")
                continue
            t.wait = None
            self._probes.on_wait_end(t.id)
            sess.inflight.pop(w.seq, None)
            if w.timer is not None:
                self._timer_drop(w.timer)
                w.timer = None
            # the table granted the level we waited on; lock() again continues down the path
            try:
                res = self._run(w)
            except _Reply as e:
                self.answer(sess, w.seq, e.status, str(e))
                continue
            except LockError as e:
                self.answer(sess, w.seq, E_INVALID, str(e))
                continue
            if res is not PARKED:
                self.answer(sess, w.seq, OK, res)

    # -------------------------------------------------------------- handlers

    def _h_lock_one(self, sess, seq, args):
        # The hot path: checks inline; the table validates the path itself (it
        # raises InvalidRequest before changing anything); a _Wait is built only
        # when the request has to wait.
        if len(args) != 6:
            raise _Reply(E_PROTOCOL, "LOCK takes [txn, path, mode, nowait, timeout_ms, epoch]")
        tid, path, mode, nowait, tmo, ep = args
        if type(tid) is not int or not 0 < tid < _TXN_LIMIT:
            check_txn_id(tid)
        if type(path) is list:
            if len(path) > MAX_DEPTH:
                raise _Reply(E_TOO_BIG, f"resource path has {len(path)} components; at most {MAX_DEPTH} are allowed")
            path = tuple(path)
        else:
            path = _path(path)
        if type(mode) is not int or not 1 <= mode <= 5:
            check_mode(mode)
        if tmo is not None:
            check_timeout_ms(tmo)
        if ep and ep != self.epoch:
            self._check_epoch(tid, ep)
        nowait = bool(nowait)
        # quotas (quotas.py): a new lock more for the session and the shard (a node held
        # already is none); a request that would wait beyond the session's waits is tried
        # without waiting (then refused, unqueued)
        capped = not nowait and len(sess.inflight) >= self.q_waits
        table = self._table
        t = self._txns.get(tid)
        if t is None:
            if tid in sess.tombs:
                raise _Reply(E_ABORTED, f"transaction {tid} has finished on this shard")
            if sess.nheld >= self.q_session_locks or self.nheld >= self.q_locks:
                raise self._over_locks(sess, 1)
            tok = table.lock(tid, path, mode, nowait or capped)     # InvalidRequest: nothing changed
            t = _Txn(tid, sess)
            self._txns[tid] = t
            sess.txns[tid] = t
            prev = 0
        else:
            if t.session is not sess:
                raise _Reply(E_INVALID, f"transaction {tid} belongs to another session")
            if t.state != ACTIVE:   # 2PC: prepared
                raise _Reply(E_INVALID, f"transaction {tid} is {t.state}: it can only be committed or aborted")
            if t.wait is not None:
                raise _Reply(E_INVALID, f"transaction {tid} is already waiting for a lock")
            prev = table.mode_held(tid, path)
            if not prev and (sess.nheld >= self.q_session_locks or self.nheld >= self.q_locks):
                raise self._over_locks(sess, 1)
            tok = table.lock(tid, path, mode, nowait or capped)
        if tok > 0:
            if not prev:
                t.nheld += 1
                sess.nheld += 1
                self.nheld += 1
            return [tok, prev, self.epoch]
        if tok == CONFLICT:
            if capped:
                raise self._over_waits(sess)
            if self._caching:
                self._revoke_path(tid, path, mode)
            raise _Reply(E_NOT_AVAILABLE, f"{path!r} is not available in mode {Mode(mode).name} without waiting")
        w = _Wait(t, seq, [(path, mode)], 0, [], False, prev)
        if tmo is not None:
            w.deadline = self.now + tmo / 1000.0
        self._park(w)
        return PARKED

    def _check_epoch(self, tid, ep):
        if ep and ep != self.epoch and not self._reclaim.reclaimed_from(tid, ep):
            raise _Reply(E_ABORTED, f"shard {self.index} restarted (epoch {ep} -> {self.epoch}) and lost the "
                                    f"locks of transaction {tid}; the transaction is aborted")

    def _h_lock_many(self, sess, seq, args):
        # The hot path: one Table.lock_many call locks the wire items as they
        # came: a PackedItems (validated and encoded by the frame decoder) or,
        # if some item is not valid, the lists msgpack made (the table then
        # validates them first); only an error, a wait or a conflict builds
        # Python state per item.
        if len(args) != 5:
            raise _Reply(E_PROTOCOL, "LOCK_MANY takes [txn, [[path, mode], ...], nowait, timeout_ms, epoch]")
        tid, items, nowait, tmo, ep = args
        check_txn_id(tid)
        self._check_epoch(tid, ep)
        ti = type(items)
        if ti is not list and ti is not _PackedItems:
            raise _Reply(E_PROTOCOL, "LOCK_MANY items must be an array of [path, mode]")
        if len(items) > wire.MAX_BATCH:
            raise _Reply(E_TOO_BIG, f"LOCK_MANY of {len(items)} items; at most {wire.MAX_BATCH}")
        if tmo is not None and (type(tmo) is not int or not 0 <= tmo <= wire.MAX_TIMEOUT_MS):
            self._many_items(items)        # a bad item is reported first
            check_timeout_ms(tmo)
        t = self._txns.get(tid)
        if (t is None and tid in sess.tombs) or (t is not None and (t.session is not sess or t.wait is not None
                                                                    or t.state != ACTIVE)):
            self._many_items(items)        # a bad item is reported first
            self._txn(sess, tid)           # raises: finished, or another session's
            if t.state != ACTIVE:        # 2PC: prepared
                raise _Reply(E_INVALID, f"transaction {tid} is {t.state}: it can only be committed or aborted")
            raise _Reply(E_INVALID, f"transaction {tid} is already waiting for a lock")
        n = len(items)
        if sess.nheld + n > self.q_session_locks or self.nheld + n > self.q_locks:
            self._many_items(items)        # a bad item is reported first
            raise self._over_locks(sess, n)
        capped = not nowait and len(sess.inflight) >= self.q_waits
        try:
            res = self._table.lock_many(tid, items, nowait or capped)
        except InvalidRequest:
            self._many_items(items)        # the precise status (protocol, too big, invalid)
            raise                          # nothing changed
        if t is None:
            t = _Txn(tid, sess)
            self._txns[tid] = t
            sess.txns[tid] = t
        if not res or res[-1] > 0:
            t.nheld += n
            sess.nheld += n
            self.nheld += n
            return [res, self.epoch]
        # item k = len(res) - 1 waits (or conflicts, nowait): the slow path
        k = len(res) - 1
        w = _Wait(t, seq, self._many_items(items), k, res[:k], True, None)
        if res[k] == CONFLICT:
            if capped:
                raise self._over_waits(sess)
            path, mode = w.items[k]
            if self._caching:
                self._revoke_path(tid, path, mode)
            raise _Reply(E_NOT_AVAILABLE,
                         f"{path!r} is not available in mode {Mode(mode).name} without waiting"
                         f" (item {k} of the batch; the {k} before it are held)")
        if tmo is not None:
            w.deadline = self.now + tmo / 1000.0
        self._park(w)
        return PARKED

    @staticmethod
    def _many_items(items):
        """The LOCK_MANY items as [(path tuple, mode)], validated one by one
        (raises the _Reply or InvalidRequest naming the first bad one)."""
        if type(items) is _PackedItems:
            return items.decoded()         # valid, by construction
        parsed = []
        append = parsed.append
        enc = _encode
        for i, it in enumerate(items):
            if type(it) is not list or len(it) != 2:
                raise _Reply(E_PROTOCOL, f"LOCK_MANY item {i} must be [path, mode]")
            p, m = it
            if type(p) is list and len(p) <= MAX_DEPTH:
                p = tuple(p)
                enc(p)                     # validates (InvalidRequest naming the problem)
            else:
                p = _path(p)
            if type(m) is not int or not 1 <= m <= 5:
                check_mode(m)
            append((p, m))
        return parsed

    def _h_unlock(self, sess, seq, args):
        if len(args) == 4 and type(args[3]) is bool:      # quiet (a no-wait unlock): see _session_requests
            args = args[:3]
        if len(args) != 3:
            raise _Reply(E_PROTOCOL, "UNLOCK takes [txn, path, check_only, quiet?]")
        tid, path, check = args
        path = _path(path)
        t = self._txn(sess, tid, create=False)
        if t is not None and t.state != ACTIVE:
            raise _Reply(E_INVALID, f"transaction {tid} is {t.state}: it can only be committed or aborted")
        if t is not None and t.wait is not None:
            raise _Reply(E_INVALID, f"transaction {tid} is waiting for a lock; it cannot unlock meanwhile")
        table = self._table
        if check:
            if t is None or table.mode_held(tid, path) == 0:
                return [False]
            n = len(path)
            below = 0
            for p, _ in table.held(tid):
                if len(p) == n + 1 and p[:n] == path:
                    below += 1
            if below:
                raise _Reply(E_INVALID, f"transaction {tid} still holds {below} lock(s) below {path!r}; "
                                        f"unlock those first")
            return [True]
        if t is None:
            raise _Reply(E_INVALID, f"transaction {tid} does not hold {path!r}")
        woken = table.unlock(tid, path)
        if woken:
            self._woken.extend(woken)
        if t.nheld:
            t.nheld -= 1
            sess.nheld -= 1
            self.nheld -= 1
        return [True]

    def _h_downgrade(self, sess, seq, args):
        """Set a held lock back to a weaker mode: the client undoing a conversion that
        a strong lock above the partition depth made here before a later shard refused."""
        if len(args) != 3:
            raise _Reply(E_PROTOCOL, "DOWNGRADE takes [txn, path, mode]")
        tid, path, mode = args
        path = _path(path)
        t = self._txn(sess, tid, create=False)
        if t is None:
            raise _Reply(E_INVALID, f"transaction {tid} does not hold {path!r}")
        if t.state != ACTIVE:
            raise _Reply(E_INVALID, f"transaction {tid} is {t.state}: it can only be committed or aborted")
        woken = self._table.downgrade(tid, path, mode)     # InvalidRequest: nothing changed
        if woken:
            self._woken.extend(woken)
        return []

    def _h_release(self, sess, seq, args):
        if len(args) == 3 and type(args[2]) is bool:      # quiet (a no-wait release): see _session_requests
            args = args[:2]
        if len(args) != 2:
            raise _Reply(E_PROTOCOL, "RELEASE takes [txn, committed, quiet?]")
        tid = args[0]
        check_txn_id(tid)
        t = self._txns.get(tid)
        if t is not None:
            if t.session is not sess:
                raise _Reply(E_INVALID, f"transaction {tid} belongs to another session")
            if t.state != ACTIVE:   # a prepared txn: the decision is logged before the release
                return self.twophase.decide(t, bool(args[1]), sess, seq)
            if t.wait is not None:
                self.end_wait(t.wait, E_ABORTED, f"transaction {tid} was aborted while it waited")
            self.drop_txn(t)
        elif tid not in sess.tombs:
            _tomb(sess, tid)
        return []

    def _h_held(self, sess, seq, args):
        if len(args) != 1:
            raise _Reply(E_PROTOCOL, "HELD takes [txn]")
        check_txn_id(args[0])
        self.pages.check_held(sess, args[0])
        held = self._table.held(args[0])
        if len(held) > self.quotas.answer_rows:
            raise quota_error("answer_rows", self.quotas.answer_rows,
                              f"transaction {args[0]} holds {len(held)} locks on shard {self.index}; "
                              f"ask HELD_PAGE for them a page at a time")
        return [[list(p), m] for p, m in held]

    # ---------------------------------------------------------- lock caching
    # docs/service.md ("Lock caching"). A caching client keeps its transactions'
    # locks when they commit: the shard sees nothing (the transaction, a "carrier",
    # stays open here, holding them); a later transaction of that client adopts
    # the carrier (its requests carry the carrier's id). The shard's part: when a
    # request waits for (or is refused because of) a lock that a transaction of
    # a caching session holds, tell that session (N_CACHE_REVOKE); the client
    # gives the lock up (CACHE_GIVEUP) at once if no transaction uses it, else
    # when the using transaction ends. Deadlock detection is untouched: an idle
    # carrier waits for nothing, so it is on no cycle; a used one is an
    # ordinary transaction.

    def _h_cache_on(self, sess, seq, args):
        if args:
            raise _Reply(E_PROTOCOL, "CACHE_ON takes []")
        if not sess.caching:
            sess.caching = True
            self._caching.add(sess)
            self.counters["cache_sessions"] += 1
        return []

    def _h_cache_giveup(self, sess, seq, args):
        if len(args) != 2 or type(args[1]) is not list or not 1 <= len(args[1]) <= wire.MAX_BATCH:
            raise _Reply(E_PROTOCOL, f"CACHE_GIVEUP takes [txn, [path, ...]] (1..{wire.MAX_BATCH} paths)")
        tid, paths = args
        paths = [_path(p) for p in paths]
        t = self._txn(sess, tid, create=False)
        self.counters["cache_giveups"] += 1
        if t is None:
            return [0]                  # (finished or never here: nothing to give up)
        if t.state != ACTIVE:
            raise _Reply(E_INVALID, f"transaction {tid} is {t.state}: it can only be committed or aborted")
        if t.wait is not None:
            raise _Reply(E_INVALID, f"transaction {tid} is waiting for a lock; its cached locks are in use")
        table = self._table
        # the client names every node to give up (deepest first); one it did not
        # know of below a named node (an escalation, say) makes that node's unlock
        # fail: then everything the transaction holds below it is found and released
        mine = []
        for p in sorted(paths, key=len, reverse=True):
            if not table.mode_held(tid, p):
                continue
            try:
                woken = table.unlock(tid, p)
            except InvalidRequest:
                n = len(p)
                below = sorted((q for q, _ in table.held(tid) if len(q) > n and q[:n] == p), key=len, reverse=True)
                for q in below:
                    woken = table.unlock(tid, q)
                    if woken:
                        self._woken.extend(woken)
                mine.extend(below)
                woken = table.unlock(tid, p)
            mine.append(p)
            if woken:
                self._woken.extend(woken)
        k = min(len(mine), t.nheld)
        if k:
            t.nheld -= k
            sess.nheld -= k
            self.nheld -= k
        self.counters["cache_given_up"] += len(mine)
        return [len(mine)]

    def _revoke_wait(self, t):
        """``t`` waits: revoke the cached locks it waits for (those of the level it
        is queued on, held in a conflicting mode by a caching session's transaction)."""
        on = self._table.waiting_on(t.id)
        if on is not None:
            self._revoke_level(t.id, on[0], on[1], {})

    def _revoke_path(self, tid, path, mode):
        """A request of ``tid`` for ``mode`` on ``path`` was refused (nowait): revoke
        the cached locks in its way on every level (the intention mode on ancestors)."""
        seen = {}
        want = INTENTION[mode]
        for k in range(1, len(path)):
            self._revoke_level(tid, path[:k], want, seen)
        self._revoke_level(tid, path, mode, seen)

    def _revoke_level(self, tid, path, mode, seen):
        mode_held = self._table.mode_held
        for s in list(self._caching):
            for x in list(s.txns.values()):
                xid = x.id
                if xid == tid or xid in seen or x.state != ACTIVE:
                    continue
                held = mode_held(xid, path)
                if held and (CONFLICTS[held] >> mode) & 1:
                    seen[xid] = True
                    self.counters["cache_revokes"] += 1
                    self.push(s, [wire.N_CACHE_REVOKE, xid, list(path), mode])

    # ----------------------------------------------------------------- admin

    def _h_ping(self, args):
        return [self.epoch, self.index, self.nshards, self.partition_depth]

    def _h_snapshot(self, args):
        n = self._table.stats()["requests"]
        if n > self.quotas.answer_rows:
            raise quota_error("answer_rows", self.quotas.answer_rows,
                              f"shard {self.index} has {n} lock requests; ask SNAPSHOT_PAGE for them a page "
                              f"at a time")
        txns = self._txns
        rows = []
        for p, tid, m, g in self._table.snapshot():
            t = txns.get(tid)
            rows.append([list(p), tid, m, g, t.session.id if t is not None and t.session is not None else 0])
        return rows

    def _h_txn_name(self, sess, seq, args):
        # the name given to begin(name), shown by `lockmgr locks` (a named transaction
        # sends it with its first request to each shard; unnamed ones never do)
        if len(args) != 2:
            raise _Reply(E_PROTOCOL, "TXN_NAME takes [txn, name]")
        self._txn(sess, args[0]).name = str(args[1])[:200]
        return []

    def _h_info(self, args):
        now = self.now
        waits = [t.wait for t in self._txns.values() if t.wait is not None]
        out = dict(self.info)
        out.update(
            epoch=self.epoch, index=self.index, nshards=self.nshards,
            log_bytes=self.log_bytes() if self.log_bytes is not None else None,
            sessions=[[s.id, s.name, round(now - (s.expires - s.ttl), 3), len(s.txns)] for s in self._sessions.values()],
            txn_names=[[t.id, getattr(t, "name", None)] for t in self._txns.values()
                       if getattr(t, "name", None) is not None],
            waiters=len(waits), transactions=len(self._txns), now=now)
        return out

    def _h_graph(self, args):
        return [[k, sorted(v)] for k, v in self._table.wait_for_graph().items()]

    def _h_stats(self, args):
        s = dict.fromkeys(CORE_COUNTERS, 0)
        s.update(self._table.stats())
        s.update(self.counters)
        s.update(epoch=self.epoch, index=self.index, nshards=self.nshards, sessions=len(self._sessions),
                 partition_depth=self.partition_depth, timers=len(self._timers), locks_counted=self.nheld,
                 watches=self.watches.count)
        s["backend"] = BACKEND
        s.update(self.twophase.stats())
        s.update(self._reclaim.stats())
        s.update(self._probes.gauges())
        return s

