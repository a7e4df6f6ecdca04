"""The write-ahead log of prepared (2PC) transactions, with group commit.

Interface:
    PrepareLog(data_dir, *, compact_bytes=4 MiB, on_durable=None)
        .live -> dict[gtrid, record]      prepared and unresolved, after replay
        .resolved -> dict[gtrid, bool]    resolutions still in the log at replay
                                          (commit flag; compaction forgets them)
        .sessions -> dict[sid, record]    service sessions started and not ended, after
                                          replay (a shard's reclaim after a restart)
        .ended -> set[sid]                sessions whose end is still in the log
        .epoch -> int                     bumped and persisted at each open
        .submit(record) -> Ticket         queue a record; Ticket.wait() returns
                                          once it is on disk (fsynced)
        .append_sync(record)              submit + wait
        .close()
    read_log(path) -> (records, cut_at | None)   replay helper
    CorruptLog                            a damaged record in the middle

Files in ``data_dir``: ``prepared.wal`` (the log), ``epoch`` and ``LOCK``.

Ownership: opening a PrepareLog takes an exclusive ``flock`` on ``data_dir/LOCK``
(the owner's pid is written into it, for the error message) before it touches
anything else, and holds it until ``close()`` (or the process's death: the
kernel drops the lock with the last descriptor, so a SIGKILLed shard leaves no
stale lock). A second owner -- another ``lockmgr serve`` on the same
``--data-dir``, or a second PrepareLog in this process -- gets ``DataDirInUse``
at once and changes nothing: two owners would share one epoch and interleave
one log.

Epoch: ``epoch`` holds one decimal integer in ASCII. Opening a PrepareLog
reads it and stores it plus one (1 when the file is missing) before anything
else, durably: written to ``epoch.tmp``, fsynced, renamed over ``epoch``,
directory fsynced. The owner (a LockManager with a data_dir, a shard) builds
its table with ``token_base = epoch << 40``, so every fencing token of a
later start is larger than every token of an earlier one.

Records are msgpack maps (str keys). Two kinds:

* prepare, one per prepared transaction::

      {"t": "prepare", "gtrid": str, "txn": int, "name": str | None,
       "at": float, "locks": [[key, mode, token], ...]}
      # written by a shard, with two more keys:
      #   "parts": [int, ...], "fmt": "path"

  ``txn`` is the transaction id, ``name`` the transaction's name (the
  embedded manager) or the client session's name (a shard), ``at`` the wall
  time of the prepare (``time.time()``). Each lock is the node, the mode
  held (an int, ``lockmgr.modes.Mode``) and the fencing token it had when
  prepared (kept for the record; a replayed lock gets a new token). Every
  lock of the transaction is listed, the ancestors' intention locks
  included. The node is written in one of two forms:

  - key bytes (no ``"fmt"`` key; the embedded manager's form): the
    canonical key, ``lockmgr.paths.encode(path)``, a msgpack bin;
  - ``"fmt": "path"`` (a shard's form): the path itself as a msgpack array
    of its components (str, int, bytes), so replay needs no decoding
    (``tuple(key)``).

  A shard replays both forms; the embedded manager replays key bytes only.
  ``"parts"`` (shards only) lists the shard indices the transaction had
  locks on when it was prepared (sorted, the writer's own included).

* resolve, the decision on a prepared transaction, written (and fsynced)
  before its locks are released::

      {"t": "resolve", "gtrid": str, "commit": bool}

* session and session_end, a shard's client sessions (written by a shard
  with a grace period, lockmgr/service/shard/reclaim.py; submitted without
  waiting for the disk, so they ride the next group commit)::

      {"t": "session", "sid": int, "ttl": float, "secret": int, "name": str}
      {"t": "session_end", "sid": int}

  A session record makes the session live; its end record removes it (and
  adds it to ``ended``). Compaction keeps the live session records.

* epoch, written by a replica set's primary when it starts serving (and
  replicated like the others, docs/replication.md)::

      {"t": "epoch", "epoch": int, "replica": int}

  The latest one is ``last_epoch``; compaction keeps it.

Replay applies the records in order: a prepare makes its gtrid live; a
resolve of a live gtrid removes it and remembers the outcome in
``resolved`` (a resolve of a gtrid that is not live is ignored; so is a
record of another ``"t"``). What is live at the end is in doubt.

Framing: each record on disk is ``magic | length | crc32 | payload``: magic
``b"\xb7\x4c"`` (2 bytes), the payload's length (4 bytes, big-endian,
at most 64 MiB), ``zlib.crc32`` of the payload (4 bytes, big-endian), then
the msgpack payload (packed with ``use_bin_type=True``). A record is the unit
of atomicity: a prepare is wholly in the log or absent.

Torn tails: replay stops at the first damaged record (a short header, a bad
magic, a length past the end of the file or above the limit, a checksum
mismatch, or a payload that passes its checksum but does not decode). If no
intact record (magic, length and checksum all valid) starts anywhere after
the damaged record's first byte, the damage is a torn write of the tail: the
file is truncated at the damaged record's offset and fsynced, a warning is
logged, and ``truncated_at`` holds the offset (those records were never
acknowledged). If an intact record follows, the log is damaged in the middle
and :class:`CorruptLog` is raised rather than guessing.

Group commit: ``submit`` only queues. One flusher thread takes everything
queued, writes it in one ``write``, calls ``fsync`` once, and then marks all
those tickets durable (and calls ``on_durable(tickets)`` if given, so a
single-threaded server can wake its poll loop). Whoever submits while a fsync
is in flight rides the next one. Nobody but the flusher touches the disk, so
a caller (a shard's loop) never stalls on it.

Compaction: after a flush, when the file has grown past ``compact_bytes``
(default 4 MiB) and the encoded live prepares take less than half of it, the
flusher writes the live prepare records and the live session records (and
nothing else: resolve records, resolved prepares and ended sessions are
dropped, so ``resolved`` and ``ended`` forget them at the next open) to
``prepared.wal.compact``, fsyncs it, renames it over the log and fsyncs the
directory. The rename is atomic, so a crash leaves either the old
or the new log, both complete.

A failed write or fsync fails every ticket of its batch (``Ticket.wait``
raises LockError); the caller treats the record as not durable.
"""

