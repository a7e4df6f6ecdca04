"""The lock service's wire format (msgpack, versioned; never pickle).

Interface:
    VERSION, message type codes (HELLO, HEARTBEAT, LOCK, ...), status codes
    SessionExpired, ShardUnavailable    LockError subclasses of the service
    pack_requests(session, ack, reqs) -> bytes      client -> shard frame
    pack_request(session, ack, typ, seq, args)      the same, of one request [typ, seq, *args]
    unpack_requests(frame) -> (session, ack, reqs)  raises ProtocolError
    unpack_requests_packed(frame)                   the same, LOCK_MANY items as
                                                    compiled PackedItems (the shard)
    pack_replies(replies) -> bytes;  unpack_replies(frame) -> list
    error_for(status, message) -> LockError instance

Full description with examples: docs/protocol.md. A frame is one ZeroMQ
message part. Client -> shard::

    [VERSION, session, ack, [[type, seq, *args], ...]]

Shard -> client::

    [VERSION, [[seq, status, payload], ...]]

``seq`` is the request id: unique per (session, shard connection), assigned in
send order. A request retried with the same (session, seq) gets the first
answer and is never executed twice. ``ack``: the client has every answer for
seqs below it, so the shard may forget them (and refuses them as stale).
"""

import hashlib

import msgpack

try:   # the compiled LOCK_MANY item decoder (lockmgr/service/_cwire.pyx)
    from ._cwire import split_lock_many as _split_lock_many
except ImportError:  # pragma: no cover - no compiler
    _split_lock_many = None  # type: ignore[assignment]

from ..rules import brief
from .._core import BACKEND as _BACKEND

from ..errors import (DeadlockDetected, Forbidden, InvalidRequest, LockError, LockNotAvailable, LockTimeout,
                     QuotaExceeded, TransactionAborted)
from ..errors import SessionExpired, ShardUnavailable  # re-exported: wire.SessionExpired

# The compiled msgpack codec (lockmgr/service/_codec.pyx): the same bytes and
# objects as msgpack for the wire's types, cheaper per small frame; anything it
# does not handle goes to msgpack, errors included. The pure-Python backend
# (LOCKMGR_PUREPYTHON=1, the reference) uses msgpack alone.
try:
    from ._codec import (Unsupported as _Unsupported, pack as _codec_pack, pack_request as _codec_pack_request,
                         unpack as _codec_unpack, unpack_body as _codec_unpack_body)
except ImportError:  # pragma: no cover - no compiler
    _codec_pack = _codec_pack_request = _codec_unpack = _codec_unpack_body = None  # type: ignore[assignment]
    _Unsupported = ValueError  # type: ignore[assignment,misc]
_cpack = _codec_pack if _BACKEND == "c" else None
_cpack_request = _codec_pack_request if _BACKEND == "c" else None
_cunpack = _codec_unpack if _BACKEND == "c" else None
_cunpack_body = _codec_unpack_body if _BACKEND == "c" else None

__all__ = ["VERSION", "SessionExpired", "ShardUnavailable", "ProtocolError",
           "pack_requests", "pack_request", "unpack_requests", "pack_replies", "unpack_replies", "error_for"]

VERSION = 1

# Limits (bad input never harms the table; sizes are bounded).
MAX_FRAME = 4 << 20          # bytes in one frame; larger frames get E_TOO_BIG
MAX_REQUESTS = 65536         # requests in one frame
MAX_BATCH = 4096             # (resource, mode) pairs in one LOCK_MANY
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000

# Message types. Numbers are stable; gaps are reserved.
HELLO = 1          # [ttl_ms, name, secret?]     -> [epoch, shard_index, nshards, partition_depth, secret,
                   #                                 grace_left_ms]  (0 unless in a grace period after a restart)
HEARTBEAT = 2      # []                          -> [epoch]
CLOSE = 3          # []                          -> []    end the session (prepared txns stay in doubt)
LOCK = 10          # [txn, path, mode, nowait, timeout_ms|nil, epoch] -> [token, prev_mode, epoch]
LOCK_MANY = 11     # [txn, [[path, mode], ...], nowait, timeout_ms|nil, epoch] -> [[token, ...], epoch]
UNLOCK = 12        # [txn, path, check_only]     -> [held_here]
RELEASE = 13       # [txn, committed]            -> []    commit/abort on this shard
HELD = 14          # [txn]                       -> [[path, mode], ...]
DOWNGRADE = 15     # [txn, path, mode]           -> []    back to a weaker mode held before (undo a conversion)
RECLAIM = 16       # [epoch_seen, last, [[txn, [[path, mode, token], ...]], ...]] -> [epoch, [[txn, why], ...]]
                   #   after a restart, in its grace period: the session's transactions' locks back with
                   #   their tokens (refused transactions listed with the reason; they are aborted here)
