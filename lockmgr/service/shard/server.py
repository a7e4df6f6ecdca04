"""A shard server: the sans-IO ShardCore (core.py) driven by one ZeroMQ ROUTER
socket, a clock, and the prepare log's thread. One process, one thread.

Interface:
    Shard(endpoint="tcp://127.0.0.1:0", data_dir=..., *, index=0, nshards=1,
          partition_depth=2, escalation_threshold=5000, clock=time.monotonic, ctx=None,
          probe_delay=0.010, probe_interval=None, peers=None,
          cluster_key=None,      # str: peer messages, PEERS and FAULTS must carry it
          peer_endpoint=None,    # "ipc://PATH": also bound, for the other shards' messages
          grace=None,            # seconds of the grace period after a restart (reclaim.py);
                                 # None: the largest session TTL granted, at most 30; 0: none
          curve=None,            # security.ServerCurve: CURVE (authentication + encryption)
          insecure=False,        # without curve: allow binding a non-loopback address
          quotas=None)           # quotas.Quotas (None: the defaults)
        .core                the ShardCore
        .endpoint            the bound endpoint (port resolved)
        .epoch               this start's epoch (persisted, bumped at each start)
        .run_once(timeout_ms) one loop turn (below)
        .serve_forever(parent_pid=None)   until stop(), or until process parent_pid is gone
        .stop(), .close()
        .reload_keys() -> bool   re-read the CURVE key directories (SIGHUP; also every
                                 curve.reload_interval seconds when a file changed)

Security (docs/security.md): with ``curve`` the ROUTER is a CURVE server and a
ZAP handler (pyzmq's ThreadAuthenticator) admits only the configured keys; the
loop reads each frame's ZAP User-Id (the client's public key), refuses a key
that is no longer admitted (a key removed from the directories is cut off at
its next frame), and hands it to the core (``core.user``), which binds sessions
and admin requests to it. Without ``curve`` the shard binds only loopback
addresses unless ``insecure``.

A loop turn: finish the core's backlog, or drain the frames that are ready,
sleeping on the socket first only when nothing waits (decoding each, setting
the core's clock, replying after each frame);
fire due timers; handle the shard-to-shard messages; send the replies, then
the peer messages. A turn handles requests for about TURN_BUDGET seconds at
most (the core takes them a batch at a time, sized by their recent cost, and
the rest of a long frame waits in its backlog), so SIGTERM, stop() and the --parent-pid check are seen
within about one turn under any load. Design: docs/service.md.
"""

import logging
import os
import select
import socket
import time

import zmq

from .. import wire, zdirect
from ..._core import BACKEND
from ...errors import InvalidRequest
from ..security import is_loopback
from .access import Access
from ..probes import DEFAULT_PROBE_DELAY
from ...rules import brief
from ...wal import PrepareLog
from .core import ShardCore

__all__ = ["Shard", "TURN_BUDGET"]

_logger = logging.getLogger("lockmgr.shard")

DRAIN_LIMIT = 4096        # frames read per loop turn at most
# Seconds of requests one loop turn may handle before it fires due timers (lease
# expiry, wait timeouts) and returns. One turn can exceed it by one frame's
# decode (bounded by wire.MAX_FRAME) and one batch of requests.
TURN_BUDGET = 0.02
# Requests the core handles per call (the clock is read between calls): sized so
# that one call takes about BATCH_TIME at the recent cost per request -- 1 when
# requests are slow (e.g. a lock queued behind thousands of waiters), up to
# MAX_BATCH when they take microseconds (a whole pipelined frame in one call).
BATCH_TIME = TURN_BUDGET / 4
MAX_BATCH = 4096
FIRST_BATCH = 16          # a frame's first call handles at most this many (its cost is not known yet)
TIMER_BATCH = 64
MAX_POLL_MS = 100
PARENT_CHECK = 0.5        # seconds between checks that --parent-pid still lives

# LOCK_MANY items straight into the compiled table's form (wire.unpack_requests_packed);
# the pure-Python table takes the items as msgpack decodes them
_unpack_requests = wire.unpack_requests_packed if BACKEND == "c" else wire.unpack_requests