import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from typing import Any, Callable, Dict, List, Optional

import msgpack

from .errors import LockError

__all__ = ["PrepareLog", "CorruptLog", "DataDirInUse", "lock_data_dir", "read_log", "Ticket", "prepared_records",
           "relock"]

log = logging.getLogger("lockmgr.wal")

MAGIC = b"\xb7\x4c"
HEADER = struct.Struct(">2sII")
MAX_RECORD = 64 * 1024 * 1024
LOG_NAME = "prepared.wal"
EPOCH_NAME = "epoch"
LOCK_NAME = "LOCK"


class DataDirInUse(OSError):
    """The data directory is locked by another owner (a running shard)."""


def lock_data_dir(data_dir: str) -> int:
    """Take the exclusive lock of ``data_dir`` (its ``LOCK`` file): -> the open
    descriptor that holds it (close it to let go). DataDirInUse, naming the
    directory and the pid recorded by the owner, if another owner holds it."""
    path = os.path.join(data_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        try:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise DataDirInUse(f"data directory {os.path.abspath(data_dir)} is in use by another process "
                           f"(pid {owner} holds {path}); two shards must never share one data directory") from e
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class CorruptLog(LockError):
    """The log is damaged before its end: the data directory needs a human."""


def prepared_records(live: Dict[Any, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The live prepare records of a log in transaction-id order (the order a
    restart re-locks them in: the embedded manager and a shard alike)."""
    return sorted(live.values(), key=lambda r: r["txn"])


def relock(table: Any, rec: Dict[str, Any]) -> int:
    """Give the prepared transaction of ``rec`` its locks back in ``table``
    (nowait; key-bytes and path records alike); returns how many. The prepared
    transactions of one log never conflict: a conflict means a corrupt log
    (CorruptLog, which stops the start)."""
    from .paths import decode
    tid = rec["txn"]
    conv = tuple if rec.get("fmt") == "path" else decode
    for key, mode, _token in rec["locks"]:
        if table.lock(tid, conv(key), mode, True) <= 0:
            raise CorruptLog(f"prepared transaction {rec['gtrid']!r} conflicts with another in the log")
    return len(rec["locks"])


def _encode(record):
    payload = msgpack.packb(record, use_bin_type=True)
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def read_log(path):
    """Read every intact record of the log at ``path``.

    Returns ``(records, cut_at)``: ``cut_at`` is the offset of a torn tail
    (None if the file is intact). Raises CorruptLog for damage in the middle.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], None
    records = []
    pos = 0
    n = len(data)
    while pos < n:
        damage = None
        if n - pos < HEADER.size:
            damage = "truncated header"
            end = n
        else:
            magic, length, crc = HEADER.unpack_from(data, pos)
            end = pos + HEADER.size + length
            if magic != MAGIC:
                damage = "bad magic"
            elif length > MAX_RECORD or end > n:
                damage = "truncated record"
                end = n
            else:
                payload = data[pos + HEADER.size:end]
                if zlib.crc32(payload) != crc:
                    damage = "checksum mismatch"
                else:
                    try:
                        records.append(msgpack.unpackb(payload, raw=False))
                    except Exception:  # a payload that passed its CRC but does not decode
                        damage = "undecodable payload"
        if damage is not None:
            if _valid_record_after(data, pos + 1):
                raise CorruptLog(
                    f"{path}: damaged record at offset {pos} ({damage}) with intact data after it; "
                    f"refusing to guess — restore the data directory or remove the log deliberately")
            return records, pos
        pos = end
    return records, None


def _valid_record_after(data, pos):
    """True if an intact record starts anywhere at or after ``pos``.

    A torn write damages only the end of the log, so intact data after a
    damaged record means the damage is in the middle. Scanning for any
    intact record (not just at the damaged record's claimed end) also catches
    a flipped bit in a length field.
    """
    n = len(data)
    i = data.find(MAGIC, pos)
    while i != -1 and n - i >= HEADER.size:
        _, length, crc = HEADER.unpack_from(data, i)
        end = i + HEADER.size + length
        if length <= MAX_RECORD and end <= n and zlib.crc32(data[i + HEADER.size:end]) == crc:
            return True
        i = data.find(MAGIC, i + 1)
    return False


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


class Ticket:
    """A queued record; ``wait()`` returns once it is durable."""

    __slots__ = ("record", "_event", "error")

    def __init__(self, record: Dict[str, Any]) -> None:
        self.record = record
        self._event = threading.Event()
        self.error: Optional[BaseException] = None

    @property
    def durable(self) -> bool:
        return self._event.is_set() and self.error is None

    def wait(self, timeout: Optional[float] = None) -> None:
        if not self._event.wait(timeout):
            raise TimeoutError("log write not durable yet")
        if self.error is not None:
            raise self.error


class PrepareLog:
    """The durable log of one data directory (see the module docstring)."""

    def __init__(self, data_dir: str, *, compact_bytes: int = 4 << 20,
                 on_durable: Optional[Callable[[List[Ticket]], Any]] = None,
                 epoch: Optional[int] = None, replicator: Any = None) -> None:
        os.makedirs(data_dir, exist_ok=True)
        self._lock_fd: Optional[int] = lock_data_dir(data_dir)     # DataDirInUse: nothing touched
        try:
            self._open(data_dir, compact_bytes, on_durable, epoch, replicator)
        except BaseException:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise

    def _open(self, data_dir: str, compact_bytes: int,
              on_durable: Optional[Callable[[List[Ticket]], Any]], epoch: Optional[int], replicator: Any) -> None:
        self.dir = data_dir
        self.path = os.path.join(data_dir, LOG_NAME)
        self._compact_bytes = compact_bytes
        self._on_durable = on_durable
        # epoch: bumped and persisted before anything else happens
        epoch_path = os.path.join(data_dir, EPOCH_NAME)
        try:
            with open(epoch_path) as f:
                self.epoch = int(f.read().strip()) + 1
        except FileNotFoundError:
            self.epoch = 1
        if epoch is not None:
            # a replica set's primary: the epoch comes from etcd (a counter raised by
            # compare-and-swap, docs/replication.md); it never goes below the local one
            # (equal: the same term opened again, e.g. a retried start)
            if epoch < self.epoch - 1:
                raise LockError(f"{data_dir}: epoch {epoch} from the replica set is below this data "
                                f"directory's {self.epoch - 1}")
            self.epoch = epoch
        _write_atomic(epoch_path, str(self.epoch).encode())
        records, cut = read_log(self.path)
        if cut is not None:
            log.warning("%s: torn tail at offset %d cut off (%d intact records kept)",
                        self.path, cut, len(records))
            with open(self.path, "r+b") as f:
                f.truncate(cut)
                os.fsync(f.fileno())
        self.truncated_at = cut
        self._replay(records)
        self._size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        self._live_bytes = (sum(len(_encode(r)) for r in self.live.values())
                            + sum(len(_encode(r)) for r in self.sessions.values()))
        self._file = open(self.path, "ab")
        self._cv = threading.Condition()
        self._queue: List[Ticket] = []
        self._closed = False
        self.fsyncs = 0
        self.on_fsync: Optional[Callable[[float], Any]] = None   # called by the flusher with each fsync's seconds
        self.compactions = 0
        # a replica set's primary: replication.Replicator, driven by the flusher thread only
        self.replicator = replicator
        self._thread = threading.Thread(target=self._flusher, name="lockmgr-wal", daemon=True)
        self._thread.start()

    def _replay(self, records: List[Dict[str, Any]]) -> None:
        """The state of the log after ``records`` (at open; also lockmgr.sim's in-memory twin)."""
        self.live: Dict[str, Dict[str, Any]] = {}
        self.resolved: Dict[str, bool] = {}   # gtrid -> commit (bool): resolve records still in the log at replay
        self.sessions: Dict[int, Dict[str, Any]] = {}   # sid -> session record: started, not ended
        self.ended: set = set()               # sids whose session_end record is in the log
        # the latest {"t": "epoch"} record: the epoch of the last primary whose records this log
        # holds (a replica set's new primary accepts reclaims of locks granted in it)
        self.last_epoch: Optional[Dict[str, Any]] = None
        for r in records:
            if r.get("t") == "epoch":
                self.last_epoch = r
            if r.get("t") in ("session", "session_end"):
                self._apply_session(r)
            elif r.get("t") == "prepare":
                self.live[r["gtrid"]] = r
                self.resolved.pop(r["gtrid"], None)
            elif r.get("t") == "resolve":
                if self.live.pop(r["gtrid"], None) is not None:
                    self.resolved[r["gtrid"]] = bool(r.get("commit"))

    def submit(self, record: Dict[str, Any]) -> Ticket:
        """Queue ``record``; returns a Ticket that becomes durable after the next fsync."""
        t = Ticket(record)
        with self._cv:
            if self._closed:
                raise LockError("the prepare log is closed")
            self._queue.append(t)
            self._cv.notify()
        return t

    def live_records(self) -> Dict[str, Dict[str, Any]]:
        """A copy of the live (prepared, unresolved) records by gtrid."""
        with self._cv:
            return dict(self.live)

    def live_sessions(self) -> Dict[int, Dict[str, Any]]:
        """A copy of the live session records by session id."""
        with self._cv:
            return dict(self.sessions)

    def _apply_session(self, r):
        """A session or session_end record (replay, or durable); returns the bytes
        the live records grew by."""
        sid = r.get("sid")
        if type(sid) is not int:
            return 0
        if r["t"] == "session":
            self.sessions[sid] = r
            self.ended.discard(sid)
            return len(_encode(r))
        old = self.sessions.pop(sid, None)
        self.ended.add(sid)
        if len(self.ended) > 65536:       # bounded: one (arbitrary) is forgotten
            self.ended.pop()
        return -len(_encode(old)) if old is not None else 0

    def append_sync(self, record, timeout=None):
        t = self.submit(record)
        t.wait(timeout)
        return t

    def _flusher(self):
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    if self.replicator is None:
                        self._cv.wait()
                    else:
                        self._cv.release()
                        try:                   # standbys joining, acks (the replicator's socket is ours)
                            self.replicator.idle(self)
                        finally:
                            self._cv.acquire()
                        self._cv.wait(0.01)
                batch, self._queue = self._queue, []
                if not batch and self._closed:
                    return
            rep = self.replicator
            try:
                data = b"".join(_encode(t.record) for t in batch)
                shipped = rep.ship([t.record for t in batch]) if rep is not None else None
                self._file.write(data)
                self._file.flush()
                t_sync = time.perf_counter()
                os.fsync(self._file.fileno())
                if rep is not None:
                    # on the standbys the configuration requires too (or a documented
                    # failure: LockError for every ticket of the batch)
                    rep.wait_acks(shipped)
                self.fsyncs += 1
                if self.on_fsync is not None:      # (metrics: fsync latency)
                    self.on_fsync(time.perf_counter() - t_sync)
                self._size += len(data)
                with self._cv:
                    self._apply(batch)
                if self._size > self._compact_bytes and self._live_bytes * 2 < self._size:
                    self._compact()
            except Exception as e:  # disk full, I/O error: every waiter learns it
                log.error("prepare log write failed: %s", e)
                for t in batch:
                    t.error = LockError(f"prepare log write failed: {e}")
            for t in batch:
                t._event.set()
            if self._on_durable is not None:
                self._on_durable(batch)

    def _apply(self, batch):
        for t in batch:
            r = t.record
            if r.get("t") in ("session", "session_end"):
                self._live_bytes += self._apply_session(r)
            elif r.get("t") == "prepare":
                self.live[r["gtrid"]] = r
                self._live_bytes += len(_encode(r))
            elif r.get("t") == "resolve":
                old = self.live.pop(r["gtrid"], None)
                if old is not None:
                    self._live_bytes -= len(_encode(old))
            elif r.get("t") == "epoch":
                self.last_epoch = r

    def _compact(self):
        data = ((_encode(self.last_epoch) if self.last_epoch is not None else b"")
                + b"".join(_encode(r) for r in self.live.values())
                + b"".join(_encode(r) for r in self.sessions.values()))
        tmp = self.path + ".compact"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._file.close()
        os.replace(tmp, self.path)
        _fsync_dir(self.dir)
        self._file = open(self.path, "ab")
        self._size = len(data)
        self.compactions += 1
        log.info("%s compacted to %d live prepares (%d bytes)", self.path, len(self.live), len(data))

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()
        self._file.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)        # the data directory is free for the next owner
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

