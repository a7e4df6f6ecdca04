"""Finding each shard's primary (replica sets, docs/replication.md).

Interface:
    EtcdResolver(etcd_endpoints, cluster)     primaries from etcd's leader keys
        .nshards, .partition_depth, .primary(i) -> endpoint | None
        .primaries() -> {i: endpoint}         every shard's, in one read
        .watch(on_change) -> Watcher          a watch on the leader keys (etcd.Watcher)
    ReplicaSetResolver(sets)                  primaries by asking each replica (REPL_ROLE)
        .nshards, .primary(i) -> endpoint | None
    Locator(resolver, engine)                 a thread that re-resolves a shard the engine
        .suspect(i, hint=None)                suspects (no answer, E_NOT_PRIMARY) and has
        .close()                              the engine's socket for it re-pointed

With etcd, the Locator also watches the leader keys: a new primary's endpoint
is applied the moment it is published, before any call to the old one has gone
unanswered (a planned switchover costs the clients no retry interval). The
engine never blocks on a lookup: it calls ``suspect`` (cheap, under its
lock) and the thread calls ``engine.repoint(i, endpoint)``, which the socket
owner applies at its next turn; the calls in flight are then retried (same
session and sequence number) at the new primary, which answers "unknown
session": the client opens its session there and reclaims its locks, as after
a restart (docs/service.md, "Restarts: reclaim and grace").
"""

import json
import threading
import time
from typing import Any, Dict, List, Optional

from ...errors import InvalidRequest, LockError
from .. import wire
from ..etcd import Watcher, is_leader_change, leader_endpoints
from ..routing import check_endpoint

__all__ = ["EtcdResolver", "ReplicaSetResolver", "Locator", "parse_replica_sets"]


def parse_replica_sets(endpoints) -> Optional[List[List[str]]]:
    """A list whose items are lists (one replica set per shard) -> the sets; else None."""
    if isinstance(endpoints, str) or not isinstance(endpoints, (list, tuple)):
        return None
    if not endpoints or not all(isinstance(s, (list, tuple)) for s in endpoints):
        return None
    out = []
    for s in endpoints:
        if not s:
            raise InvalidRequest("a replica set needs at least one endpoint")
        eps = [str(e).strip() for e in s]
        for e in eps:
            check_endpoint(e)
        out.append(eps)
    return out


class EtcdResolver:
    def __init__(self, etcd_endpoints, cluster: str, timeout: float = 1.0) -> None:
        from ..etcd import EtcdClient
        from ..etcd import keys
        if not isinstance(cluster, str) or not cluster or "/" in cluster:
            raise InvalidRequest(f"cluster must be a non-empty name without '/'; got {cluster!r}")
        self.etcd = EtcdClient(etcd_endpoints, timeout=timeout)
        self.cluster = cluster
        self._keys = keys
        kv = self.etcd.get(keys(cluster, 0).config)
        if kv is None:
            raise InvalidRequest(f"no cluster named {cluster!r} in etcd at {etcd_endpoints}")
        cfg = json.loads(kv.value)
        self.nshards = int(cfg["shards"])
        self.partition_depth = int(cfg.get("partition_depth", 2))

    def primary(self, i: int) -> Optional[str]:
        kv = self.etcd.get(self._keys(self.cluster, i).leader)
        return None if kv is None else leader_endpoints([kv], self.cluster).get(i)

    def primaries(self) -> Dict[int, str]:
        return leader_endpoints(self.etcd.get_prefix(self._keys(self.cluster, 0).shards), self.cluster)

    def watch(self, on_change) -> Watcher:
        return Watcher(self.etcd, self._keys(self.cluster, 0).shards, on_change, prefix=True,
                       name="lockmgr-client-watch")


class ReplicaSetResolver:
    def __init__(self, sets: List[List[str]], timeout: float = 0.5) -> None:
        self.sets = sets
        self.nshards = len(sets)
        self.timeout = timeout

    def primary(self, i: int) -> Optional[str]:
        from ..admin import request
        best = None
        for ep in self.sets[i]:
            try:
                r = request(ep, wire.REPL_ROLE, (), timeout=self.timeout)
            except LockError:
                continue
            if isinstance(r, dict) and r.get("role") == "primary":
                if best is None or r.get("epoch", 0) > best[0]:
                    best = (r.get("epoch", 0), ep)
        return best[1] if best else None


