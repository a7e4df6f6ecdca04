"""A shard server: one process, one thread, one lock table, one ROUTER socket.

Interface:
    Shard(endpoint="tcp://127.0.0.1:0", data_dir=..., *, index=0, nshards=1,
          partition_depth=2, escalation_threshold=5000, clock=time.monotonic, ctx=None,
          probe_delay=0.010, probe_interval=None, peers=None,
          cluster_key=None,      # str: peer messages, PEERS and FAULTS must carry it
          peer_endpoint=None)    # "ipc://PATH": also bound, for the other shards' messages
        .endpoint            the bound endpoint (port resolved)
        .epoch               this start's epoch (persisted, bumped at each start)
        .run_once(timeout_ms) one loop turn: poll, drain (replying after each frame), timers
        .serve_forever(parent_pid=None)   until stop(), or until process parent_pid is gone
        .stop(), .close()
    main(argv)               ``python -m lockmgr.shard`` / ``lockmgr serve``

The loop: poll the socket; drain every frame that is ready (up to a bound),
handle each request against the table and send the replies that frame
produced (one frame per client) before reading the next; fire due timers
(lock-wait timeouts, session leases) kept in a SortedList; continue the lock
requests that the table reports as granted; then send what the timers
produced. The table never blocks; waiting requests are parked as ``_Wait``
objects and answered later. Protocol: docs/protocol.md; design and the
correctness argument: docs/design.md ("The lock service").

2PC (section "Two-phase commit" at the end of Shard; docs/design.md ("Two-phase commit in the service")): the data
directory holds a PrepareLog; PREPARE/DECIDE are answered once their record is
fsynced by the log's flusher thread, which wakes this loop with an internal
WAKE frame over inproc; prepared transactions are restored before the socket
serves anything.
"""

import argparse
import collections
import itertools
import os
import select
import signal
import sys
import time

import zmq
from sortedcontainers import SortedList

from . import wire
from ._checks import brief
from ._core import CONFLICT, WAITING, Table, BACKEND
from .errors import InvalidRequest, LockError
from .modes import Mode
from .paths import decode, encode, MAX_DEPTH
from .wal import CorruptLog, PrepareLog
from .probes import DEFAULT_PROBE_DELAY, ProbeEngine
from .timers import TimerKind

try:   # the compiled encoder validates exactly as lockmgr.paths.encode, faster
    from ._core._ctable import encode as _encode
except ImportError:  # pragma: no cover - no compiler
    _encode = encode
from .wire import (E_ABORTED, E_DEADLOCK, E_INTERNAL, E_INVALID, E_NOT_AVAILABLE, E_PROTOCOL,
                   E_SESSION_EXPIRED, E_STALE, E_TIMEOUT, E_TOO_BIG, E_UNKNOWN_SESSION,
                   E_UNKNOWN_TYPE, OK)

__all__ = ["Shard", "main", "read_and_bump_epoch"]

_PARKED = object()   # a handler's result: the request waits; it is answered later


_T_WAIT, _T_LEASE, _T_PROBE = TimerKind.WAIT, TimerKind.LEASE, TimerKind.PROBE

EPOCH_BITS = 40           # token = epoch << 40 | per-epoch counter
DRAIN_LIMIT = 4096        # frames handled per loop turn before timers and replies
# Seconds of requests one loop turn may handle before it fires due timers (lease
# expiry, wait timeouts) and returns, so that stop() / SIGTERM and the parent
# check are honoured under any load. A frame whose requests outlast it is
# finished in the next turns (_backlog), before any newer frame is read. One
# turn can exceed it by one frame's decode (bounded by wire.MAX_FRAME) and one
# request's work.
TURN_BUDGET = 0.02
MAX_ERROR_CHARS = 1000    # an error reply's message is cut to this (it may quote the request)
MAX_POLL_MS = 100
PARENT_CHECK = 0.5           # seconds between checks that --parent-pid still lives
MAX_TTL_MS = 3600 * 1000
MAX_CACHE = 200_000       # cached replies per session (beyond: oldest dropped)
MAX_TOMBSTONES = 4096     # finished txn ids remembered per session
MAX_EXPIRED = 65536       # expired session ids remembered (answer SESSION_EXPIRED)
RESOLVED_MEMORY = 100_000  # resolved gtrids remembered for idempotent DECIDE (2PC)
_TXN_LIMIT = 1 << 64

# LOCK_MANY items straight into the compiled table's form (wire.unpack_requests_packed);
# the pure-Python table takes the items as msgpack decodes them
if BACKEND == "c":
    from ._core._ctable import PackedItems as _PackedItems
    _unpack_requests = wire.unpack_requests_packed
else:
    class _PackedItems:   # never made: the pure-Python table takes msgpack's lists
        pass
    _unpack_requests = wire.unpack_requests

# pyzmq's compiled socket methods and plain int flags, for the loop's hot path
_ZSocket = zmq.backend.Socket if issubclass(zmq.Socket, zmq.backend.Socket) else zmq.Socket
_recv, _send, _get = _ZSocket.recv, _ZSocket.send, _ZSocket.get
_zmq_poll = zmq.zmq_poll
_NOBLOCK, _NOBLOCK_MORE = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE)
_RCVMORE, _EVENTS, _POLLIN = int(zmq.RCVMORE), int(zmq.EVENTS), int(zmq.POLLIN)


_PEER_ADMIN = frozenset((wire.PEERS, wire.FAULTS))   # admin messages that need the cluster key


class _Reply(Exception):
    """Raised by a handler to answer with an error status."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class _Session:
    __slots__ = ("id", "ttl", "expires", "prefix", "txns", "cache", "order", "ack", "inflight",
                 "tombs", "tomb_order", "name", "secret")

    def __init__(self, sid, ttl, now, prefix, name):
        self.id = sid
        self.ttl = ttl
        self.expires = now + ttl
        # routing frames of the connection the session is bound to: frames naming the
        # session from any other connection are refused, except a HELLO carrying
        # ``secret`` (the client reconnected), which binds it to the new one
        self.prefix = prefix
        self.secret = int.from_bytes(os.urandom(8), "big") >> 1 or 1
        self.txns = {}                # txn id -> _Txn
        self.cache = {}               # seq -> reply, for retries
        self.order = collections.deque()
        self.ack = 0                  # seqs below this are acknowledged by the client
        self.inflight = {}            # seq -> _Wait
        self.tombs = set()            # finished txn ids (a late request for one is refused)
        self.tomb_order = collections.deque()
        self.name = name


class _Txn:
    __slots__ = ("id", "session", "state", "wait", "gtrid", "participants", "prepared_at", "outcome",
                 "waiters", "nlocks")

    def __init__(self, tid, session):
        self.id = tid
        self.session = session        # None for a prepared txn restored from the log
        self.state = "active"         # 2PC: 'preparing' -> 'prepared' -> 'deciding' (then gone)
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


def read_and_bump_epoch(data_dir):
    """Read the epoch persisted in ``data_dir``, store epoch+1 durably, return it."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "epoch")
    epoch = 0
    try:
        with open(path) as f:
            epoch = int(f.read().strip() or 0)
    except FileNotFoundError:
        pass
    epoch += 1
    if epoch >= (1 << (63 - EPOCH_BITS)):
        raise RuntimeError("epoch space exhausted")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(epoch))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return epoch