TXN_NAME = 17      # [txn, name]                 -> []    the name given to begin(name), for inspection
HELD_PAGE = 18     # [txn, offset, limit]        -> [[[path, mode], ...], next_offset]  (0: the last page)
PREPARE = 20       # [txn, gtrid, epoch, [participant shard, ...]] -> [nlocks, epoch]  (after fsync)
DECIDE = 21        # [gtrid, commit]             -> ["resolved" | "done" | "unknown"]  (after fsync)
INDOUBT = 22       # [with_locks] (no session needed) -> [[gtrid, txn, age_s, participants, session,
                   #                                     [[path, mode], ...]], ...]
WAKE = 29          # internal: the shard's prepare-log flusher wakes the shard's loop (inproc)
# Shard -> shard (seq 0, no reply; session 0, or the cluster key's wire.peer_session(key) when the
# shards have one): deadlock detection, docs/probes.md
PROBE = 30         # [[init, init_shard, init_epoch, round], txn, path, via_directory]
PROBE_REG = 31     # [txn, shard, wait_epoch, edges]  to the directory shard of txn: txn waits at shard
                   #   (edges: [[target, target's wait epoch there or 0], ...], or nil if > 64)
PROBE_UNREG = 32   # [txn, shard]                to the directory shard: that wait ended
PROBE_MULTI = 33   # [txn, [other shard, ...]]   from the directory: txn also waits on those shards
PROBE_CONFIRM = 34 # [probe id, cycle, victim_index, deadline, found_at, rows]  re-check your entries now
PROBE_VICTIM = 35  # [txn, [cycle member, ...], from_shard, probe id or nil]  abort txn here (deadlock victim)
PROBE_CONFIRMED = 36  # [probe id, shard, ok, rows, deadline]  to the victim's shard: entries re-checked
PING = 40          # (no session needed)         -> [epoch, shard_index, nshards, partition_depth]
SNAPSHOT = 41      # []                          -> [[path, txn, mode, granted, session], ...]
GRAPH = 42         # []                          -> [[waiter, [txn, ...]], ...]
STATS = 43         # []                          -> {name: int}   (every counter, zero or not)
INFO = 44          # []                          -> {pid, host, started_at, epoch, index, nshards, log_bytes,
                   #                                 sessions: [[session, name, idle_s, ntxns]],
                   #                                 txn_names: [[txn, name]], waiters, transactions, now}
SNAPSHOT_PAGE = 45 # [cursor, limit]            -> [[[path, txn, mode, granted, session], ...], next_cursor]
                   #   (cursor 0 starts; next_cursor 0: the last page)
DEADLOCKS = 47     # [limit?]                    -> [report, ...]   (the shard's deadlock ring)
PEERS = 48         # [[endpoint, ...]]           -> {peers, probe_delay_ms, probe_interval_ms}
FAULTS = 49        # [{drop_next, drop_prob, delay_ms, types, seed}] -> the fault plan (tests)
# Replica sets (docs/replication.md). 50-53 travel on a primary's replication socket
# (standby -> primary: REPL_HELLO, REPL_ACK; primary -> standby: REPL_SNAPSHOT, REPL_RECORDS),
# each message one msgpack array [type, ...]; REPL_ROLE is an admin message any replica answers.
REPL_HELLO = 50    # [replica, incarnation, shard]   standby asks to follow; answered by REPL_SNAPSHOT
REPL_SNAPSHOT = 51 # [epoch, seq, [record, ...]]     every live record (the standby's log is replaced by them)
REPL_RECORDS = 52  # [epoch, seq, [record, ...]]     one group-commit batch, in log order
REPL_ACK = 53      # [epoch, seq, replica, incarnation]  the standby fsynced everything up to seq
# Watches (issue 15; docs/protocol.md, "Watches"): a session watches a node; the
# shard pushes N_WATCH notices as its holders or waiters change
WATCH = 60         # [path]                      -> [wid, seq, holders, nwaiters]  (holders: [[txn, mode], ...])
UNWATCH = 61       # [wid]                       -> []    (an unknown wid: E_NO_WATCH)
REPL_ROLE = 54     # []  (no session needed)     -> {role: "primary"|"standby", replica, epoch, primary, lag, ...}
# Client lock caching (docs/service.md, "Lock caching"): 65-69
CACHE_ON = 65      # []                          -> []    this session's client caches locks: send it
                   #   N_CACHE_REVOKE when someone waits for (or is refused) a lock one of its transactions holds
