"""A replica of a shard: leadership through etcd, standby or primary.

Interface:
    Leadership(etcd, cluster, shard, replica, ttl=2.0, margin=None, clock=time.monotonic)
        .campaign() -> epoch | None     take the leader key (bound to a new lease) and a new epoch
        .renew() -> True | False | None keep the lease alive (None: etcd unreachable, still valid
                                        until valid_until; False: the lease is gone: step down)
        .valid(now=None) -> bool        serving is allowed: the lease is certainly alive
        .valid_until, .lost, .epoch, .publish(info), .resign()
    keys(cluster, shard) -> Keys        the etcd keys of one replica set
    ReplicaNode(etcd, cluster, index, nshards, replica, endpoint, data_dir, *, lease_ttl=2.0,
                sync_standbys=1, sync_timeout=1.0, on_standby_loss="degrade", shard_kw=None)
        .bind() -> endpoint             bind the client endpoint (port resolved)
        .run(parent_pid=None)           standby <-> primary until stop()
        .stop()

etcd keys, under ``/lockmgr/CLUSTER/``: ``config`` (shards, partition depth),
``shard/I/leader`` (bound to the primary's lease: {replica, endpoint, repl,
epoch}), ``shard/I/epoch`` (the counter, raised by compare-and-swap),
``shard/I/sync`` ({epoch, members}: the replicas that hold every acknowledged
record; only they may campaign), ``replica/I/J`` (each replica's status for
``lockmgr status``). A standby watches its leader key; a primary watches
every shard's (``shard/``) for its probe peers. Design: docs/replication.md.
"""

import json
import logging
import os
import secrets
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import zmq

from ..errors import LockError
from . import wire
from .etcd import EtcdUnavailable, Keys, Watcher, get_json, is_leader_change, keys, leader_endpoints
from .replication import Follower, Replicator, StandbyLog

__all__ = ["Leadership", "ReplicaNode", "keys", "Keys"]

_log = logging.getLogger("lockmgr.replica")

FALLBACK_POLL = 1.0     # seconds: a standby reads the leader key at least this often (the watch's fallback)
WATCH_IDLE = 5.0        # seconds: a watch stream idle this long is reopened (a dead connection is noticed)
_PEER_MESSAGES = frozenset((wire.PROBE, wire.PROBE_REG, wire.PROBE_UNREG, wire.PROBE_MULTI, wire.PROBE_CONFIRM,
                            wire.PROBE_VICTIM, wire.PROBE_CONFIRMED))


class _Doorbell:
    """A pipe that another thread rings to wake a zmq poll (its read end is pollable)."""

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._w, False)
        self.closed = False

    def ring(self, *_: Any) -> None:
        if self.closed:
            return
        try:
            os.write(self._w, b"\0")
        except OSError:          # full (it rang already) or closed
            pass

    def drain(self) -> bool:
        """True if it rang since the last drain."""
        rang = False
        while True:
            try:
                if not os.read(self.fd, 4096):
                    return rang
                rang = True
            except BlockingIOError:
                return rang

    def close(self) -> None:
        self.closed = True
        os.close(self.fd)
        os.close(self._w)