def _check_txn_id(tid):
    if type(tid) is not int or not 0 < tid < (1 << 64):
        raise _Reply(E_INVALID, f"transaction id must be an int in 1..2**64-1; got {brief(tid)}")


def _check_mode(mode):
    if type(mode) is not int or not 1 <= mode <= 5:
        raise _Reply(E_INVALID, f"unknown lock mode {brief(mode)}; expected one of Mode.IS, IX, S, SIX, X")
    return mode


def _check_timeout_ms(t):
    if t is None:
        return None
    if type(t) is not int or not 0 <= t <= wire.MAX_TIMEOUT_MS:
        raise _Reply(E_INVALID, f"timeout_ms must be nil or an int in 0..{wire.MAX_TIMEOUT_MS}; got {brief(t)}")
    return t


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


class Shard:
    """One shard of the lock service. Not thread-safe: run it in one thread."""

    def __init__(self, endpoint="tcp://127.0.0.1:0", data_dir=None, *, index=0, nshards=1,
                 partition_depth=2, escalation_threshold=5000, clock=time.monotonic, ctx=None,
                 probe_delay=DEFAULT_PROBE_DELAY, probe_interval=None, peers=None, cluster_key=None,
                 peer_endpoint=None):
        if data_dir is None:
            raise InvalidRequest("a shard needs a data directory (its epoch is persisted there)")
        if peer_endpoint is not None and not (type(peer_endpoint) is str and peer_endpoint.startswith("ipc://")):
            raise InvalidRequest(f"peer endpoint must be ipc://PATH; got {peer_endpoint!r}")
        self.index = index
        self.nshards = nshards
        # shard-to-shard frames (and PEERS/FAULTS) must carry this in their session field
        self.peer_sid = wire.peer_session(cluster_key)
        self.partition_depth = partition_depth
        self.data_dir = data_dir
        self._clock = clock
        self._ctx = ctx or zmq.Context.instance()
        self._init_2pc(data_dir)      # opens the prepare log: bumps the epoch, replays (CorruptLog stops here)
        self._table = Table(escalation_threshold, self.epoch << EPOCH_BITS)
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME * 16)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            endpoint = endpoint[:-2] + ":*"
        self._sock.bind(endpoint)
        self._pollin = [(self._sock, zmq.POLLIN)]
        self.endpoint = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        # a second endpoint on the same socket for the other shards (a unix socket: one
        # shard-to-shard message is then ~20-30 % cheaper than over loopback TCP)
        if peer_endpoint is not None:
            self._sock.bind(peer_endpoint)
        self._sessions = {}
        self._expired = collections.OrderedDict()
        self._txns = {}
        self._timers = SortedList()
        self._tick = itertools.count()
        self._out = {}
        self._woken = collections.deque()
        self._backlog = collections.deque()   # (sid, prefix, requests, next index): frames a turn left unfinished
        self._turn_end = 0.0
        self._packer = wire.Packer()
        self._stop = False
        self._now = clock()
        self.counters = collections.Counter()
        self._handlers = {
            wire.HEARTBEAT: self._h_heartbeat, wire.CLOSE: self._h_close, wire.LOCK: self._h_lock_one,
            wire.LOCK_MANY: self._h_lock_many, wire.UNLOCK: self._h_unlock, wire.RELEASE: self._h_release,
            wire.DOWNGRADE: self._h_downgrade,
            wire.HELD: self._h_held,
        }
        self._admin = {wire.PING: self._h_ping, wire.SNAPSHOT: self._h_snapshot, wire.GRAPH: self._h_graph,
                       wire.STATS: self._h_stats}
        self._start_2pc()             # restores prepared txns before any request is served
        # -- distributed deadlock detection (lockmgr/probes.py, docs/design.md ("Distributed deadlock detection"))
        self._probes = ProbeEngine(self, probe_delay, probe_interval, peers)
        self._admin.update(self._probes.admin)
        self._peer = self._probes.peer_types

    # ---------------------------------------------------------------- loop

    def serve_forever(self, parent_pid=None):
        """Serve until stop(); with ``parent_pid``, also until that process is
        gone (checked every PARENT_CHECK seconds: a LocalCluster or ``lockmgr
        cluster`` killed by SIGKILL must not leave its shards running)."""
        check_at = time.monotonic() + PARENT_CHECK
        while not self._stop:
            self.run_once(MAX_POLL_MS)
            if parent_pid is not None and time.monotonic() >= check_at:
                check_at = time.monotonic() + PARENT_CHECK
                if os.getppid() != parent_pid:
                    print(f"lockmgr shard {self.index}: parent process {parent_pid} is gone; stopping",
                          file=sys.stderr)
                    break

    def stop(self):
        self._stop = True

    def close(self):
        self._probes.close()
        self._close_2pc()
        self._sock.close(0)

    def run_once(self, timeout_ms):
        """One loop turn: finish the backlog, poll, drain frames (replying after
        each), fire due timers. Handles requests for about TURN_BUDGET seconds
        at most (see there); each frame is timed when it is handled, so a lease
        is renewed from a time no earlier than its client sent the frame."""
        timers = self._timers
        sock = self._sock
        clock = self._clock
        self._now = now = clock()
        self._turn_end = now + TURN_BUDGET
        backlog = self._backlog
        if backlog:
            self._resume_backlog()
            timeout_ms = 0
        if timers:
            due = (timers[0][0] - now) * 1000
            if 0 < due < 1 and timeout_ms > 0:
                # zmq's poll counts whole milliseconds: wait out a sub-ms remainder on the
                # socket's fd instead (a timer, e.g. a probe, is then not up to 1 ms late)
                if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    select.select([sock.getsockopt(zmq.FD)], [], [], due / 1000)
                timeout_ms = 0
            else:
                timeout_ms = max(0, min(timeout_ms, int(due)))
        # pyzmq's compiled calls, not its Python wrappers (Socket.poll builds a
        # Poller per call, recv_multipart/send_multipart add frames and enum
        # flag arithmetic, and zmq.Again costs an exception per turn): on a
        # busy 2-core machine every request runs on cold caches, where each
        # of those costs several times its warm figure.
        if not backlog and _zmq_poll(self._pollin, timeout_ms):
            for _ in range(DRAIN_LIMIT):
                try:
                    frames = [_recv(sock, _NOBLOCK)]
                    while _get(sock, _RCVMORE):
                        frames.append(_recv(sock, _NOBLOCK))
                except zmq.Again:
                    break
                self._now = clock()          # this frame's time (a lease renews from it)
                try:
                    self._on_frame(frames)
                except Exception as e:  # a bug must not stop the shard
                    self._internal_error("frame", e)
                self._process_woken()
                # Reply now, not at the end of the drain: a pipelining client
                # then gets its answers (and sends more) while we handle the
                # frames behind its, instead of every client idling until a
                # long drain ends (it left the 2 cores ~40% idle under load).
                if self._out:
                    self._flush()
                if backlog or not _get(sock, _EVENTS) & _POLLIN or clock() >= self._turn_end:
                    break
        self._now = now = clock()
        end = max(self._turn_end, now + TURN_BUDGET / 2)   # timers get their share of a full turn too
        while timers and timers[0][0] <= now:
            _, _, kind, obj = timers.pop(0)
            try:
                if kind is _T_WAIT:
                    self._on_wait_timeout(obj)
                elif kind is _T_PROBE:
                    self._probes.on_timer()     # probes (lockmgr/probes.py)
                else:
                    self._on_lease_timer(obj)
                self._process_woken()
            except Exception as e:      # a bug in one timer must not stop the shard
                self._internal_error(f"{kind.value} timer", e)
            if clock() >= end:
                break                   # the rest fire next turn
        pr = self._probes
        try:
            if pr.inbox:
                pr.turn(send=False)
        except Exception as e:
            self._internal_error("probe messages", e)
        # client replies first (a deadlock victim's answer among them), then the peer
        # messages (whose effects -- aborts elsewhere, grants -- compete for the cores)
        self._flush()
        if pr.outbox:
            pr.send_outbox()

    def _internal_error(self, where, e):
        self.counters["internal_errors"] += 1
        print(f"lockmgr shard {self.index}: internal error ({where}): {brief(e)}", file=sys.stderr, flush=True)

    def _resume_backlog(self):
        """Go on with the frames an earlier turn left unfinished, oldest first,
        within this turn's budget."""
        backlog = self._backlog
        while backlog and self._clock() < self._turn_end:
            sid, prefix, reqs, k = backlog.popleft()
            self._now = self._clock()
            try:
                self._requests(sid, prefix, reqs, k)
            except Exception as e:
                self._internal_error("frame", e)
            self._process_woken()
            if self._out:
                self._flush()

    def _flush(self):
        out = self._out
        if not out:
            return
        sock = self._sock
        pack = self._packer.pack
        v = wire.VERSION
        for prefix, reps in out.items():
            if not reps:
                continue
            try:
                for part in prefix:
                    _send(sock, part, _NOBLOCK_MORE)
                _send(sock, pack([v, reps]), _NOBLOCK)
            except zmq.ZMQError:  # peer gone or over its HWM: it will retry
                self.counters["dropped_replies"] += 1
        self._out = {}

    def _send(self, prefix, rep):
        lst = self._out.get(prefix)
        if lst is None:
            self._out[prefix] = [rep]
        else:
            lst.append(rep)

    def _answer(self, sess, seq, status, payload):
        """Queue a reply to the session's latest routing prefix and cache it for retries."""
        rep = [seq, status, payload]
        if sess is not None and sess.id in self._sessions:
            sess.cache[seq] = rep
            sess.order.append(seq)
            if len(sess.order) > MAX_CACHE:
                sess.cache.pop(sess.order.popleft(), None)
            self._send(sess.prefix, rep)

    # ------------------------------------------------------------ dispatch
    # A frame: [VERSION, session, ack, requests]. Frames naming a session must come
    # from the connection the session is bound to (see _Session.prefix); the
    # requests of a frame are handled in order, within the turn's budget.

    def _on_frame(self, frames):
        n = len(frames)
        if n == 2:
            prefix = (frames[0],)
            payload = frames[1]
        elif n == 3 and frames[1] == b"":       # a REQ socket's envelope
            prefix = (frames[0], b"")
            payload = frames[2]
        else:
            self.counters["bad_frames"] += 1
            self._send((frames[0],) if n else (b"",),
                       [0, E_PROTOCOL, f"expected one message part after the routing id; got {n - 1}"])
            return
        try:
            sid, ack, reqs = _unpack_requests(payload)
        except wire.ProtocolError as e:
            self.counters["bad_frames"] += 1
            self._send(prefix, [0, e.status, str(e)])
            return
        sess = self._sessions.get(sid) if sid else None
        if sess is not None:
            if prefix[0] != sess.prefix[0] and not self._rebind(sess, prefix, reqs):
                return
            sess.prefix = prefix
            sess.expires = self._now + sess.ttl
            if ack > sess.ack:
                sess.ack = ack
                order, cache = sess.order, sess.cache
                while order and order[0] < ack:
                    cache.pop(order.popleft(), None)
            self._session_requests(sess, prefix, reqs, 0)
            return
        self._requests(sid, prefix, reqs, 0)

    def _rebind(self, sess, prefix, reqs):
        """A frame naming ``sess`` from another connection than the one it is bound
        to: a client that reconnected (its HELLO carries the session's secret) gets
        the session bound to the new connection (True); anyone else is refused, and
        nothing of the session changes -- not its lease, acks or reply cache (False)."""
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

    def _over_budget(self, sid, prefix, reqs, k):
        """True (and the rest of the frame queued) if this turn's budget is spent
        before request ``k``."""
        if k < len(reqs) and self._clock() >= self._turn_end:
            self._backlog.append((sid, prefix, reqs, k))
            return True
        return False

    def _requests(self, sid, prefix, reqs, start):
        """Requests ``start``.. of a frame (session-less ones, HELLO, or a resumed frame)."""
        sess = self._sessions.get(sid) if sid else None
        if sess is not None:
            if start and sess.prefix[0] != prefix[0]:
                return                  # the session was rebound meanwhile: the old connection's rest is void
            self._session_requests(sess, prefix, reqs, start)
            return
        for k in range(start, len(reqs)):
            if k > start and self._over_budget(sid, prefix, reqs, k):
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
                    self._session_requests(sess, prefix, reqs, k)
                    return
                if typ == wire.HELLO:
                    sess = self._h_hello(sid, prefix, seq, req[2:])
                    continue
                self._other_request(typ, seq, prefix, req, sid)
            except _Reply as e:
                self.counters["errors"] += 1
                self._reply_error(sess, prefix, seq, e.status, str(e))

    def _other_request(self, typ, seq, prefix, req, sid):
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
        if typ in self._peer:            # shard -> shard (probes, lockmgr/probes.py): no reply
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
        clock = self._clock
        for k in range(start, len(reqs)):
            if k > start:
                if clock() >= self._turn_end:
                    self._backlog.append((sid, prefix, reqs, k))
                    return
                if sid not in sessions:       # ended by an earlier request of this frame (CLOSE)
                    self._requests(sid, prefix, reqs, k)
                    return
            req = reqs[k]
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
                        continue
                    if seq < ack:
                        raise _Reply(E_STALE, f"seq {seq} was already acknowledged; not executed again")
                    result = h(sess, seq, req[2:])
                    if result is not _PARKED:
                        if sid in sessions:           # still alive (not closed by this request)
                            rep = [seq, OK, result]
                            cache[seq] = rep
                            order.append(seq)
                            if len(order) > MAX_CACHE:
                                cache.pop(order.popleft(), None)
                            out.append(rep)
                        else:
                            self._answer(sess, seq, OK, result)
                    continue
                if typ == wire.HELLO:
                    self._h_hello(sess.id, prefix, seq, req[2:])
                    continue
                self._other_request(typ, seq, prefix, req, sess.id)
            except _Reply as e:
                self.counters["errors"] += 1
                self._reply_error(sess, prefix, seq, e.status, str(e))
            except InvalidRequest as e:
                self.counters["errors"] += 1
                self._reply_error(sess, prefix, seq, E_INVALID, str(e))
            except LockError as e:
                self.counters["errors"] += 1
                self._reply_error(sess, prefix, seq, E_INVALID, str(e))
            except (TypeError, ValueError, OverflowError) as e:
                self.counters["bad_requests"] += 1
                self._reply_error(sess, prefix, seq, E_PROTOCOL,
                                  f"malformed {wire.TYPE_NAMES.get(typ, typ)} request: {e}")

    def _reply_error(self, sess, prefix, seq, status, msg):
        if len(msg) > MAX_ERROR_CHARS:
            msg = f"{msg[:MAX_ERROR_CHARS]}... (a message of {len(msg)} characters, cut)"
        if sess is not None and sess.id in self._sessions and status not in (E_STALE,):
            self._answer(sess, seq, status, msg)
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
            sess = _Session(sid, args[0] / 1000.0, self._now, prefix, str(args[1])[:200])
            self._sessions[sid] = sess
            self._timers.add((sess.expires, next(self._tick), _T_LEASE, sess))
            self.counters["sessions_opened"] += 1
        self._answer(sess, seq, OK, [self.epoch, self.index, self.nshards, self.partition_depth, sess.secret])
        return sess

    def _h_heartbeat(self, sess, seq, args):
        return [self.epoch]

    def _h_close(self, sess, seq, args):
        self._answer(sess, seq, OK, [])
        self._end_session(sess, "was closed")
        return _PARKED

    def _on_lease_timer(self, sess):
        if self._sessions.get(sess.id) is not sess:
            return
        if sess.expires > self._now:
            self._timers.add((sess.expires, next(self._tick), _T_LEASE, sess))
            return
        self.counters["sessions_expired"] += 1
        self._end_session(sess, "expired: no heartbeat within its TTL")

    def _end_session(self, sess, why):
        """Abort the session's unprepared transactions; forget it."""
        for t in list(sess.txns.values()):
            if t.state != "active":
                continue  # preparing / prepared / deciding: in doubt until resolved (2PC)
            if t.wait is not None:
                self._end_wait(t.wait, E_SESSION_EXPIRED, f"session {why}; transaction {t.id} aborted")
            self._drop_txn(t)
        self._sessions.pop(sess.id, None)
        self._expired[sess.id] = why
        if len(self._expired) > MAX_EXPIRED:
            self._expired.popitem(last=False)

    # ---------------------------------------------------------- transactions

    def _txn(self, sess, tid, create=True):
        _check_txn_id(tid)
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

    def _drop_txn(self, t):
        """Release everything ``t`` holds here and forget it (tombstoned)."""
        woken = self._table.release_all(t.id)
        if woken:
            self._woken.extend(woken)
        self._txns.pop(t.id, None)
        sess = t.session
        sess.txns.pop(t.id, None)
        _tomb(sess, t.id)

    def _start(self, sess, seq, tid, items, nowait, timeout_ms, many):
        t = self._txn(sess, tid)
        if t.state != "active":
            raise _Reply(E_INVALID, f"transaction {tid} is {t.state}: it can only be committed or aborted")
        if t.wait is not None:
            raise _Reply(E_INVALID, f"transaction {tid} is already waiting for a lock")
        table = self._table
        prev = None if many else table.mode_held(tid, items[0][0])
        w = _Wait(t, seq, items, 0, [], many, prev)
        if timeout_ms is not None:
            w.deadline = self._now + timeout_ms / 1000.0
        return self._run(w, nowait)

    def _run(self, w, nowait=False):
        """Advance ``w`` through its items; answer or park it. Returns the reply
        payload, or _PARKED."""
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
                raise _Reply(E_NOT_AVAILABLE,
                             f"{path!r} is not available in mode {Mode(mode).name} without waiting"
                             + (f" (item {w.idx} of the batch; the {w.idx} before it are held)" if w.many else ""))
            # WAITING: park, arm the timer, look for a deadlock closed by this wait
            self._park(w)
            return _PARKED
        w.idx = idx
        if w.many:
            return [tokens, self.epoch]
        return [tokens[0], w.prev, self.epoch]

    def _park(self, w):
        """``w`` waits (the table queued its current item): arm its timer and
        look for a deadlock closed by this wait."""
        t = w.txn
        t.wait = w
        t.session.inflight[w.seq] = w
        if w.deadline is not None:
            w.timer = (w.deadline, next(self._tick), _T_WAIT, w)
            self._timers.add(w.timer)
        self.counters["waits"] += 1
        self._check_deadlock(t)
        if t.wait is w:
            self._probes.on_wait(t, w)     # cross-shard detection (lockmgr/probes.py)

    def _check_deadlock(self, t):
        table = self._table
        while t.wait is not None:
            cycle = table.find_cycle(t.id)
            if not cycle:
                return
            victim = self._txns.get(max(cycle))  # the youngest transaction of the cycle
            self.counters["deadlocks"] += 1
            if victim is None or victim.wait is None:  # cannot happen: every cycle member waits here
                return
            self._probes.on_local_victim(cycle, victim.id, t.id)
            self._end_wait(victim.wait, E_DEADLOCK,
                           f"transaction {victim.id} was chosen as deadlock victim (youngest in wait-for "
                           f"cycle {cycle} on shard {self.index}); it has been aborted")
            self._drop_txn(victim)

    def _end_wait(self, w, status, msg):
        t = w.txn
        if t.wait is w:
            t.wait = None
            self._probes.on_wait_end(t.id)
        t.session.inflight.pop(w.seq, None)
        if w.timer is not None:
            self._timers.discard(w.timer)
            w.timer = None
        self._answer(t.session, w.seq, status, msg)

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
        self._end_wait(w, E_TIMEOUT, f"timed out waiting for {Mode(mode).name} on {path!r}")

    def _process_woken(self):
        woken = self._woken
        txns = self._txns
        while woken:
            t = txns.get(woken.popleft())
            if t is None or t.wait is None:
                continue
            w = t.wait
            sess = t.session
            if sess.expires <= self._now:
                # never grant a waiter whose lease has run out: expire the session instead
                self.counters["sessions_expired"] += 1
                self._end_session(sess, "expired: no heartbeat within its TTL")
                continue
            t.wait = None
            self._probes.on_wait_end(t.id)
            sess.inflight.pop(w.seq, None)
            if w.timer is not None:
                self._timers.discard(w.timer)
                w.timer = None
            # the table granted the level we waited on; lock() again continues down the path
            try:
                res = self._run(w)
            except _Reply as e:
                self._answer(sess, w.seq, e.status, str(e))
                continue
            except LockError as e:
                self._answer(sess, w.seq, E_INVALID, str(e))
                continue
            if res is not _PARKED:
                self._answer(sess, w.seq, OK, res)

    # -------------------------------------------------------------- handlers

    def _h_lock_one(self, sess, seq, args):
        # The hot path: checks inline; the table validates the path itself (it
        # raises InvalidRequest before changing anything); a _Wait is built only
        # when the request has to wait.
        if len(args) != 6:
            raise _Reply(E_PROTOCOL, "LOCK takes [txn, path, mode, nowait, timeout_ms, epoch]")
        tid, path, mode, nowait, tmo, ep = args
        if type(tid) is not int or not 0 < tid < _TXN_LIMIT:
            _check_txn_id(tid)
        if type(path) is list:
            if len(path) > MAX_DEPTH:
                raise _Reply(E_TOO_BIG, f"resource path has {len(path)} components; at most {MAX_DEPTH} are allowed")
            path = tuple(path)
        else:
            path = _path(path)
        if type(mode) is not int or not 1 <= mode <= 5:
            _check_mode(mode)
        if tmo is not None:
            _check_timeout_ms(tmo)
        if ep and ep != self.epoch:
            self._check_epoch(tid, ep)
        nowait = bool(nowait)
        table = self._table
        t = self._txns.get(tid)
        if t is None:
            if tid in sess.tombs:
                raise _Reply(E_ABORTED, f"transaction {tid} has finished on this shard")
            tok = table.lock(tid, path, mode, nowait)     # InvalidRequest: nothing changed
            t = _Txn(tid, sess)
            self._txns[tid] = t
            sess.txns[tid] = t
            prev = 0
        else:
            if t.session is not sess:
                raise _Reply(E_INVALID, f"transaction {tid} belongs to another session")
            if t.state != "active":   # 2PC: prepared
                raise _Reply(E_INVALID, f"transaction {tid} is {t.state}: it can only be committed or aborted")
            if t.wait is not None:
                raise _Reply(E_INVALID, f"transaction {tid} is already waiting for a lock")
            prev = table.mode_held(tid, path)
            tok = table.lock(tid, path, mode, nowait)
        if tok > 0:
            return [tok, prev, self.epoch]
        if tok == CONFLICT:
            raise _Reply(E_NOT_AVAILABLE, f"{path!r} is not available in mode {Mode(mode).name} without waiting")
        w = _Wait(t, seq, [(path, mode)], 0, [], False, prev)
        if tmo is not None:
            w.deadline = self._now + tmo / 1000.0
        self._park(w)
        return _PARKED

    def _check_epoch(self, tid, ep):
        if ep and ep != self.epoch:
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
        _check_txn_id(tid)
        self._check_epoch(tid, ep)
        ti = type(items)
        if ti is not list and ti is not _PackedItems:
            raise _Reply(E_PROTOCOL, "LOCK_MANY items must be an array of [path, mode]")
        if len(items) > wire.MAX_BATCH:
            raise _Reply(E_TOO_BIG, f"LOCK_MANY of {len(items)} items; at most {wire.MAX_BATCH}")
        if tmo is not None and (type(tmo) is not int or not 0 <= tmo <= wire.MAX_TIMEOUT_MS):
            self._many_items(items)        # a bad item is reported first
            _check_timeout_ms(tmo)
        t = self._txns.get(tid)
        if (t is None and tid in sess.tombs) or (t is not None and (t.session is not sess or t.wait is not None
                                                                    or t.state != "active")):
            self._many_items(items)        # a bad item is reported first
            self._txn(sess, tid)           # raises: finished, or another session's
            if t.state != "active":        # 2PC: prepared
                raise _Reply(E_INVALID, f"transaction {tid} is {t.state}: it can only be committed or aborted")
            raise _Reply(E_INVALID, f"transaction {tid} is already waiting for a lock")
        try:
            res = self._table.lock_many(tid, items, nowait)
        except InvalidRequest:
            self._many_items(items)        # the precise status (protocol, too big, invalid)
            raise                          # nothing changed
        if t is None:
            t = _Txn(tid, sess)
            self._txns[tid] = t
            sess.txns[tid] = t
        if not res or res[-1] > 0:
            return [res, self.epoch]
        # item k = len(res) - 1 waits (or conflicts, nowait): the slow path
        k = len(res) - 1
        w = _Wait(t, seq, self._many_items(items), k, res[:k], True, None)
        if res[k] == CONFLICT:
            path, mode = w.items[k]
            raise _Reply(E_NOT_AVAILABLE,
                         f"{path!r} is not available in mode {Mode(mode).name} without waiting"
                         f" (item {k} of the batch; the {k} before it are held)")
        if tmo is not None:
            w.deadline = self._now + tmo / 1000.0
        self._park(w)
        return _PARKED

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
                _check_mode(m)
            append((p, m))
        return parsed

    def _h_unlock(self, sess, seq, args):
        if len(args) != 3:
            raise _Reply(E_PROTOCOL, "UNLOCK takes [txn, path, check_only]")
        tid, path, check = args
        path = _path(path)
        t = self._txn(sess, tid, create=False)
        if t is not None and t.state != "active":
            raise _Reply(E_INVALID, f"transaction {tid} is {t.state}: it can only be committed or aborted")
        if t is not None and t.wait is not None:
            raise _Reply(E_INVALID, f"transaction {tid} is waiting for a lock; it cannot unlock meanwhile")
        table = self._table
        if check:
            if t is None or table.mode_held(tid, path) == 0:
                return [False]
            n = len(path)
            below = sum(1 for p, _ in table.held(tid) if len(p) == n + 1 and p[:n] == path)
            if below:
                raise _Reply(E_INVALID, f"transaction {tid} still holds {below} lock(s) below {path!r}; "
                                        f"unlock those first")
            return [True]
        if t is None:
            raise _Reply(E_INVALID, f"transaction {tid} does not hold {path!r}")
        woken = table.unlock(tid, path)
        if woken:
            self._woken.extend(woken)
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
        if t.state != "active":
            raise _Reply(E_INVALID, f"transaction {tid} is {t.state}: it can only be committed or aborted")
        woken = self._table.downgrade(tid, path, mode)     # InvalidRequest: nothing changed
        if woken:
            self._woken.extend(woken)
        return []

    def _h_release(self, sess, seq, args):
        if len(args) != 2:
            raise _Reply(E_PROTOCOL, "RELEASE takes [txn, committed]")
        tid = args[0]
        _check_txn_id(tid)
        t = self._txns.get(tid)
        if t is not None:
            if t.session is not sess:
                raise _Reply(E_INVALID, f"transaction {tid} belongs to another session")
            if t.state != "active":   # a prepared txn: the decision is logged before the release
                return self._decide(t, bool(args[1]), sess, seq)
            if t.wait is not None:
                self._end_wait(t.wait, E_ABORTED, f"transaction {tid} was aborted while it waited")
            self._drop_txn(t)
        elif tid not in sess.tombs:
            _tomb(sess, tid)
        return []

    def _h_held(self, sess, seq, args):
        if len(args) != 1:
            raise _Reply(E_PROTOCOL, "HELD takes [txn]")
        _check_txn_id(args[0])
        t = self._txns.get(args[0])
        if t is not None and t.session is not sess and t.state == "active":
            # (a prepared transaction outlives its session: anyone may look at it)
            raise _Reply(E_INVALID, f"transaction {args[0]} belongs to another session")
        return [[list(p), m] for p, m in self._table.held(args[0])]

    # ----------------------------------------------------------------- admin

    def _h_ping(self, args):
        return [self.epoch, self.index, self.nshards, self.partition_depth]

    def _h_snapshot(self, args):
        txns = self._txns
        rows = []
        for p, tid, m, g in self._table.snapshot():
            t = txns.get(tid)
            rows.append([list(p), tid, m, g, t.session.id if t is not None and t.session is not None else 0])
        return rows

    def _h_graph(self, args):
        return [[k, sorted(v)] for k, v in self._table.wait_for_graph().items()]

    def _h_stats(self, args):
        s = dict(self._table.stats())
        s.update(self.counters)
        s.update(epoch=self.epoch, index=self.index, nshards=self.nshards, sessions=len(self._sessions),
                 partition_depth=self.partition_depth, timers=len(self._timers))
        s["backend"] = BACKEND
        s.update(self._stats_2pc())
        s.update(self._probes.gauges())
        return s

    # ============================================================ Two-phase commit
    # (docs/design.md ("Two-phase commit in the service")) PREPARE appends the transaction's locks and tokens to the
    # shard's PrepareLog and parks the request; the log's flusher thread fsyncs
    # (group commit) and wakes this loop through an internal WAKE frame sent to
    # the shard's own ROUTER over inproc, so the loop never waits for the disk.
    # DECIDE (and RELEASE of a prepared txn) logs the decision durably *before*
    # the locks are released. Restored prepared txns have no session.

    def _init_2pc(self, data_dir):
        self._durable = collections.deque()   # batches of durable tickets, from the flusher thread
        self._log_cb = {}                       # Ticket -> (callback, txn)
        self._gtrids = {}                       # gtrid -> _Txn (preparing, prepared, deciding)
        self._resolved = collections.OrderedDict()  # gtrid -> commit, the most recent RESOLVED_MEMORY
        self._wake_sock = None
        self._wake_ep = f"inproc://lockmgr-shard-wake-{os.getpid()}-{id(self):x}"
        self._wake_frame = wire.pack_requests(0, 0, [[wire.WAKE, 0]])
        self._replay_t0 = time.perf_counter()
        self._plog = PrepareLog(data_dir, on_durable=self._on_durable)
        try:
            self.epoch = self._plog.epoch
            if self.epoch >= (1 << (63 - EPOCH_BITS)):
                raise RuntimeError("epoch space exhausted")
            if self._plog.truncated_at is not None:
                print(f"lockmgr shard {self.index}: prepare log {self._plog.path}: torn tail at offset "
                      f"{self._plog.truncated_at} cut off ({len(self._plog.live)} prepared transaction(s) "
                      f"kept; the cut records were never acknowledged)", file=sys.stderr, flush=True)
            for g, c in self._plog.resolved.items():
                self._resolved[g] = c
        except BaseException:
            self._plog.close()
            raise

    def _start_2pc(self):
        self._sock.bind(self._wake_ep)
        self._handlers[wire.PREPARE] = self._h_prepare
        self._handlers[wire.DECIDE] = self._h_decide
        self._admin[wire.INDOUBT] = self._h_indoubt
        self._admin[wire.WAKE] = self._h_wake
        t0 = self._replay_t0
        table = self._table
        lock = table.lock
        txns, gtrids = self._txns, self._gtrids
        nlocks = 0
        for rec in sorted(self._plog.live_records().values(), key=lambda r: r["txn"]):
            t = _Txn(rec["txn"], None)
            t.state = "prepared"
            t.outcome = None
            t.waiters = None
            t.gtrid = rec["gtrid"]
            t.participants = rec.get("parts") or [self.index]
            t.prepared_at = rec.get("at") or time.time()
            tid = t.id
            if tid in txns:
                raise CorruptLog(f"transaction id {tid} appears twice among the prepared transactions of the log")
            conv = tuple if rec.get("fmt") == "path" else decode
            for key, mode, _token in rec["locks"]:
                if lock(tid, conv(key), mode, True) <= 0:
                    raise CorruptLog(f"prepared transaction {t.gtrid!r} conflicts with another in the log")
            t.nlocks = len(rec["locks"])
            nlocks += t.nlocks
            txns[tid] = t
            gtrids[t.gtrid] = t
        self.restored = (len(gtrids), nlocks, time.perf_counter() - t0)
        if gtrids:
            print(f"lockmgr shard {self.index}: restored {len(gtrids)} prepared transaction(s) with {nlocks} "
                  f"lock(s) from the prepare log in {self.restored[2] * 1000:.1f} ms (read + re-lock)", file=sys.stderr, flush=True)

    def _close_2pc(self):
        if self._plog is not None:
            self._plog.close()      # joins the flusher thread: nobody uses the wake socket after this
            self._plog = None
        if self._wake_sock is not None:
            self._wake_sock.close(0)
            self._wake_sock = None

    def _on_durable(self, batch):
        """Flusher thread: hand the batch to the loop and wake it."""
        self._durable.append(batch)
        s = self._wake_sock
        try:
            if s is None:
                s = self._wake_sock = self._ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.connect(self._wake_ep)
            while True:                       # drop the loop's (empty) answers to earlier wakes
                try:
                    s.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
            s.send(self._wake_frame, zmq.NOBLOCK)
        except zmq.ZMQError:                  # shutting down; the loop also polls _durable each WAKE
            pass

    def _h_wake(self, args):
        durable = self._durable
        cbs = self._log_cb
        while durable:
            for tk in durable.popleft():
                cb = cbs.pop(tk, None)
                if cb is not None:
                    cb[0](cb[1], tk)
        return []

    def _stats_2pc(self):
        plog = self._plog
        return {"indoubt": sum(1 for t in self._gtrids.values() if t.state == "prepared"),
                "log_fsyncs": plog.fsyncs if plog else 0, "log_compactions": plog.compactions if plog else 0}

    @staticmethod
    def _check_gtrid(g):
        if type(g) not in (str, bytes) or not g or len(g) > 256:
            raise _Reply(E_INVALID, f"gtrid must be a non-empty str of at most 256 characters; got {brief(g)}")
        return g

    def _h_prepare(self, sess, seq, args):
        if len(args) != 4:
            raise _Reply(E_PROTOCOL, "PREPARE takes [txn, gtrid, epoch, [participant shard, ...]]")
        tid, gtrid, ep, parts = args
        _check_txn_id(tid)
        gtrid = self._check_gtrid(gtrid)
        if type(parts) is not list or not all(type(p) is int and 0 <= p < self.nshards for p in parts) \
                or len(parts) > self.nshards:
            raise _Reply(E_PROTOCOL, f"PREPARE participants must be a list of shard indexes in 0..{self.nshards - 1}")
        self._check_epoch(tid, ep)
        t = self._txn(sess, tid)
        if t.state != "active":
            if t.gtrid != gtrid:
                raise _Reply(E_INVALID, f"transaction {tid} is {t.state} as gtrid {t.gtrid!r}")
            if t.state == "prepared":
                return [t.nlocks, self.epoch]          # prepared already: idempotent
            if t.state == "preparing":
                t.waiters.append((sess, seq, "prepare"))
                sess.inflight[seq] = t
                return _PARKED
            raise _Reply(E_INVALID, f"transaction {tid} is being {'committed' if t.outcome else 'aborted'}")
        if t.wait is not None:
            raise _Reply(E_INVALID, f"transaction {tid} is waiting for a lock; it cannot prepare meanwhile")
        other = self._gtrids.get(gtrid)
        if other is not None or gtrid in self._resolved:
            raise _Reply(E_INVALID, f"gtrid {gtrid!r} is already used by "
                                    f"{'transaction %d' % other.id if other else 'a resolved transaction'}")
        table = self._table
        lock = table.lock
        # re-locking a held mode changes nothing and returns its current token.
        # The shard logs paths (msgpack arrays: replay needs no decode) with
        # "fmt": "path"; records with key bytes (PrepareLog's default) replay too.
        locks = [[list(p), m, lock(tid, p, m)] for p, m in table.held(tid)]
        t.state = "preparing"
        t.outcome = None
        t.gtrid = gtrid
        t.participants = sorted(set(parts) | {self.index})
        t.prepared_at = time.time()
        t.nlocks = len(locks)
        t.waiters = [(sess, seq, "prepare")]
        self._gtrids[gtrid] = t
        tk = self._plog.submit({"t": "prepare", "gtrid": gtrid, "txn": tid, "name": sess.name,
                                "at": t.prepared_at, "parts": t.participants, "fmt": "path", "locks": locks})
        self._log_cb[tk] = (self._prepare_durable, t)
        sess.inflight[seq] = t
        self.counters["prepares"] += 1
        return _PARKED

    def _answer_waiters(self, t, kind, status, payload):
        """Answer the parked requests of ``kind`` on ``t``: 'prepare', 'decide', or
        'conflict' (a DECIDE the other way than the one being logged)."""
        keep = []
        for w in t.waiters or ():
            if w[2] != kind:
                keep.append(w)
                continue
            w[0].inflight.pop(w[1], None)
            self._answer(w[0], w[1], status, payload)
        t.waiters = keep

    def _prepare_durable(self, t, tk):
        if tk.error is not None:
            if t.state == "preparing":       # not durable: not prepared
                t.state = "active"
                self._gtrids.pop(t.gtrid, None)
                t.gtrid = None
                if t.session is not None and t.session.id not in self._sessions:
                    self._drop_txn(t)         # its session ended meanwhile
            self._answer_waiters(t, "prepare", E_INTERNAL, f"prepare not durable on shard {self.index}: {tk.error}")
            return
        if t.state == "preparing":
            t.state = "prepared"
            self._answer_waiters(t, "prepare", OK, [t.nlocks, self.epoch])
        else:                                # decided while the prepare was being written
            self._answer_waiters(t, "prepare", E_ABORTED,
                                 f"transaction {t.id} was resolved while it was being prepared")

    def _decide(self, t, commit, sess, seq):
        """Log the decision for prepared ``t``; release its locks once it is durable.
        (While it is still 'preparing' the resolve record is queued behind the
        prepare record: the log keeps their order.)"""
        kind = "decide"
        if t.state == "deciding":
            if t.outcome != commit:
                kind = "conflict"       # answered ["conflict", outcome] once the other decision is durable
        else:
            t.state = "deciding"
            t.outcome = commit
            tk = self._plog.submit({"t": "resolve", "gtrid": t.gtrid, "commit": commit})
            self._log_cb[tk] = (self._decide_durable, t)
            self.counters["decisions"] += 1
        if t.waiters is None:
            t.waiters = []
        t.waiters.append((sess, seq, kind))
        sess.inflight[seq] = t
        return _PARKED

    def _decide_durable(self, t, tk):
        if tk.error is not None:
            t.state = "prepared" if self._gtrids.get(t.gtrid) is t else "active"
            for kind in ("decide", "conflict"):
                self._answer_waiters(t, kind, E_INTERNAL, f"decision not durable on shard {self.index}: {tk.error}")
            return
        self._gtrids.pop(t.gtrid, None)
        self._resolved[t.gtrid] = t.outcome
        if len(self._resolved) > RESOLVED_MEMORY:
            self._resolved.popitem(last=False)
        woken = self._table.release_all(t.id)
        if woken:
            self._woken.extend(woken)
        self._txns.pop(t.id, None)
        t.state = "committed" if t.outcome else "aborted"
        sess = t.session
        if sess is not None and self._sessions.get(sess.id) is sess:
            sess.txns.pop(t.id, None)
            _tomb(sess, t.id)
        self._answer_waiters(t, "decide", OK, ["resolved"])
        self._answer_waiters(t, "conflict", OK, ["conflict", t.outcome])
        self._answer_waiters(t, "prepare", E_ABORTED, f"transaction {t.id} was resolved while it was being prepared")

    def _h_decide(self, sess, seq, args):
        if len(args) != 2:
            raise _Reply(E_PROTOCOL, "DECIDE takes [gtrid, commit]")
        gtrid = self._check_gtrid(args[0])
        commit = args[1]
        if type(commit) is not bool:
            raise _Reply(E_INVALID, f"commit must be true or false; got {brief(commit)}")
        t = self._gtrids.get(gtrid)
        if t is None:
            done = self._resolved.get(gtrid)
            if done is None:
                return ["unknown"]
            if done != commit:
                return ["conflict", done]        # decided the other way: the caller learns which
            return ["done"]
        return self._decide(t, commit, sess, seq)

    def _h_indoubt(self, args):
        with_locks = bool(args[0]) if args else True
        now = time.time()
        held = self._table.held
        out = []
        for t in sorted(self._gtrids.values(), key=lambda t: t.id):
            if t.state != "prepared":
                continue
            s = t.session
            sid = s.id if s is not None and self._sessions.get(s.id) is s else 0
            locks = [[list(p), m] for p, m in held(t.id)] if with_locks else []
            out.append([t.gtrid, t.id, max(0.0, now - t.prepared_at), t.participants, sid, locks])
        return out




