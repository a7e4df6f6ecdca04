"""A small etcd v3 client over etcd's JSON gateway (HTTP), and an in-memory twin.

Interface:
    EtcdClient(endpoints, timeout=1.0)     endpoints: "http://host:port" or a list / comma-separated
        .grant(ttl) -> lease id            .keepalive(lease) -> TTL left (0: expired)
        .revoke(lease)
        .get(key) -> KV | None             .get_prefix(prefix) -> [KV, ...]
        .put(key, value, lease=0)
        .create(key, value, lease=0) -> bool      put only if the key does not exist
        .cas(key, old, new, lease=0) -> bool      put only if the value is ``old`` (None: absent)
        .put_if_lease(key, value, guard, lease) -> bool   put only while ``guard`` is bound to ``lease``
        .delete(key)
    FakeEtcd(clock)                        the same interface in memory, leases expire by ``clock``
        .down                              True: every call raises EtcdUnavailable (etcd "killed")
    KV(key, value, create_revision, mod_revision, lease)
    EtcdUnavailable                        etcd did not answer (LockError)

Why the gateway and the standard library: etcd 3.4 (Debian's ``etcd-server``)
serves its v3 API as JSON over HTTP (``/v3/kv/range``, ``/v3/kv/txn``,
``/v3/lease/grant``, ``/v3/lease/keepalive``, ...; keys and values base64).
The Python gRPC clients are either unmaintained (python-etcd3: its last
release pins protobuf 3 and an old grpcio) or pull in a Rust or gRPC runtime
for the six calls a leader election needs. ``http.client`` adds no dependency
and works with every etcd from 3.4 on. Keys and values here are str (UTF-8).

The in-memory twin (``FakeEtcd``) has the same semantics for what the
leadership logic uses (revisions, leases bound to keys, compare-and-swap), with
time from an injected clock, so tests can drive an election step by step.
"""

import base64
import http.client
import json
import threading
import urllib.parse
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from ..errors import InvalidRequest, LockError

__all__ = ["EtcdClient", "FakeEtcd", "KV", "EtcdUnavailable", "parse_etcd_endpoints", "Keys", "keys"]


class EtcdUnavailable(LockError):
    """etcd did not answer (down, unreachable, or an error status)."""


class Keys(NamedTuple):
    config: str
    leader: str
    epoch: str
    sync: str
    replicas: str


def keys(cluster: str, shard: int) -> Keys:
    base = f"/lockmgr/{cluster}/"
    s = f"{base}shard/{shard}/"
    return Keys(base + "config", s + "leader", s + "epoch", s + "sync", s + "replica/")


class KV(NamedTuple):
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _unb64(s: str) -> str:
    return base64.b64decode(s).decode()


def _prefix_end(prefix: str) -> str:
    b = bytearray(prefix.encode())
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return base64.b64encode(bytes(b[:i + 1])).decode()
    return base64.b64encode(b"\0").decode()


def parse_etcd_endpoints(endpoints) -> List[Tuple[str, int]]:
    """``http://host:port`` strings (a list or one comma-separated string) -> [(host, port)]."""
    if isinstance(endpoints, str):
        eps = [e.strip() for e in endpoints.split(",") if e.strip()]
    else:
        eps = list(endpoints)
    if not eps:
        raise InvalidRequest("no etcd endpoints given")
    out = []
    for e in eps:
        u = urllib.parse.urlsplit(e) if isinstance(e, str) else None
        if u is None or u.scheme != "http" or not u.hostname or not u.port:
            raise InvalidRequest(f"etcd endpoint must be like http://127.0.0.1:2379; got {e!r}")
        out.append((u.hostname, u.port))
    return out


def _kv(d) -> KV:
    return KV(_unb64(d["key"]), _unb64(d.get("value", "")), int(d.get("create_revision", 0)),
              int(d.get("mod_revision", 0)), int(d.get("lease", 0)))