CACHE_GIVEUP = 66  # [txn, [path, ...]]          -> [released]  give up txn's locks at and below each path
                   #   here (deepest first; idle cached locks the client no longer wants, or revoked ones)

# Notices: the shard tells a session something it did not ask for, as a reply
# entry with seq PUSH_SEQ (0; no request has seq 0): [0, OK, [kind, *args]].
# A notice is sent once, to the session's current connection, and never cached
# (a retry cannot bring it back); what needs more than that carries its own
# sequence numbers (watches). The client hands it to the handler registered for
# its kind (_Engine.on_push) and ignores kinds it does not know.
# Kinds (the payload's first element):
PUSH_SEQ = 0
N_TXN_LOST = 1     # [1, txn, status, message]  txn's locks here are gone while it did not wait
                   # (chosen as a deadlock victim by another shard's probe)
N_WATCH = 2        # [2, wid, seq, holders, nwaiters]  the watched node changed: its state now;
                   # seq counts the watch's notices (1, 2, ...): a gap means one was lost
N_CACHE_REVOKE = 3 # [3, txn, path, mode]  a request of another transaction for ``mode`` on ``path`` waits
                   # for (or was refused because of) txn's lock there: give it up (lock caching)
# 5-9: watches (reserved); 10-14: reserved for lock caching (issue 15)

TYPE_NAMES = {HELLO: "HELLO", HEARTBEAT: "HEARTBEAT", CLOSE: "CLOSE", LOCK: "LOCK",
              LOCK_MANY: "LOCK_MANY", UNLOCK: "UNLOCK", RELEASE: "RELEASE", HELD: "HELD", DOWNGRADE: "DOWNGRADE",
              RECLAIM: "RECLAIM", TXN_NAME: "TXN_NAME", INFO: "INFO",
              PREPARE: "PREPARE", DECIDE: "DECIDE", INDOUBT: "INDOUBT", WAKE: "WAKE", PROBE: "PROBE", PING: "PING",
              SNAPSHOT: "SNAPSHOT", GRAPH: "GRAPH", STATS: "STATS"}
TYPE_NAMES.update({PROBE_REG: "PROBE_REG", PROBE_UNREG: "PROBE_UNREG", PROBE_MULTI: "PROBE_MULTI",
                   PROBE_CONFIRM: "PROBE_CONFIRM", PROBE_VICTIM: "PROBE_VICTIM",
                   PROBE_CONFIRMED: "PROBE_CONFIRMED", DEADLOCKS: "DEADLOCKS",
                   PEERS: "PEERS", FAULTS: "FAULTS", HELD_PAGE: "HELD_PAGE", SNAPSHOT_PAGE: "SNAPSHOT_PAGE"})
TYPE_NAMES.update({REPL_HELLO: "REPL_HELLO", REPL_SNAPSHOT: "REPL_SNAPSHOT", REPL_RECORDS: "REPL_RECORDS",
                   REPL_ACK: "REPL_ACK", REPL_ROLE: "REPL_ROLE"})
TYPE_NAMES.update({WATCH: "WATCH", UNWATCH: "UNWATCH"})
TYPE_NAMES.update({CACHE_ON: "CACHE_ON", CACHE_GIVEUP: "CACHE_GIVEUP"})