def main(argv=None):
    ap = argparse.ArgumentParser(prog="lockmgr serve", description="Run one lock shard in the foreground.")
    add_serve_args(ap)
    args = ap.parse_args(argv)
    return run_serve(args)


def add_serve_args(ap):
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:7400",
                    help="ZeroMQ endpoint to bind (default tcp://127.0.0.1:7400; port 0 picks a free one)")
    ap.add_argument("--data-dir", default="lockmgr-shard-data", help="directory holding the shard's epoch file and its prepare log (2PC)")
    ap.add_argument("--index", type=int, default=0, help="this shard's index in the cluster (0-based)")
    ap.add_argument("--shards", type=int, default=1, help="number of shards in the cluster")
    ap.add_argument("--partition-depth", type=int, default=2, help="routing depth the clients must use")
    ap.add_argument("--escalation-threshold", type=int, default=5000)
    ap.add_argument("--probe-delay-ms", type=float, default=DEFAULT_PROBE_DELAY * 1000,
                    help="a wait lasting this long starts a cross-shard deadlock probe (default 10; "
                         "negative: no cross-shard detection)")
    ap.add_argument("--probe-interval-ms", type=float, default=None,
                    help="re-probe period while a wait lasts (default max(50, 5 x probe delay))")
    ap.add_argument("--cluster-key-file", default=None,
                    help="a file holding the cluster key that shard-to-shard messages (and PEERS, FAULTS) "
                         "must carry; or set LOCKMGR_CLUSTER_KEY. Without one, any local process can send them")
    ap.add_argument("--peer-endpoint", default=None,
                    help="also bind this ipc://PATH for messages from the other shards (they must list "
                         "it in --peers / PEERS)")
    ap.add_argument("--parent-pid", type=int, default=None,
                    help="stop when this process (the one that started the shard) is gone")
    ap.add_argument("--peers", default=None,
                    help="comma-separated endpoints of every shard, in shard order (127.0.0.1 only); "
                         "or send PEERS later (LocalCluster does)")