class EtcdClient:
    """etcd's v3 API over its HTTP/JSON gateway. Thread-safe (one connection per call)."""

    def __init__(self, endpoints, timeout: float = 1.0) -> None:
        self.endpoints = parse_etcd_endpoints(endpoints)
        self.timeout = timeout
        self._good = 0
        self._mu = threading.Lock()

    def _call(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        errors = []
        n = len(self.endpoints)
        start = self._good
        for k in range(n):
            i = (start + k) % n
            host, port = self.endpoints[i]
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
            try:
                conn.request("POST", path, data, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                raw = resp.read()
                if resp.status != 200:
                    errors.append(f"{host}:{port}: HTTP {resp.status} {raw[:200]!r}")
                    continue
                self._good = i
                out = json.loads(raw or b"{}")
                if "result" in out and isinstance(out["result"], dict):   # a streaming call's one answer
                    out = out["result"]
                return out
            except (OSError, http.client.HTTPException, ValueError) as e:
                errors.append(f"{host}:{port}: {e}")
            finally:
                conn.close()
        raise EtcdUnavailable("etcd did not answer: " + "; ".join(errors))

    def grant(self, ttl: float) -> int:
        out = self._call("/v3/lease/grant", {"TTL": max(1, int(round(ttl)))})
        return int(out["ID"])

    def keepalive(self, lease: int) -> int:
        out = self._call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(out.get("TTL", 0))

    def revoke(self, lease: int) -> None:
        try:
            self._call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdUnavailable:
            pass

    def get(self, key: str) -> Optional[KV]:
        out = self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = out.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> List[KV]:
        out = self._call("/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        return [_kv(d) for d in out.get("kvs") or []]

    def put(self, key: str, value: str, lease: int = 0) -> None:
        self._call("/v3/kv/put", {"key": _b64(key), "value": _b64(value), "lease": str(lease)})

    def _txn(self, compare: dict, key: str, value: str, lease: int) -> bool:
        out = self._call("/v3/kv/txn", {
            "compare": [compare],
            "success": [{"requestPut": {"key": _b64(key), "value": _b64(value), "lease": str(lease)}}],
            "failure": []})
        return bool(out.get("succeeded"))

    def create(self, key: str, value: str, lease: int = 0) -> bool:
        return self._txn({"target": "CREATE", "key": _b64(key), "createRevision": "0"}, key, value, lease)

    def cas(self, key: str, old: Optional[str], new: str, lease: int = 0) -> bool:
        if old is None:
            return self.create(key, new, lease)
        return self._txn({"target": "VALUE", "key": _b64(key), "value": _b64(old)}, key, new, lease)

    def put_if_lease(self, key: str, value: str, guard: str, lease: int) -> bool:
        """Put ``key`` only while ``guard`` is bound to ``lease`` (a leader's writes)."""
        return self._txn({"target": "LEASE", "key": _b64(guard), "lease": str(lease)}, key, value, 0)

    def delete(self, key: str) -> None:
        self._call("/v3/kv/deleterange", {"key": _b64(key)})


class FakeEtcd:
    """An in-memory etcd for deterministic tests: the same calls as EtcdClient;
    leases expire when ``clock()`` passes their deadline; ``down = True`` makes
    every call raise EtcdUnavailable."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.down = False
        self.revision = 1
        self._kv: Dict[str, KV] = {}
        self._leases: Dict[int, Tuple[float, float]] = {}   # id -> (deadline, ttl)
        self._next_lease = 1000
        self._mu = threading.Lock()

    def _check(self) -> None:
        if self.down:
            raise EtcdUnavailable("etcd did not answer: (fake) down")
        now = self.clock()
        for lid, (deadline, _ttl) in list(self._leases.items()):
            if deadline <= now:
                del self._leases[lid]
                for k, kv in list(self._kv.items()):
                    if kv.lease == lid:
                        del self._kv[k]
                        self.revision += 1

    def grant(self, ttl: float) -> int:
        with self._mu:
            self._check()
            self._next_lease += 1
            ttl = max(1, int(round(ttl)))
            self._leases[self._next_lease] = (self.clock() + ttl, ttl)
            return self._next_lease

    def keepalive(self, lease: int) -> int:
        with self._mu:
            self._check()
            if lease not in self._leases:
                return 0
            ttl = self._leases[lease][1]
            self._leases[lease] = (self.clock() + ttl, ttl)
            return int(ttl)

    def revoke(self, lease: int) -> None:
        with self._mu:
            self._check()
            if lease in self._leases:
                self._leases[lease] = (self.clock() - 1, 0)
                self._check()

    def get(self, key: str) -> Optional[KV]:
        with self._mu:
            self._check()
            return self._kv.get(key)

    def get_prefix(self, prefix: str) -> List[KV]:
        with self._mu:
            self._check()
            return [kv for k, kv in sorted(self._kv.items()) if k.startswith(prefix)]

    def _put(self, key: str, value: str, lease: int) -> None:
        if lease and lease not in self._leases:
            raise EtcdUnavailable(f"etcd: lease {lease} not found")
        self.revision += 1
        old = self._kv.get(key)
        self._kv[key] = KV(key, value, old.create_revision if old else self.revision, self.revision, lease)

    def put(self, key: str, value: str, lease: int = 0) -> None:
        with self._mu:
            self._check()
            self._put(key, value, lease)

    def create(self, key: str, value: str, lease: int = 0) -> bool:
        with self._mu:
            self._check()
            if key in self._kv:
                return False
            self._put(key, value, lease)
            return True

    def cas(self, key: str, old: Optional[str], new: str, lease: int = 0) -> bool:
        with self._mu:
            self._check()
            cur = self._kv.get(key)
            if (cur.value if cur else None) != old:
                return False
            self._put(key, new, lease)
            return True

    def put_if_lease(self, key: str, value: str, guard: str, lease: int) -> bool:
        with self._mu:
            self._check()
            g = self._kv.get(guard)
            if g is None or g.lease != lease:
                return False
            self._put(key, value, 0)
            return True

    def delete(self, key: str) -> None:
        with self._mu:
            self._check()
            if self._kv.pop(key, None) is not None:
                self.revision += 1