class Leadership:
    """One replica's candidacy for its shard's leader key (see the module docstring).

    Safety: ``valid_until`` is the send time of the grant or keepalive that
    etcd answered, plus the TTL, less ``margin``: etcd counts the TTL from
    when it handled the request, which is later, so the lease in etcd
    outlives ``valid_until`` by at least ``margin`` unless the two clocks'
    rates differ by more than margin/TTL. Another replica can take the
    leader key only after etcd expired the lease."""

    def __init__(self, etcd, cluster: str, shard: int, replica: int, ttl: float = 2.0,
                 margin: Optional[float] = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.etcd = etcd
        self.keys = keys(cluster, shard)
        self.replica = replica
        self.ttl = float(ttl)
        self.margin = margin if margin is not None else max(0.1, 0.1 * self.ttl)
        self.clock = clock
        self.lease = 0
        self.epoch = 0
        self.valid_until = float("-inf")
        self.lost = True

    def campaign(self) -> Optional[int]:
        t0 = self.clock()
        lease = self.etcd.grant(self.ttl)
        try:
            won = self.etcd.create(self.keys.leader, json.dumps({"replica": self.replica, "epoch": 0}), lease)
        except EtcdUnavailable:
            self.etcd.revoke(lease)
            raise
        if not won:
            self.etcd.revoke(lease)
            return None
        try:
            while True:                  # the epoch counter, by compare-and-swap
                kv = self.etcd.get(self.keys.epoch)
                old = kv.value if kv is not None else None
                new = int(old or 0) + 1
                if self.etcd.cas(self.keys.epoch, old, str(new)):
                    break
        except EtcdUnavailable:
            self.etcd.revoke(lease)
            raise
        self.lease = lease
        self.epoch = new
        self.valid_until = t0 + self.ttl - self.margin
        self.lost = False
        return new

    def renew(self) -> Optional[bool]:
        if self.lost:
            return False
        t0 = self.clock()
        try:
            left = self.etcd.keepalive(self.lease)
        except EtcdUnavailable:
            return None                  # valid until valid_until; tried again
        if left <= 0:
            self.lost = True
            return False
        self.valid_until = max(self.valid_until, t0 + self.ttl - self.margin)
        return True

    def valid(self, now: Optional[float] = None) -> bool:
        return not self.lost and (self.clock() if now is None else now) < self.valid_until

    def publish(self, info: Dict[str, Any]) -> None:
        self.etcd.put(self.keys.leader, json.dumps(info), self.lease)

    def resign(self) -> None:
        self.lost = True
        if self.lease:
            try:
                self.etcd.revoke(self.lease)
            except EtcdUnavailable:
                pass


def _retry_bind(fn, timeout: float = 5.0):
    """``fn()``, again while the port is still held by the socket this process just
    closed (ZeroMQ closes asynchronously, in its I/O thread)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except zmq.ZMQError as e:
            if e.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _incarnation(data_dir: str) -> str:
    """This data directory's identity: a new one when the directory is new (a
    wiped machine is a new member, not an old one that remembers)."""
    p = os.path.join(data_dir, "incarnation")
    try:
        with open(p) as f:
            v = f.read().strip()
            if v:
                return v
    except FileNotFoundError:
        pass
    v = secrets.token_hex(4)
    os.makedirs(data_dir, exist_ok=True)
    with open(p + ".tmp", "w") as f:
        f.write(v)
        f.flush()
        os.fsync(f.fileno())
    os.replace(p + ".tmp", p)
    return v


class ReplicaNode:
    """One replica process's life: standby (follow the primary, answer clients
    E_NOT_PRIMARY) until it wins the leader key, then primary (a Shard with a
    Replicator and a lease guard) until the lease is lost, then standby again."""

    def __init__(self, etcd, cluster: str, index: int, nshards: int, replica: int, endpoint: str,
                 data_dir: str, *, lease_ttl: float = 2.0, sync_standbys: int = 1, sync_timeout: float = 1.0,
                 on_standby_loss: str = "degrade", partition_depth: int = 2,
                 shard_kw: Optional[Dict[str, Any]] = None, ctx=None, repl_endpoint: Optional[str] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.etcd = etcd
        self.cluster = cluster
        self.index = index
        self.nshards = nshards
        self.replica = replica
        self.endpoint = endpoint
        self.data_dir = data_dir
        self.lease_ttl = lease_ttl
        self.sync_standbys = sync_standbys
        self.sync_timeout = sync_timeout
        self.on_standby_loss = on_standby_loss
        self.partition_depth = partition_depth
        self.shard_kw = dict(shard_kw or {})
        self.ctx = ctx or zmq.Context.instance()
        host = endpoint.split("://", 1)[1].rsplit(":", 1)[0] if endpoint.startswith("tcp://") else "127.0.0.1"
        self.repl_endpoint = repl_endpoint or f"tcp://{host}:0"
        self.clock = clock
        self.keys = keys(cluster, index)
        os.makedirs(data_dir, exist_ok=True)
        self.incarnation = _incarnation(data_dir)
        self.member_key = f"{replica}:{self.incarnation}"
        self.leadership = Leadership(etcd, cluster, index, replica, lease_ttl, clock=clock)
        self.role = "starting"
        self.primary_endpoint: Optional[str] = None
        self.epoch = 0
        self.shard: Any = None
        self.replicator: Optional[Replicator] = None
        self.follower: Optional[Follower] = None
        self.stepdowns = 0
        self._stop = False
        self._sock: Any = None
        self._peers_next: Optional[List[str]] = None      # set by the peer watcher's thread
        self._peers_applied: Optional[List[str]] = None

    # -- the client endpoint while standby

    def bind(self) -> str:
        s = self.ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        ep = self.endpoint
        if ep.startswith("tcp://") and ep.endswith(":0"):
            ep = ep[:-2] + ":*"
        _retry_bind(lambda: s.bind(ep))
        self.endpoint = s.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._sock = s
        return self.endpoint

    def stop(self) -> None:
        self._stop = True
        if self.shard is not None:
            self.shard.stop()

    def role_info(self, args=None) -> Dict[str, Any]:
        out: Dict[str, Any] = {"role": self.role, "replica": self.replica, "shard": self.index,
                               "epoch": self.epoch, "endpoint": self.endpoint, "primary": self.primary_endpoint,
                               "incarnation": self.incarnation, "pid": os.getpid(), "stepdowns": self.stepdowns}
        if self.role == "primary" and self.replicator is not None:
            out["replication"] = self.replicator.status()
            out["lease_left_s"] = round(self.leadership.valid_until - self.clock(), 3)
            shard = self.shard
            if shard is not None:
                out["peers"] = shard.core.probes.peers
        f = self.follower
        if self.role == "standby" and f is not None:
            out.update(following=f.endpoint, followed_epoch=f.epoch, seq=f.seq, synced=f.synced,
                       heard_s=round(self.clock() - f.heard, 3) if f.heard else None,
                       prepared=len(f.log.live), sessions=len(f.log.sessions))
        return out

    def _answer_standby(self, frames) -> None:
        if len(frames) < 2:
            return
        prefix, payload = frames[:-1], frames[-1]
        try:
            _sid, _ack, reqs = wire.unpack_requests(payload)
        except Exception:
            return
        reps = []
        msg = (f"replica {self.replica} of shard {self.index} is a standby; the primary is "
               f"{self.primary_endpoint or 'unknown (an election is under way)'}")
        for req in reqs:
            try:
                typ, seq = req[0], req[1]
            except Exception:
                continue
            if typ in _PEER_MESSAGES:
                continue                 # a shard's probe message (no reply expected): the primary moved
            if typ == wire.REPL_ROLE:
                reps.append([seq, wire.OK, self.role_info()])
            elif typ == wire.PING:
                reps.append([seq, wire.OK, [self.epoch, self.index, self.nshards, self.partition_depth]])
            else:
                reps.append([seq, wire.E_NOT_PRIMARY, [msg, self.primary_endpoint]])
        if reps:
            try:
                self._sock.send_multipart(list(prefix) + [wire.Packer().pack([wire.VERSION, reps])], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    # -- etcd helpers

    def _leader(self) -> Optional[Dict[str, Any]]:
        return get_json(self.etcd, self.keys.leader)

    def _eligible(self) -> bool:
        kv = self.etcd.get(self.keys.sync)
        if kv is None:
            return True          # a new replica set: nothing was acknowledged yet
        try:
            members = json.loads(kv.value).get("members", [])
        except ValueError:
            return False
        return self.member_key in members

    def _set_members(self, standbys: List[str]) -> None:
        members = sorted(set(standbys) | {self.member_key})
        # only while we hold the leader key: a deposed primary (paused, then resumed) must
        # not rewrite the new primary's sync set
        if not self.etcd.put_if_lease(self.keys.sync, json.dumps({"epoch": self.epoch, "members": members}),
                                      self.keys.leader, self.leadership.lease):
            raise LockError(f"replica {self.replica} of shard {self.index} no longer holds the leader key")

    def _publish_self(self) -> None:
        info = self.role_info()
        info.pop("replication", None)
        info["at"] = time.time()
        try:
            self.etcd.put(self.keys.replicas + str(self.replica), json.dumps(info))
        except EtcdUnavailable:
            pass

    # -- the life

    def run(self, parent_pid: Optional[int] = None) -> None:
        if self._sock is None:
            self.bind()
        self._parent = parent_pid
        try:
            while not self._stop and self._parent_alive():
                epoch = self._standby()
                if epoch is None:
                    break
                try:
                    self._primary(epoch)
                except Exception as e:     # could not serve (etcd gone, the data directory): let another
                    _log.error("replica %d of shard %d: cannot serve as primary (epoch %d): %s; standing down",
                               self.replica, self.index, epoch, e)
                    self.leadership.resign()
                    if self._sock is None and not self._stop:
                        self.bind()
                    time.sleep(0.1)
        finally:
            if self._sock is not None:
                self._sock.close(0)
                self._sock = None

    def _parent_alive(self) -> bool:
        return self._parent is None or os.getppid() == self._parent

    def _standby(self) -> Optional[int]:
        self.role = "standby"
        log = StandbyLog(self.data_dir)
        self.follower = f = Follower(self.ctx, log, self.index, self.replica, self.incarnation, clock=self.clock)
        # the leader key is watched (its deletion, a lease expiry included, rings at once);
        # it is read again at least every FALLBACK_POLL seconds (and while etcd cannot be watched)
        bell = _Doorbell()
        watcher = Watcher(self.etcd, self.keys.leader, bell.ring, idle=WATCH_IDLE, retry=FALLBACK_POLL,
                          name="lockmgr-leader-watch")
        check_at = 0.0
        parent_at = 0.0
        publish_at = 0.0
        try:
            while not self._stop:
                now = self.clock()
                if now >= parent_at:
                    parent_at = now + 0.5
                    if not self._parent_alive():
                        return None
                if bell.drain() or now >= check_at:
                    check_at = now + FALLBACK_POLL
                    try:
                        leader = self._leader()
                        if leader is not None and leader.get("repl"):
                            self.primary_endpoint = leader.get("endpoint")
                            self.epoch = max(self.epoch, leader.get("epoch", 0))
                            if f.endpoint != leader["repl"] or f.epoch != leader["epoch"] \
                                    or now - f.heard > 2.0:
                                f.follow(leader["repl"], leader["epoch"])
                        elif leader is None:
                            self.primary_endpoint = None
                            if self._eligible():
                                ep = self.leadership.campaign()
                                if ep is not None:
                                    return ep
                        if now >= publish_at:
                            publish_at = now + 1.0
                            self._publish_self()
                    except EtcdUnavailable as e:
                        if now >= publish_at:
                            publish_at = now + 1.0
                            _log.warning("replica %d of shard %d: etcd unreachable: %s", self.replica, self.index, e)
                # poll the client socket, the follower's and the doorbell
                items: Any = [(self._sock, zmq.POLLIN), (bell.fd, zmq.POLLIN)]
                if f.sock is not None:
                    items.append((f.sock, zmq.POLLIN))
                wait_ms = max(0, min(int((min(check_at, parent_at) - now) * 1000) + 1, 100))
                for s, _ in zmq.zmq_poll(items, wait_ms):
                    if s is self._sock:
                        while True:
                            try:
                                frames = self._sock.recv_multipart(zmq.NOBLOCK)
                            except zmq.Again:
                                break
                            self._answer_standby(frames)
                    elif s is f.sock and s is not None:
                        f.poll(0)
            return None
        finally:
            watcher.close()
            bell.close()
            f.close()
            log.close()

    def _watch_peers(self, shard) -> Optional[Watcher]:
        """Primary: keep the shard's probe peers (every shard's primary endpoint) current from
        etcd's leader keys, which every primary publishes (docs/replication.md, "Deadlock
        probes across replica sets"). The watcher's thread reads etcd; the loop applies
        the list (``_apply_peers``)."""
        if not shard.core.probes.enabled or self.nshards < 2:
            return None
        known: List[Optional[str]] = [None] * self.nshards
        known[self.index] = shard.endpoint

        def on_change(events) -> None:
            if not is_leader_change(events):
                return
            try:
                eps = leader_endpoints(self.etcd.get_prefix(self.keys.shards), self.cluster)
            except EtcdUnavailable:
                return                   # the watcher rings again (the slow poll)
            # a shard in an election keeps its last endpoint: messages sent there meanwhile
            # are lost, and the probes' re-rounds send them again once it is known
            for i, ep in eps.items():
                if 0 <= i < self.nshards and i != self.index:
                    known[i] = ep
            if all(known):
                self._peers_next = [ep for ep in known if ep]
        return Watcher(self.etcd, self.keys.shards, on_change, prefix=True, idle=WATCH_IDLE, retry=FALLBACK_POLL,
                       name="lockmgr-peers-watch")

    def _apply_peers(self, shard) -> None:
        """(the shard's loop) Hand the newest peer list from etcd to the probe engine."""
        nxt = self._peers_next
        if nxt is not None and nxt is not self._peers_applied:
            self._peers_applied = nxt
            probes = shard.core.probes
            if nxt != probes.peers:
                try:
                    probes.set_peers(nxt)
                    _log.info("replica %d of shard %d: probe peers %s", self.replica, self.index, nxt)
                except ValueError as e:
                    _log.error("replica %d of shard %d: bad peer endpoints in etcd: %s", self.replica, self.index, e)

    def _primary(self, epoch: int) -> None:
        from .shard.server import MAX_POLL_MS, Shard
        self.epoch = epoch
        self.role = "primary"
        ld = self.leadership
        _log.warning("replica %d of shard %d: elected primary (epoch %d)", self.replica, self.index, epoch)
        # the client endpoint passes from the standby's socket to the shard's
        self._sock.close(0)
        self._sock = None
        rep = Replicator(self.ctx, self.repl_endpoint, epoch=epoch, replica=self.replica,
                         sync_standbys=self.sync_standbys, sync_timeout=self.sync_timeout,
                         on_standby_loss=self.on_standby_loss, set_members=self._set_members, clock=self.clock)
        self.replicator = rep
        shard = None
        renewer = None
        peers = None
        done = threading.Event()
        try:
            self._set_members([])
            shard = _retry_bind(lambda: Shard(
                self.endpoint, self.data_dir, index=self.index, nshards=self.nshards,
                partition_depth=self.partition_depth, epoch=epoch, replicator=rep, lease=ld,
                ctx=self.ctx, **self.shard_kw))
            self.shard = shard
            shard.core._admin[wire.REPL_ROLE] = self.role_info
            shard._plog.submit({"t": "epoch", "epoch": epoch, "replica": self.replica})
            self.primary_endpoint = shard.endpoint
            ld.publish({"replica": self.replica, "endpoint": shard.endpoint, "repl": rep.endpoint, "epoch": epoch})
            self._publish_self()

            def renew():
                period = ld.ttl / 4
                while not done.wait(period):
                    if ld.renew() is False:
                        return
            renewer = threading.Thread(target=renew, name="lockmgr-lease", daemon=True)
            renewer.start()
            peers = self._watch_peers(shard)
            publish_at = self.clock() + 1.0
            check_at = self.clock() + 0.5
            while not self._stop and not ld.lost:
                now = self.clock()
                if self._peers_next is not self._peers_applied:
                    self._apply_peers(shard)
                if ld.valid(now):
                    shard.run_once(max(0, min(MAX_POLL_MS, int((ld.valid_until - now) * 1000))))
                else:
                    time.sleep(0.01)     # etcd unreachable: grant nothing until the lease is renewed
                if now >= publish_at:
                    publish_at = now + 1.0
                    self._publish_self()
                if now >= check_at:
                    check_at = now + 0.5
                    if not self._parent_alive():
                        self._stop = True
            if ld.lost and not self._stop:
                self.stepdowns += 1
                _log.warning("replica %d of shard %d: lost the leadership (epoch %d); stepping down",
                             self.replica, self.index, epoch)
        finally:
            done.set()
            self.role = "standby"
            if peers is not None:
                peers.close()
            self._peers_next = self._peers_applied = None
            if shard is not None:
                shard.close()
            self.shard = None
            rep.close()
            self.replicator = None
            if self._stop:
                ld.resign()
            else:
                ld.lost = True
            if renewer is not None:
                renewer.join(2.0)
            if not self._stop:
                self.bind()
