"""Replication of a shard's durable log from its primary to its standbys.

Interface:
    Replicator(ctx, endpoint, *, epoch, replica, sync_standbys, sync_timeout,
               on_standby_loss="degrade", set_members=None, clock=time.monotonic)
        primary side, driven by the prepare log's flusher thread only (wal.PrepareLog(replicator=...)):
        .endpoint                 the bound replication endpoint (a ROUTER)
        .attach(log)              the PrepareLog whose live records a joining standby is sent
        .ship(records) -> seq     send one group-commit batch to every follower (before the local fsync)
        .wait_acks(seq)           return once the batch is on the standbys the configuration
                                  requires; raise LockError if it cannot be (on_standby_loss="fail")
        .idle(log)                between batches: standbys joining, acks, keep-alives
        .status() -> dict         followers, lag, members, counters (REPL_ROLE, lockmgr status)
    StandbyLog(data_dir)          standby side: the log file a promoted standby's PrepareLog replays
        .replace(records), .append(records), .live, .sessions, .last_epoch, .close()
    Follower(ctx, log, replica, incarnation)  standby side: follows one primary's replication endpoint
        .follow(endpoint, epoch), .poll(timeout_ms) -> bool (something arrived), .epoch, .seq,
        .synced (a snapshot is on disk), .heard (monotonic time of the last message), .close()

Design and the correctness argument: docs/replication.md.
"""

import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Set

import msgpack
import zmq

from .. import wal
from ..errors import LockError
from . import wire

__all__ = ["Replicator", "StandbyLog", "Follower", "KEEPALIVE"]

_log = logging.getLogger("lockmgr.replication")

KEEPALIVE = 0.2          # seconds between a primary's empty REPL_RECORDS when idle
FOLLOWER_GONE = 5.0      # a follower not heard from for this long is no longer sent to


def _pack(msg):
    return msgpack.packb(msg, use_bin_type=True)


def _unpack(b):
    return msgpack.unpackb(b, raw=False)


class _Peer:
    __slots__ = ("ident", "replica", "incarnation", "acked", "snap_seq", "heard", "member_key")

    def __init__(self, ident, replica, incarnation, snap_seq, now):
        self.ident = ident
        self.replica = replica
        self.incarnation = incarnation
        self.acked = 0
        self.snap_seq = snap_seq
        self.heard = now
        self.member_key = f"{replica}:{incarnation}"