# pyzmq's compiled socket methods and plain int flags (the CURVE read, which needs
# a frame's User-Id); the loop's hot path calls libzmq directly where it can (zdirect.py)
_ZSocket = zmq.backend.Socket if issubclass(zmq.Socket, zmq.backend.Socket) else zmq.Socket
_recv = _ZSocket.recv
_NOBLOCK = int(zmq.NOBLOCK)


def _read_message_user(sock):
    """The next message's parts (zmq.Again if none), and the connection's ZAP User-Id ("" for an inproc frame,
    which has none: only the shard's own wake socket sends those)."""
    frames = [_recv(sock, _NOBLOCK)]
    f = _recv(sock, _NOBLOCK, False)
    while f.more:
        frames.append(f.bytes)
        f = _recv(sock, _NOBLOCK, False)
    frames.append(f.bytes)
    try:
        user = f.get("User-Id")
    except zmq.ZMQError:
        user = ""
    return frames, user


_pack_replies = wire.pack_replies


class Shard:
    """One shard of the lock service. Not thread-safe: run it in one thread."""

    def __init__(self, endpoint="tcp://127.0.0.1:0", data_dir=None, *, index=0, nshards=1,
                 partition_depth=2, escalation_threshold=5000, clock=time.monotonic, ctx=None,
                 probe_delay=DEFAULT_PROBE_DELAY, probe_interval=None, peers=None, cluster_key=None,
                 peer_endpoint=None, grace=None, curve=None, insecure=False, quotas=None,
                 epoch=None, replicator=None, lease=None):
        if data_dir is None:
            raise InvalidRequest("a shard needs a data directory (its epoch is persisted there)")
        if peer_endpoint is not None and not (type(peer_endpoint) is str and peer_endpoint.startswith("ipc://")):
            raise InvalidRequest(f"peer endpoint must be ipc://PATH; got {brief(peer_endpoint)}")
        if curve is None and not insecure:
            for ep in (endpoint, peer_endpoint):
                if ep is not None and not is_loopback(ep):
                    raise InvalidRequest(
                        f"refusing to bind {ep} without CURVE: anyone who can reach it could read and take "
                        f"every lock. Give the shard a key pair and client keys (lockmgr serve --curve-secret-file, "
                        f"--client-keys), or bind 127.0.0.1, or pass --insecure (insecure=True) to accept that")
            if nshards > 1 and not cluster_key:
                raise InvalidRequest(
                    f"a shard of a {nshards}-shard cluster needs a cluster key or CURVE: without either, any "
                    f"process that can reach it may send it shard-to-shard messages (abort a transaction as a "
                    f"deadlock victim); give --cluster-key-file (or LOCKMGR_CLUSTER_KEY), or pass --insecure")
        self.index = index
        self.data_dir = data_dir
        self._clock = clock
        self.curve = curve
        self._own_ctx = None
        if curve is not None and ctx is None:
            # the ZAP handler serves one context: a secure shard has its own
            ctx = self._own_ctx = zmq.Context()
        self._ctx = ctx or zmq.Context.instance()
        self._stop = False
        self.core = None                      # (made once the prepare log is open)
        self._wake_sock = None
        self._wake_ep = f"inproc://lockmgr-shard-wake-{os.getpid()}-{id(self):x}"
        self._wake_frame = wire.pack_requests(0, 0, [[wire.WAKE, 0]])
        # the prepare log first: it bumps the epoch and replays (CorruptLog stops here)
        t0 = time.perf_counter()
        self._plog = PrepareLog(data_dir, on_durable=self._on_durable, epoch=epoch, replicator=replicator)
        if replicator is not None:
            replicator.attach(self._plog)
        # a replica set's primary (lockmgr/service/replica.py): replies leave only while
        # lease.valid_until (monotonic, this process's clock) is ahead; None: no lease
        self.lease = lease
        self.dropped_unleased = 0
        try:
            if self._plog.truncated_at is not None:
                self._log(f"prepare log {self._plog.path}: torn tail at offset {self._plog.truncated_at} cut off "
                          f"({len(self._plog.live)} prepared transaction(s) kept; the cut records were never "
                          f"acknowledged)")
            now = clock()
            self.core = ShardCore(
                epoch=self._plog.epoch, index=index, nshards=nshards, partition_depth=partition_depth,
                escalation_threshold=escalation_threshold, log=self._plog,
                peer_sid=wire.peer_session(cluster_key), probe_delay=probe_delay, probe_interval=probe_interval,
                peers=peers, now=now, wall_offset=time.time() - now, grace=grace, quotas=quotas)
            if curve is not None:
                self.core.access = Access(curve, self.core.probes.peer_types)
        except BaseException:
            self._plog.close()
            self._term_ctx()
            raise
        self._msg_limit = self.core.quotas.message_bytes
        self._checked = curve is not None or self._msg_limit < wire.MAX_FRAME
        self.epoch = self.core.epoch
        if self._plog.last_epoch is not None and self._plog.last_epoch.get("epoch", 0) < self.epoch:
            # a replica set: the locks to reclaim were granted by the previous primary, whose
            # epoch (from etcd) need not be ours minus one (docs/replication.md)
            self.core.prev_epoch = self._plog.last_epoch["epoch"]
        # for INFO (lockmgr status): who we are, and the prepare log's size
        self.core.info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time(),
                          "data_dir": os.path.abspath(data_dir)}
        plog = self._plog
        self.core.log_bytes = lambda: getattr(plog, "_size", None)
        self.on_tick = None                   # called about once a second by serve_forever (logging, metrics)
        ntx, nlocks = self.core.twophase.restored
        self.restored = (ntx, nlocks, time.perf_counter() - t0)
        self._log_notices()
        if ntx:
            self._log(f"restored {ntx} prepared transaction(s) with {nlocks} lock(s) from the prepare log in "
                      f"{self.restored[2] * 1000:.1f} ms (read + re-lock)", logging.INFO)
        try:
            if curve is not None:
                curve.start(self._ctx)            # the ZAP handler: only admitted keys connect
        except BaseException:
            self._plog.close()
            self._term_ctx()
            raise
        self._reload_at = time.monotonic() + (curve.reload_interval if curve is not None else 0)
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply_server(self._sock)
        self._sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME * 16)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            endpoint = endpoint[:-2] + ":*"
        try:
            self._sock.bind(endpoint)
            # the loop's reads, sends and waits (the libzmq handle read once)
            self._router = zdirect.Conn(self._sock)
            self._send = self._router.send_message
            self._wait = self._router.wait
            # True while the socket's last call was a read that found nothing (no send
            # since): a turn may then sleep on ZMQ_FD without reading first
            self._idle = False
            # the loop's reader (None: nothing waits): the plain one, or (CURVE, or a
            # message_bytes quota below the wire's limit) one that checks each frame's
            # key and size first (_read_checked; () for a frame it refused)
            self._read = self._read_checked if self._checked else self._router.recv_message
            self.endpoint = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
            # a second endpoint on the same socket for the other shards (a unix socket: one
            # shard-to-shard message is then ~20-30 % cheaper than over loopback TCP)
            if peer_endpoint is not None:
                self._sock.bind(peer_endpoint)
            self._sock.bind(self._wake_ep)
        except BaseException:
            self._sock.close(0)
            self._plog.close()
            if curve is not None:
                curve.stop()
            self._term_ctx()
            raise
        self._peer_socks = {}
        self._peer_eps = {}                   # shard -> the endpoint its socket connects to
        self._peers_version = 0
        self._batch = 64                      # requests per core call (see BATCH_TIME)
        self._peer_sid = self.core.peer_sid

    def _term_ctx(self):
        if self._own_ctx is not None:
            self._own_ctx.term()
            self._own_ctx = None

    def reload_keys(self):
        """Re-read the CURVE key directories (SIGHUP); True if the admitted keys changed."""
        if self.curve is None:
            return False
        changed = self.curve.reload()
        c = self.curve
        self._log(f"keys reloaded: {len(c.clients)} client, {len(c.admins)} admin, {len(c.peers)} peer key(s)"
                  + ("" if changed else " (unchanged)"), logging.INFO)
        return changed

    @property
    def counters(self):
        return self.core.counters

    def _log(self, msg, level=logging.WARNING):
        _logger.log(level, "shard %d: %s", self.index, msg)

    # ---------------------------------------------------------------- loop

    def request_reload(self):
        """Re-read the keys at the loop's next turn (safe from a signal handler)."""
        self._reload_at = 0.0
        self._reload_now = True

    def serve_forever(self, parent_pid=None):
        """Serve until stop(); with ``parent_pid``, also until that process is
        gone (checked every PARENT_CHECK seconds: a LocalCluster or ``lockmgr
        cluster`` killed by SIGKILL must not leave its shards running)."""
        monotonic = time.monotonic
        check_at = monotonic() + PARENT_CHECK
        tick_at = monotonic() + 1.0
        curve = self.curve
        while not self._stop:
            self.run_once(MAX_POLL_MS)
            now = monotonic()           # (one clock read a turn for the checks below)
            if self.on_tick is not None and now >= tick_at:
                tick_at = now + 1.0
                self.on_tick()
            if curve is not None and now >= self._reload_at:
                self._reload_at = monotonic() + curve.reload_interval
                try:
                    if getattr(self, "_reload_now", False):
                        self._reload_now = False
                        self.reload_keys()
                    elif curve.maybe_reload():
                        self._log("key directories changed: keys reloaded", logging.INFO)
                except (OSError, InvalidRequest) as e:
                    self._log(f"cannot reload the keys (the old ones stay): {e}")
            if parent_pid is not None and now >= check_at:
                check_at = now + PARENT_CHECK
                if os.getppid() != parent_pid:
                    self._log(f"parent process {parent_pid} is gone; stopping", logging.INFO)
                    break

    def stop(self):
        self._stop = True

    def close(self):
        for s in self._peer_socks.values():
            s.close(0)
        self._peer_socks = {}
        if self._plog is not None:
            self._plog.close()      # joins the flusher thread: nobody uses the wake socket after this
            self._plog = None
        if self._wake_sock is not None:
            self._wake_sock.close(0)
            self._wake_sock = None
        self._router.close()
        self._sock.close(0)
        if self.curve is not None:
            self.curve.stop()
        self._term_ctx()

    def run_once(self, timeout_ms):
        core = self.core
        sock = self._sock
        clock = self._clock
        core.now = now = clock()
        turn_end = now + TURN_BUDGET
        busy = False
        if core.backlog:
            # a frame an earlier turn left unfinished goes first (no newer frame is read)
            while self._resume():
                if core.now >= turn_end:
                    busy = True
                    break
            self._flush()
            now = core.now
            timeout_ms = 0
        due = core.next_timer()
        if due is not None:
            due = (due - now) * 1000
            if 0 < due < 1 and timeout_ms > 0:
                # zmq's poll counts whole milliseconds: wait out a sub-ms remainder on the
                # socket's fd instead (a timer, e.g. a probe, is then not up to 1 ms late)
                if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    select.select([sock.getsockopt(zmq.FD)], [], [], due / 1000)
                timeout_ms = 0
            else:
                timeout_ms = max(0, min(timeout_ms, int(due)))
        # libzmq's calls from C (zdirect.Conn), not pyzmq's Python wrappers
        # (Socket.poll builds a Poller per call, recv_multipart/send_multipart
        # add frames and enum flag arithmetic, and zmq.Again costs an exception
        # per turn): on a busy 2-core machine every request runs on cold caches,
        # where each of those costs several times its warm figure.
        # The drain reads until nothing waits (a read that finds nothing returns
        # None). A turn looks first (a busy shard finds a frame without polling),
        # and only when nothing waits sleeps on the socket's ZMQ_FD (Conn.wait:
        # one poll(2); right after a read that found nothing, with no send since,
        # as ZMQ_FD's edge triggering needs: if the last turn ended so, ``_idle``,
        # it sleeps without reading first), then looks again.
        idle = False
        if not busy and not core.backlog:
            read = self._read
            frames = None if self._idle and timeout_ms != 0 else read()
            if frames is None and timeout_ms != 0:
                self._wait(timeout_ms)
                frames = read()
            drained = 0
            while frames is not None:
                if not frames:              # refused by _read_checked (a key no longer admitted, a size)
                    drained += 1
                    if drained >= DRAIN_LIMIT:
                        break
                    frames = read()
                    continue
                core.now = clock()          # this frame's time (a lease renews from it)
                try:
                    self._on_frame(frames)
                    # the rest of a long frame, a batch at a time, within the turn (its
                    # replies still leave as one frame unless the turn ends first)
                    while core.backlog and core.now < turn_end and self._resume():
                        pass
                except Exception as e:  # a bug must not stop the shard
                    core.internal_error("frame", e)
                # Reply now, not at the end of the drain: a pipelining client
                # then gets its answers (and sends more) while we handle the
                # frames behind its, instead of every client idling until a
                # long drain ends (it left the 2 cores ~40% idle under load).
                if core.has_replies:
                    self._flush()
                # (core.now is this frame's start: the turn may run one frame, at most
                # FIRST_BATCH requests, past its budget)
                drained += 1
                if core.backlog or core.now >= turn_end or drained >= DRAIN_LIMIT:
                    break
                frames = read()
            idle = frames is None
        self._idle = idle                   # (until a send: _flush)
        core.now = now = clock()
        due = core.next_timer()
        if due is not None and due <= now:
            end = turn_end if turn_end > now + TURN_BUDGET / 2 else now + TURN_BUDGET / 2   # timers' share
            while core.fire_timers(TIMER_BATCH):
                core.now = clock()
                if core.now >= end:
                    break                   # the rest fire next turn
            core.now = clock()
        probes = core.probes
        if probes.inbox:
            core.peer_messages()
        # client replies first (a deadlock victim's answer among them), then the peer
        # messages (whose effects -- aborts elsewhere, grants -- compete for the cores)
        if core.has_replies:
            self._flush()
        if probes.outbox:
            self._send_peers()
        if core.reclaim.notices:
            self._log_notices()
        errs = core.internal_errors
        while errs:
            where, err = errs.pop(0)
            self._log(f"internal error ({where}): {brief(err)}", logging.ERROR)

    def _log_notices(self):
        notices = self.core.reclaim.notices
        while notices:
            self._log(notices.pop(0))

    def _read_checked(self):
        """The next message (None if none waits), with CURVE or a message_bytes quota:
        sets the core's ``user`` to the frame's key; () if the message was refused
        (answered): a key no longer admitted (removed from the key directories since
        it connected), or a frame over the message_bytes quota."""
        if self.curve is not None:
            try:
                frames, user = _read_message_user(self._sock)
            except zmq.Again:
                return None
            if user and user not in self.curve.admitted:
                self._refuse(frames, wire.E_FORBIDDEN, "this connection's key is no longer admitted by the shard",
                             "forbidden")
                return ()
            self.core.user = user
        else:
            frames = self._router.recv_message()
            if frames is None:
                return None
        n = len(frames[-1])
        if self._msg_limit < n <= wire.MAX_FRAME:      # (above the wire's limit: E_TOO_BIG, wire.py)
            self._refuse(frames, wire.E_QUOTA, f"quota message_bytes={self._msg_limit} reached: a frame of {n} "
                                               f"bytes; nothing was changed", "quota_refused")
            return ()
        return frames

    def _refuse(self, frames, status, msg, counter):
        core = self.core
        core.counters[counter] += 1
        prefix = (frames[0], b"") if len(frames) == 3 and frames[1] == b"" else (frames[0],)
        core.reply(prefix, [0, status, msg])
        self._flush()

    def _on_frame(self, frames):
        core = self.core
        n = len(frames)
        if n == 2:
            prefix = (frames[0],)
            payload = frames[1]
        elif n == 3 and frames[1] == b"":       # a REQ socket's envelope
            prefix = (frames[0], b"")
            payload = frames[2]
        else:
            core.counters["bad_frames"] += 1
            core.reply((frames[0],) if n else (b"",),
                       [0, wire.E_PROTOCOL, f"expected one message part after the routing id; got {n - 1}"])
            return
        try:
            sid, ack, reqs = _unpack_requests(payload)
        except wire.ProtocolError as e:
            core.counters["bad_frames"] += 1
            core.reply(prefix, [0, e.status, str(e)])
            return
        n0 = core.handled
        t0 = core.now
        b = self._batch
        core.frame(prefix, sid, ack, reqs, b if b < FIRST_BATCH else FIRST_BATCH)
        core.process_woken()
        if core.backlog:                # a long frame: size the batches of its rest
            self._measure(n0, t0)

    def _resume(self):
        """One batch of the core's backlog; True while some remains."""
        core = self.core
        n0 = core.handled
        t0 = core.now = self._clock()
        more = core.resume(self._batch)
        self._measure(n0, t0)
        return more

    def _measure(self, n0, t0):
        """Size the next batch by what this call cost per request (and set the core's clock)."""
        core = self.core
        core.now = t = self._clock()
        n = core.handled - n0
        if n and t > t0:
            b = int(BATCH_TIME * n / (t - t0))
            self._batch = 1 if b < 1 else MAX_BATCH if b > MAX_BATCH else b

    def _flush(self):
        out = self.core.take_replies()
        if not out:
            return
        lease = self.lease
        if lease is not None and self._clock() >= lease.valid_until:
            # our leadership may have run out (a pause, etcd unreachable): nothing leaves;
            # the clients retry and get the cached answers if it is renewed
            self.dropped_unleased += 1
            return
        self._idle = False
        send = self._send
        pack = _pack_replies
        for prefix, reps in out.items():
            if not reps:
                continue
            try:
                send(prefix, pack(reps))
            except zmq.ZMQError:  # peer gone or over its HWM: it will retry
                self.core.counters["dropped_replies"] += 1

    # ------------------------------------------------------ peer messages

    def _send_peers(self):
        out = self.core.take_peer_messages()
        if not out:
            return
        probes = self.core.probes
        if probes.peers_version != self._peers_version:
            # new peer endpoints (PEERS, or a replica set's primary moved): reconnect only the
            # sockets whose endpoint changed, so what is queued for the others is kept
            peers = probes.peers
            for i, s in list(self._peer_socks.items()):
                if peers is None or i >= len(peers) or self._peer_eps.get(i) != peers[i]:
                    s.close(0)
                    del self._peer_socks[i]
            self._peers_version = probes.peers_version
        c = self.core.counters
        for dest, reqs in out.items():
            try:
                self._peer_sock(dest).send(wire.pack_requests(self._peer_sid, 0, reqs), zmq.NOBLOCK)
                c["probe_msgs_sent"] += len(reqs)
            except zmq.ZMQError:
                c["probe_msgs_send_failed"] += len(reqs)

    def _peer_sock(self, i):
        s = self._peer_socks.get(i)
        if s is None:
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 100_000)
            if self.curve is not None:      # a peer authenticates with its shard's key pair
                self.curve.apply_peer(s)
            ep = self.core.probes.peers[i]
            s.connect(ep)
            self._peer_socks[i] = s
            self._peer_eps[i] = ep
        return s

    # ------------------------------------------------------- the prepare log

    def _on_durable(self, batch):
        """Flusher thread: hand the batch to the core and wake the loop (an
        internal WAKE frame over inproc, which runs the core's callbacks)."""
        core = self.core
        if core is None:
            return                            # (no prepare or decide can be in flight before the core exists)
        core.durable(batch)
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
        except zmq.ZMQError:                  # shutting down; the loop also polls durable each WAKE
            pass