# Status codes of a reply. 0 is success; payload is then the result.
OK = 0
E_INVALID = 1            # InvalidRequest
E_TIMEOUT = 2            # LockTimeout
E_NOT_AVAILABLE = 3      # LockNotAvailable (nowait)
E_DEADLOCK = 4           # DeadlockDetected: this txn was the victim (aborted on this shard)
E_ABORTED = 5            # TransactionAborted
E_SESSION_EXPIRED = 6    # the session's lease ran out (or it was closed)
E_UNKNOWN_SESSION = 7    # no such session here (e.g. the shard restarted)
E_PROTOCOL = 8           # malformed frame or request
E_TOO_BIG = 9            # frame, batch or path over a limit
E_UNKNOWN_TYPE = 10      # unknown message type
E_STALE = 11             # a retry of a request already acknowledged (not executed)
E_UNSUPPORTED = 12       # a reserved type that a server does not implement (none in this version)
E_INTERNAL = 13          # a bug; the request changed nothing we know of
E_FORBIDDEN = 14         # the connection's key may not do this (another key's session, an admin request)
E_QUOTA = 15             # over a quota (the message names it); nothing changed
E_NOT_PRIMARY = 20       # a standby (or a primary that stepped down): payload [message, primary endpoint | nil]
E_NOT_REPLICATED = 21    # the record is not on the standbys the configuration requires (nothing acknowledged)
E_NO_WATCH = 22          # UNWATCH of a watch this session does not have (InvalidRequest)