class Replicator:
    """The primary's end (see the module docstring). Not thread-safe: only the
    prepare log's flusher thread calls it."""

    def __init__(self, ctx, endpoint: str, *, epoch: int, replica: int, sync_standbys: int,
                 sync_timeout: float = 1.0, on_standby_loss: str = "degrade",
                 set_members: Optional[Callable[[List[str]], None]] = None,
                 clock: Callable[[], float] = time.monotonic, members: Optional[Set[str]] = None) -> None:
        if on_standby_loss not in ("degrade", "fail"):
            raise LockError(f"on_standby_loss must be 'degrade' or 'fail'; got {on_standby_loss!r}")
        self.epoch = epoch
        self.replica = replica
        self.sync_standbys = sync_standbys
        self.sync_timeout = sync_timeout
        self.on_standby_loss = on_standby_loss
        self._set_members = set_members
        self._clock = clock
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)     # a standby that reconnects keeps its identity
        if endpoint.endswith(":0"):
            endpoint = endpoint[:-2] + ":*"
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.seq = 0
        self.peers: Dict[bytes, _Peer] = {}
        # standbys in the sync set ("replica:incarnation"): each holds every record acknowledged
        # since it joined (a member that stops acking is taken out, in etcd first, before any
        # record is acknowledged without it)
        self.members: Set[str] = set(members or ())
        self._log: Any = None
        self._deferred: List[Any] = []
        self._last_send = 0.0
        self.counters = {"repl_batches": 0, "repl_snapshots": 0, "repl_degraded": 0, "repl_failed": 0,
                         "repl_dropped_members": 0}

    def attach(self, log) -> None:
        self._log = log

    def close(self) -> None:
        self.sock.close(0)

    # -- the flusher thread

    def _snapshot_records(self) -> List[Dict[str, Any]]:
        log = self._log
        out: List[Dict[str, Any]] = []
        if log is None:
            return out
        if log.last_epoch is not None:
            out.append(log.last_epoch)
        out.extend(log.live.values())
        out.extend(log.sessions.values())
        return out

    def _poll(self, timeout_ms: int, hellos: bool = True) -> None:
        """Read what the standbys sent. ``hellos`` False (while a batch is being
        acknowledged: the log's live records do not include it yet) keeps
        REPL_HELLOs for the next call that may answer them."""
        if hellos and self._deferred:
            for ident, msg in self._deferred:
                self._hello(ident, msg)
            self._deferred = []
        sock = self.sock
        if not sock.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                ident, payload = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue
            try:
                msg = _unpack(payload)
                typ = msg[0]
            except Exception:
                continue
            now = self._clock()
            if typ == wire.REPL_HELLO and len(msg) == 4:
                if hellos:
                    self._hello(ident, msg)
                else:
                    self._deferred.append((ident, msg))
            elif typ == wire.REPL_ACK and len(msg) == 5:
                _, ep, seq, _replica, _inc = msg
                p = self.peers.get(ident)
                if p is None or ep != self.epoch:
                    continue
                p.heard = now
                if type(seq) is int and seq > p.acked:
                    p.acked = seq
                # in sync: it acknowledged its snapshot and every batch shipped since (one that was
                # taken out of the sync set comes back only once it has caught up completely)
                if p.acked >= p.snap_seq and p.acked >= self.seq and p.member_key not in self.members \
                        and self.sync_standbys > 0:
                    self._add_member(p)

    def _hello(self, ident: bytes, msg) -> None:
        _, replica, inc, _shard = msg
        snap = self._snapshot_records()
        p = _Peer(ident, replica, inc, self.seq, self._clock())
        self.peers[ident] = p
        self.counters["repl_snapshots"] += 1
        _log.info("replica %s follows (snapshot of %d records at seq %d)", p.member_key, len(snap), self.seq)
        self._send(ident, [wire.REPL_SNAPSHOT, self.epoch, self.seq, snap])

    def _add_member(self, p: _Peer) -> None:
        new = self.members | {p.member_key}
        if self._publish(new):
            self.members = new
            _log.info("replica %s is in sync (a member of the sync set)", p.member_key)

    def _publish(self, members: Set[str]) -> bool:
        if self._set_members is None:
            return True
        try:
            self._set_members(sorted(members))
            return True
        except Exception as e:   # etcd unreachable: the sync set stays as it was
            _log.warning("could not publish the sync set %s: %s", sorted(members), e)
            return False

    def _send(self, ident: bytes, msg) -> None:
        try:
            self.sock.send_multipart([ident, _pack(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def ship(self, records: List[Dict[str, Any]]) -> int:
        self._poll(0)
        self.seq += 1
        self.counters["repl_batches"] += 1
        if self.peers:
            data = _pack([wire.REPL_RECORDS, self.epoch, self.seq, records])
            now = self._clock()
            for ident, p in list(self.peers.items()):
                if now - p.heard > FOLLOWER_GONE and p.member_key not in self.members:
                    del self.peers[ident]
                    continue
                try:
                    self.sock.send_multipart([ident, data], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            self._last_send = now
        return self.seq

    def _member_peers(self) -> Dict[str, _Peer]:
        return {p.member_key: p for p in self.peers.values() if p.member_key in self.members}

    def wait_acks(self, seq: int) -> None:
        if self.sync_standbys == 0:
            return       # asynchronous: standbys get the records but are never waited for (nor members)
        deadline = self._clock() + self.sync_timeout
        while True:
            mp = self._member_peers()
            missing = [k for k in self.members if k not in mp or mp[k].acked < seq]
            if not missing:
                break
            left = deadline - self._clock()
            if left <= 0:
                # members that did not answer in time leave the sync set -- in etcd first, so
                # that none of them can become primary without what we acknowledge next
                new = self.members - set(missing)
                if not self._publish(new):
                    self.counters["repl_failed"] += 1
                    raise LockError(f"standby {', '.join(sorted(missing))} did not acknowledge within "
                                    f"{self.sync_timeout:g}s and etcd could not be told: not acknowledged")
                _log.warning("standby %s did not acknowledge within %gs: out of the sync set",
                             ", ".join(sorted(missing)), self.sync_timeout)
                self.members = new
                self.counters["repl_dropped_members"] += len(missing)
                break
            self._poll(max(1, int(left * 1000)), hellos=False)
        have = sum(1 for p in self._member_peers().values() if p.acked >= seq)
        if have < self.sync_standbys:
            if self.on_standby_loss == "fail":
                self.counters["repl_failed"] += 1
                raise LockError(f"on {have} standby(s) of the {self.sync_standbys} required "
                                f"(on_standby_loss='fail'): not acknowledged")
            self.counters["repl_degraded"] += 1

    def idle(self, log) -> None:
        self._poll(0)
        now = self._clock()
        if self.peers and now - self._last_send >= KEEPALIVE:
            self._last_send = now
            data = _pack([wire.REPL_RECORDS, self.epoch, self.seq, []])
            for ident in list(self.peers):
                try:
                    self.sock.send_multipart([ident, data], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass

    def status(self) -> Dict[str, Any]:
        now = self._clock()
        return {"seq": self.seq, "members": sorted(self.members), "sync_standbys": self.sync_standbys,
                "on_standby_loss": self.on_standby_loss,
                "followers": [{"replica": p.replica, "incarnation": p.incarnation, "acked": p.acked,
                               "lag": self.seq - p.acked, "idle_s": round(now - p.heard, 3),
                               "in_sync": p.member_key in self.members}
                              for p in self.peers.values()],
                **self.counters}


class StandbyLog:
    """A standby's copy of the primary's log: the same file format (wal.py), so a
    promoted standby's PrepareLog replays it. Every write is fsynced before
    it is acknowledged."""

    def __init__(self, data_dir: str) -> None:
        os.makedirs(data_dir, exist_ok=True)
        self.dir = data_dir
        self.path = os.path.join(data_dir, wal.LOG_NAME)
        records, cut = wal.read_log(self.path)
        if cut is not None:
            with open(self.path, "r+b") as f:
                f.truncate(cut)
                os.fsync(f.fileno())
        self.live: Dict[str, Dict[str, Any]] = {}
        self.sessions: Dict[int, Dict[str, Any]] = {}
        self.last_epoch: Optional[Dict[str, Any]] = None
        self._apply(records)
        self._file = open(self.path, "ab")

    def _apply(self, records) -> None:
        for r in records:
            t = r.get("t")
            if t == "prepare":
                self.live[r["gtrid"]] = r
            elif t == "resolve":
                self.live.pop(r["gtrid"], None)
            elif t == "session":
                self.sessions[r["sid"]] = r
            elif t == "session_end":
                self.sessions.pop(r.get("sid"), None)
            elif t == "epoch":
                self.last_epoch = r

    def replace(self, records) -> None:
        self._file.close()
        data = b"".join(wal._encode(r) for r in records)
        tmp = self.path + ".snap"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        wal._fsync_dir(self.dir)
        self._file = open(self.path, "ab")
        self.live, self.sessions, self.last_epoch = {}, {}, None
        self._apply(records)

    def append(self, records) -> None:
        if not records:
            return
        self._file.write(b"".join(wal._encode(r) for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._apply(records)

    def close(self) -> None:
        self._file.close()


class Follower:
    """A standby following one primary's replication endpoint."""

    def __init__(self, ctx, log: StandbyLog, shard: int, replica: int, incarnation: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.log = log
        self.shard = shard
        self.replica = replica
        self.incarnation = incarnation
        self._clock = clock
        self.sock: Optional[zmq.Socket] = None
        self.endpoint: Optional[str] = None
        self.epoch = 0
        self.seq = 0
        self.synced = False
        self.heard = 0.0

    def follow(self, endpoint: str, epoch: int) -> None:
        if self.sock is not None:
            self.sock.close(0)
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IDENTITY, f"{self.replica}:{self.incarnation}".encode())
        s.connect(endpoint)
        self.sock = s
        self.endpoint = endpoint
        self.epoch = epoch
        self.seq = 0
        self.synced = False
        self.heard = self._clock()
        s.send(_pack([wire.REPL_HELLO, self.replica, self.incarnation, self.shard]))

    def poll(self, timeout_ms: int) -> bool:
        s = self.sock
        if s is None or not s.poll(timeout_ms, zmq.POLLIN):
            return False
        got = False
        while True:
            try:
                payload = s.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                typ, ep, seq, records = _unpack(payload)
            except Exception:
                continue
            if ep != self.epoch:
                continue                      # another primary's (a deposed one): not ours to follow
            got = True
            self.heard = self._clock()
            if typ == wire.REPL_SNAPSHOT:
                self.log.replace(records)
                self.synced = True
                self.seq = seq
            elif typ == wire.REPL_RECORDS and self.synced:
                if seq == self.seq + 1 and records:
                    self.log.append(records)
                    self.seq = seq
                elif seq > self.seq:
                    # a batch was lost (a send over the high-water mark): start again from a snapshot
                    _log.warning("standby %d: missed batches %d..%d; asking for a snapshot", self.replica,
                                 self.seq + 1, seq)
                    if self.endpoint is not None:
                        self.follow(self.endpoint, self.epoch)
                    return got
                elif seq < self.seq:
                    continue
            else:
                continue
            try:
                s.send(_pack([wire.REPL_ACK, self.epoch, self.seq, self.replica, self.incarnation]), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        return got

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None