def run_serve(args):
    parent = getattr(args, "parent_pid", None)
    if parent is not None and parent != os.getppid():
        print(f"lockmgr shard {args.index}: --parent-pid {parent} is not this process's parent "
              f"({os.getppid()}); nothing started", file=sys.stderr)
        return 2
    key = os.environ.get("LOCKMGR_CLUSTER_KEY") or None
    if args.cluster_key_file:
        try:
            with open(args.cluster_key_file) as f:
                key = f.read().strip()
        except OSError as e:
            print(f"lockmgr shard {args.index}: cannot read --cluster-key-file: {e}", file=sys.stderr)
            return 2
        if not key:
            print(f"lockmgr shard {args.index}: --cluster-key-file {args.cluster_key_file} is empty",
                  file=sys.stderr)
            return 2
    if key is None and args.shards > 1:
        print(f"lockmgr shard {args.index}: warning: no cluster key: any process that can reach this "
              f"shard can send it shard-to-shard messages (deadlock victims, PEERS)", file=sys.stderr)
    try:
        shard = Shard(args.endpoint, args.data_dir, index=args.index, nshards=args.shards,
                      partition_depth=args.partition_depth, escalation_threshold=args.escalation_threshold,
                      probe_delay=None if args.probe_delay_ms < 0 else args.probe_delay_ms / 1000.0,
                      probe_interval=None if args.probe_interval_ms is None else args.probe_interval_ms / 1000.0,
                      peers=[e.strip() for e in args.peers.split(",")] if args.peers else None,
                      cluster_key=key, peer_endpoint=args.peer_endpoint)
    except CorruptLog as e:
        print(f"lockmgr shard {args.index}: FATAL: corrupt prepare log, not starting: {e}", file=sys.stderr)
        sys.stderr.flush()
        return 3
    except InvalidRequest as e:      # a bad option (e.g. --peer-endpoint): nothing was started
        print(f"lockmgr shard {args.index}: {e}", file=sys.stderr)
        return 2

    def _term(signum, frame):
        shard.stop()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    # The one line a parent waits for (LocalCluster); nothing else goes to stdout.
    sys.stdout.write(f"READY {shard.endpoint} epoch={shard.epoch} backend={BACKEND}\n")
    sys.stdout.flush()
    try:
        shard.serve_forever(getattr(args, "parent_pid", None))
    finally:
        shard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