class ProtocolError(Exception):
    """A frame that cannot be decoded (internal; becomes an E_PROTOCOL reply)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


_ERRORS = {
    E_INVALID: InvalidRequest,
    E_TIMEOUT: LockTimeout,
    E_NOT_AVAILABLE: LockNotAvailable,
    E_DEADLOCK: DeadlockDetected,
    E_ABORTED: TransactionAborted,
    E_SESSION_EXPIRED: SessionExpired,
    E_UNKNOWN_SESSION: ShardUnavailable,
    E_TOO_BIG: InvalidRequest,
    E_FORBIDDEN: Forbidden,
    E_QUOTA: QuotaExceeded,
    E_NOT_PRIMARY: ShardUnavailable,
    E_NOT_REPLICATED: ShardUnavailable,
    E_NO_WATCH: InvalidRequest,
}


def error_for(status, message):
    """The LockError instance for an error reply."""
    cls = _ERRORS.get(status, LockError)
    return cls(message if type(message) is str else brief(message))


# The shape of the OK payload of each reply type, checked by the clients before
# anything reads it: a malformed reply is a clear LockError, never a TypeError.
# ``args`` are the request's arguments (a LOCK_MANY answers one token per item).

def _ints(p, n):
    return type(p) is list and len(p) == n and all(type(x) is int for x in p)


def _mode(m):
    return type(m) is int and 1 <= m <= 5


def _path_modes(p):
    return type(p) is list and all(type(r) is list and len(r) == 2 and type(r[0]) is list and _mode(r[1])
                                   for r in p)


def _holders(p):
    return type(p) is list and all(type(r) is list and len(r) == 2 and type(r[0]) is int and _mode(r[1])
                                   for r in p)


def _lock_reply(p, a):       # the hot path: no generator, no call
    return (type(p) is list and len(p) == 3 and type(p[0]) is int and type(p[1]) is int and type(p[2]) is int
            and p[0] > 0)


def _list(p, a):
    return type(p) is list


def _snapshot_rows(p):
    return type(p) is list and all(
        type(r) is list and len(r) == 5 and type(r[0]) is list and type(r[1]) is int and _mode(r[2])
        and type(r[3]) in (bool, int) and type(r[4]) is int for r in p)


REPLY_SHAPES = {
    HELLO: lambda p, a: _ints(p, 6) or _ints(p, 5) or _ints(p, 4),
    HEARTBEAT: lambda p, a: type(p) is list and len(p) == 1 and type(p[0]) is int,
    CLOSE: _list,
    LOCK: _lock_reply,
    LOCK_MANY: lambda p, a: (type(p) is list and len(p) == 2 and type(p[1]) is int and type(p[0]) is list
                             and len(p[0]) == len(a[1]) and all(type(x) is int and x > 0 for x in p[0])),
    UNLOCK: lambda p, a: type(p) is list and len(p) == 1 and type(p[0]) is bool,
    RELEASE: _list,
    HELD: lambda p, a: _path_modes(p),
    HELD_PAGE: lambda p, a: type(p) is list and len(p) == 2 and _path_modes(p[0]) and type(p[1]) is int,
    SNAPSHOT_PAGE: lambda p, a: (type(p) is list and len(p) == 2 and type(p[1]) is int
                                 and _snapshot_rows(p[0])),
    DOWNGRADE: _list,
    PREPARE: lambda p, a: _ints(p, 2),
    RECLAIM: lambda p, a: (type(p) is list and len(p) == 2 and type(p[0]) is int and type(p[1]) is list
                           and all(type(r) is list and len(r) == 2 and type(r[0]) is int and type(r[1]) is str
                                   for r in p[1])),
    DECIDE: lambda p, a: type(p) is list and ((len(p) == 1 and p[0] in ("resolved", "done", "unknown"))
                                              or (len(p) == 2 and p[0] == "conflict" and type(p[1]) is bool)),
    INDOUBT: lambda p, a: type(p) is list and all(
        type(r) is list and len(r) == 6 and type(r[0]) in (str, bytes) and type(r[1]) is int
        and type(r[2]) in (int, float) and type(r[3]) is list and type(r[4]) is int and _path_modes(r[5])
        for r in p),
    PING: lambda p, a: _ints(p, 4),
    SNAPSHOT: lambda p, a: _snapshot_rows(p),
    GRAPH: lambda p, a: type(p) is list and all(
        type(r) is list and len(r) == 2 and type(r[0]) is int and type(r[1]) is list for r in p),
    STATS: lambda p, a: type(p) is dict,
    INFO: lambda p, a: type(p) is dict,
    TXN_NAME: _list,
    DEADLOCKS: lambda p, a: type(p) is list and all(type(r) is dict for r in p),
    WATCH: lambda p, a: (type(p) is list and len(p) == 4 and type(p[0]) is int and type(p[1]) is int
                         and _holders(p[2]) and type(p[3]) is int),
    UNWATCH: _list,
    CACHE_ON: _list,
    CACHE_GIVEUP: lambda p, a: type(p) is list and len(p) == 1 and type(p[0]) is int,
}


def check_reply(typ, payload, args=()):
    """None if ``payload`` has the shape of an OK answer to a ``typ`` request with
    ``args``; else a LockError naming the problem (to raise instead of reading it).
    (The client engine looks ``REPLY_SHAPES`` up itself, on its hot path.)"""
    shape = REPLY_SHAPES.get(typ)
    if shape is None or shape(payload, args):
        return None
    return malformed_reply(typ, payload)


def malformed_reply(typ, payload):
    return LockError(f"malformed answer to {TYPE_NAMES.get(typ, typ)} from the shard: {brief(payload)}; "
                     f"nothing was read from it")


_packer_opts = dict(use_bin_type=True)
# msgpack refuses, before reading their contents, arrays longer than a frame may
# hold requests, maps larger than an admin argument needs, and strings or
# binaries longer than any field (a path component is at most 1 KiB, a name
# or gtrid far less); nesting deeper than its stack (1024) is refused too.
MAX_MAP = 64
MAX_STR = 64 << 10
# (replies come from a shard the client chose; a SNAPSHOT answer may be large)
_unpacker_opts = dict(raw=False, strict_map_key=False, use_list=True)
_request_opts = dict(_unpacker_opts, max_array_len=MAX_REQUESTS, max_map_len=MAX_MAP, max_str_len=MAX_STR,
                     max_bin_len=MAX_STR, max_ext_len=0)


def Packer():
    """A reusable msgpack packer with the wire options (not thread-safe)."""
    return msgpack.Packer(**_packer_opts)


def peer_session(key):
    """The session field of shard-to-shard frames for a cluster key (a str; "" or None:
    0, no key). Shards given the key accept peer messages and PEERS/FAULTS only in
    frames carrying it (docs/protocol.md, "Shard-to-shard messages")."""
    if key is not None and type(key) is not str:
        raise InvalidRequest(f"a cluster key must be a str; got {type(key).__name__}")
    if not key:
        return 0
    d = hashlib.blake2b(key.encode(), digest_size=8, person=b"lockmgr-peers").digest()
    return int.from_bytes(d, "big") or 1


def _pack(msg):
    """msgpack.packb(msg) with the wire's options: by the compiled codec where it can."""
    if _cpack is not None:
        try:
            return _cpack(msg)
        except _Unsupported:
            pass
    return msgpack.packb(msg, **_packer_opts)


def pack_requests(session, ack, reqs):
    return _pack([VERSION, session, ack, reqs])