class Locator:
    def __init__(self, resolver, engine) -> None:
        self.resolver = resolver
        self.engine = engine
        self._mu = threading.Lock()
        self._todo: Dict[int, Optional[str]] = {}
        self._ev = threading.Event()
        self._closed = False
        self._watch: Dict[int, float] = {}    # shard -> until when it is looked up again
        watch = getattr(resolver, "watch", None)
        self._etcd_watch = watch(self._on_leaders) if watch is not None else None
        self._thread = threading.Thread(target=self._run, name="lockmgr-client-locate", daemon=True)
        self._thread.start()

    WATCH = 5.0          # seconds a suspected shard is looked up again (every POLL) while it keeps its endpoint
    POLL = 0.05

    def suspect(self, i: int, hint: Optional[str] = None) -> None:
        with self._mu:
            if i not in self._todo or hint:
                self._todo[i] = hint
            if i not in self._watch:
                self._watch[i] = time.monotonic() + self.WATCH
        self._ev.set()

    def close(self) -> None:
        self._closed = True
        self._ev.set()

    def _on_leaders(self, events) -> None:
        """(the etcd watcher's thread) Leader keys changed: move to every new primary."""
        if self._closed or self.engine.closed:
            return
        if not is_leader_change(events):
            return
        try:
            eps = self.resolver.primaries()
        except LockError:
            return
        for i, ep in eps.items():
            if 0 <= i < len(self.engine.endpoints) and ep != self.engine.endpoints[i]:
                self.engine.repoint(i, ep)
                with self._mu:
                    self._watch.pop(i, None)

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            if self._etcd_watch is not None:
                self._etcd_watch.close()

    def _loop(self) -> None:
        while not self._closed and not self.engine.closed:
            self._ev.wait(self.POLL if self._watch else 0.5)
            self._ev.clear()
            now = time.monotonic()
            with self._mu:
                todo, self._todo = self._todo, {}
                # a suspected shard is looked up again until its primary moves (the old one's
                # lease has to run out first) or the watch ends
                for i, until in list(self._watch.items()):
                    if now > until:
                        del self._watch[i]
                    else:
                        todo.setdefault(i, None)
            for i, hint in todo.items():
                if self._closed:
                    return
                ep = hint
                if not ep:
                    try:
                        ep = self.resolver.primary(i)
                    except LockError:
                        ep = None
                if ep and ep != self.engine.endpoints[i]:
                    self.engine.repoint(i, ep)
                    with self._mu:
                        self._watch.pop(i, None)


def resolve_endpoints(endpoints, etcd, cluster, timeout: float = 5.0):
    """(endpoints for the engine, resolver or None) from connect()'s arguments."""
    resolver: Any
    if etcd is not None or cluster is not None:
        if etcd is None or cluster is None:
            raise InvalidRequest("connect(etcd=..., cluster=...) needs both the etcd endpoints and the cluster name")
        if endpoints is not None:
            raise InvalidRequest("give either shard endpoints or etcd= and cluster=, not both")
        resolver = EtcdResolver(etcd, cluster)
    else:
        if endpoints is None:
            raise InvalidRequest("connect() needs shard endpoints, or etcd= and cluster=")
        sets = parse_replica_sets(endpoints)
        if sets is None:
            return endpoints, None
        resolver = ReplicaSetResolver(sets)
    deadline = time.monotonic() + timeout
    eps: List[Optional[str]] = [None] * resolver.nshards
    while True:
        for i in range(resolver.nshards):
            if eps[i] is None:
                eps[i] = resolver.primary(i)
        if all(eps):
            return eps, resolver
        if time.monotonic() > deadline:
            from ...errors import ShardUnavailable
            raise ShardUnavailable(f"no primary for shard(s) {[i for i, e in enumerate(eps) if not e]} "
                                   f"within {timeout:g}s")
        time.sleep(0.05)


def attach_resolver(client, resolver) -> None:
    """Have ``client``'s engine follow the primaries ``resolver`` finds."""
    if resolver is None:
        return
    eng = client._eng
    eng.locator = Locator(resolver, eng)