def pack_request(session, ack, typ, seq, args):
    """pack_requests(session, ack, [[typ, seq, *args]]): the frame of one request
    (the client's usual frame; compiled, written without building its lists)."""
    if _cpack_request is not None:
        try:
            return _cpack_request(VERSION, session, ack, typ, seq, args)
        except _Unsupported:
            pass
    return _pack([VERSION, session, ack, [[typ, seq, *args]]])


def unpack_requests(frame):
    """Decode a client frame. Raises ProtocolError naming the problem."""
    if len(frame) > MAX_FRAME:
        raise ProtocolError(E_TOO_BIG, f"frame of {len(frame)} bytes exceeds the limit of {MAX_FRAME}")
    msg = None
    if _cunpack is not None:
        try:
            msg = _cunpack(frame, MAX_REQUESTS, MAX_MAP, MAX_STR)
        except _Unsupported:     # msgpack decides (and names the error)
            msg = None
    if msg is None:
        msg = _unpack_requests_msgpack(frame)
    if type(msg) is not list or len(msg) != 4:
        raise ProtocolError(E_PROTOCOL, "frame must be a msgpack array [version, session, ack, requests]")
    version, session, ack, reqs = msg
    if version != VERSION:
        raise ProtocolError(E_PROTOCOL, f"unsupported protocol version {brief(version)}; this shard speaks {VERSION}")
    if type(session) is not int or not 0 <= session < (1 << 64):
        raise ProtocolError(E_PROTOCOL, "session must be an unsigned 64-bit int (0: no session)")
    if type(ack) is not int or ack < 0:
        raise ProtocolError(E_PROTOCOL, "ack must be an int >= 0")
    if type(reqs) is not list:
        raise ProtocolError(E_PROTOCOL, "requests must be an array")
    if len(reqs) > MAX_REQUESTS:
        raise ProtocolError(E_TOO_BIG, f"{len(reqs)} requests in one frame; at most {MAX_REQUESTS}")
    return session, ack, reqs


def _unpack_requests_msgpack(frame):
    try:
        return msgpack.unpackb(frame, **_request_opts)
    except msgpack.StackError:
        raise ProtocolError(E_TOO_BIG, "frame refused: it nests arrays or maps deeper than 1024 levels") from None
    except ValueError as e:  # over a max_*_len limit (msgpack says which), or not msgpack
        if "exceeds max" in str(e):
            raise ProtocolError(E_TOO_BIG, f"frame refused: {e}") from None
        raise ProtocolError(E_PROTOCOL, f"frame is not valid msgpack ({type(e).__name__}: {e})") from None
    except Exception as e:  # msgpack raises several types; all mean "not msgpack"
        raise ProtocolError(E_PROTOCOL, f"frame is not valid msgpack ({type(e).__name__}: {e})") from None


def unpack_requests_packed(frame):
    """unpack_requests for a shard with the compiled table: the same result,
    except that the items of a LOCK_MANY whose items are all valid come as one
    ``lockmgr._core._ctable.PackedItems`` (keys already encoded; what
    ``Table.lock_many`` takes fastest) instead of a list of lists. Items that
    are not all valid stay a list, so errors are reported as before. Without
    the compiled table it is unpack_requests."""
    # (split_lock_many looks for the bytes that start a LOCK_MANY first, in C: a
    # frame without them, e.g. of single LOCKs, costs it a memchr)
    if _split_lock_many is None or len(frame) > MAX_FRAME:
        return unpack_requests(frame)
    split = _split_lock_many(frame)
    if split is None:
        return unpack_requests(frame)
    copy, packed = split
    try:
        session, ack, reqs = unpack_requests(copy)
    except ProtocolError:        # report the frame's own error (the copy's text may differ)
        return unpack_requests(frame)
    for i, items in packed:
        reqs[i][3] = items
    return session, ack, reqs


def pack_replies(replies):
    return _pack([VERSION, replies])


def unpack_replies(frame):
    if _cunpack_body is not None:
        try:
            return _cunpack_body(frame, VERSION)     # [VERSION, replies]: the replies
        except _Unsupported:
            pass                                      # (anything else: decoded in full below)
    msg = None
    if _cunpack is not None:
        try:
            msg = _cunpack(frame)
        except _Unsupported:
            pass
    if msg is None:
        msg = msgpack.unpackb(frame, **_unpacker_opts)
    if type(msg) is not list or len(msg) != 2 or msg[0] != VERSION:
        raise ProtocolError(E_PROTOCOL, "bad reply frame")
    return msg[1]
