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
        .watch(key, prefix=False, idle=5.0) -> WatchStream   changes from now on (POST /v3/watch)
    WatchStream
        .next() -> [Event, ...] | None     blocks; None: nothing for ``idle`` s (the stream is then closed);
                                           EtcdUnavailable: the stream broke
        .close()                           (from any thread: a blocked next() returns or raises)
    Watcher(etcd, key, on_change, prefix=False, idle=5.0, retry=0.5)   a thread that keeps a watch open
        on_change(events | None)           None: (re)established or broken -- read the state again
        .healthy, .close()
    FakeEtcd(clock)                        the same interface in memory, leases expire by ``clock``
        .down                              True: every call raises EtcdUnavailable (etcd "killed")
        .tick()                            expire the leases due by ``clock()`` now (their keys' watchers hear it)
    get_json(etcd, key) -> value | None    a key's JSON value (None: absent or not JSON)
    leader_endpoints(kvs, cluster) -> {shard: endpoint}   the primaries, from the kvs under keys().shards
    is_leader_change(events) -> bool       a Watcher ring over keys().shards that may have moved a primary
    KV(key, value, create_revision, mod_revision, lease)
    Event(type, kv)                        type "PUT" or "DELETE" (a DELETE's kv has the key, value "")
    EtcdUnavailable                        etcd did not answer (LockError)

Why the gateway and the standard library: etcd 3.4 (Debian's ``etcd-server``)
serves its v3 API as JSON over HTTP (``/v3/kv/range``, ``/v3/kv/txn``,
``/v3/lease/grant``, ``/v3/lease/keepalive``, ...; keys and values base64).
The Python gRPC clients are either unmaintained (python-etcd3: its last
release pins protobuf 3 and an old grpcio) or pull in a Rust or gRPC runtime
for the six calls a leader election needs. ``http.client`` adds no dependency
and works with every etcd from 3.4 on. Keys and values here are str (UTF-8).

Watches: ``POST /v3/watch`` with a create request keeps the HTTP response
open and streams one JSON object a line (chunked): ``{"result": {"created":
true}}`` first, then ``{"result": {"events": [...]}}`` per revision (a PUT
event has no ``type``; a DELETE, a lease expiry included, has ``"DELETE"``).
The ``Watcher`` treats a watch as a doorbell, not as the data: it calls
``on_change(None)`` whenever a stream is (re)established, so the consumer
reads the state again after the watch exists and misses nothing between its
last read and the first event (no revision bookkeeping); it reopens a stream
idle for ``idle`` seconds (a connection that died silently is noticed), and
while no stream can be opened it rings every ``retry`` seconds, so the
consumer falls back to polling at that rate.

The in-memory twin (``FakeEtcd``) has the same semantics for what the
leadership logic uses (revisions, leases bound to keys, compare-and-swap), with
time from an injected clock, so tests can drive an election step by step.
"""

import base64
import http.client
import json
import queue
import socket
import threading
import urllib.parse
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from ..errors import InvalidRequest, LockError

__all__ = ["EtcdClient", "FakeEtcd", "KV", "Event", "WatchStream", "Watcher", "EtcdUnavailable",
           "parse_etcd_endpoints", "Keys", "keys", "get_json", "leader_endpoints", "is_leader_change"]


class EtcdUnavailable(LockError):
    """etcd did not answer (down, unreachable, or an error status)."""


class Keys(NamedTuple):
    config: str
    leader: str
    epoch: str
    sync: str
    replicas: str       # prefix of this shard's replica status keys (for operators; rewritten every second)
    shards: str         # prefix of every shard's leader, epoch and sync keys (changes only at failovers)


def keys(cluster: str, shard: int) -> Keys:
    base = f"/lockmgr/{cluster}/"
    s = f"{base}shard/{shard}/"
    return Keys(base + "config", s + "leader", s + "epoch", s + "sync", f"{base}replica/{shard}/", base + "shard/")


def get_json(etcd, key: str) -> Any:
    """``key``'s value decoded from JSON; None if the key is absent or not JSON."""
    kv = etcd.get(key)
    if kv is None:
        return None
    try:
        return json.loads(kv.value)
    except ValueError:
        return None


def leader_endpoints(kvs: Sequence["KV"], cluster: str) -> Dict[int, str]:
    """{shard: its primary's client endpoint} from the keys under ``keys(cluster, 0).shards``
    (the leader keys that carry an endpoint; a leader still starting has none)."""
    base = keys(cluster, 0).shards
    out: Dict[int, str] = {}
    for kv in kvs:
        parts = kv.key[len(base):].split("/") if kv.key.startswith(base) else ()
        if len(parts) != 2 or parts[1] != "leader" or not parts[0].isdigit():
            continue
        try:
            ep = json.loads(kv.value).get("endpoint")
        except (ValueError, AttributeError):
            continue
        if isinstance(ep, str) and ep:
            out[int(parts[0])] = ep
    return out


def is_leader_change(events: Optional[Sequence["Event"]]) -> bool:
    """A Watcher's ring (over ``shards``) that may have moved a primary: None or a leader key's event."""
    return events is None or any(e.kv.key.endswith("/leader") for e in events)


class KV(NamedTuple):
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int


class Event(NamedTuple):
    type: str           # "PUT" or "DELETE"
    kv: KV


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


def _event(d) -> Event:
    return Event(d.get("type") or "PUT", _kv(d["kv"]))


class WatchStream:
    """One open watch over the gateway (``EtcdClient.watch``): one HTTP response
    that streams a JSON object a line."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, where: str) -> None:
        self._conn = conn
        self._resp = resp
        self.where = where
        self.closed = False

    def next(self) -> Optional[List[Event]]:
        """The next batch of events (``[]``: the stream's "created" message);
        None when nothing came for the idle timeout (the stream is closed then);
        EtcdUnavailable when the stream broke or was closed."""
        if self.closed:
            raise EtcdUnavailable(f"etcd watch at {self.where}: closed")
        try:
            line = self._resp.readline()
        except socket.timeout:
            self.close()
            return None
        except Exception as e:   # OSError, HTTPException; or http.client's own state after close() from another thread
            self.close()
            raise EtcdUnavailable(f"etcd watch at {self.where} broke: {e!r}") from None
        try:
            if not line:
                raise ValueError("the stream ended")
            out = json.loads(line)
            if "error" in out:
                raise ValueError(str(out["error"])[:200])
            r = out.get("result") or {}
            if r.get("canceled"):
                raise ValueError(f"canceled: {r.get('cancel_reason', '')}")
            return [_event(e) for e in r.get("events") or []]
        except (ValueError, KeyError, TypeError) as e:
            self.close()
            raise EtcdUnavailable(f"etcd watch at {self.where}: {e}") from None

    def close(self) -> None:
        """End the stream (from any thread: a blocked ``next()`` then raises)."""
        self.closed = True
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._conn.close()


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

    def watch(self, key: str, prefix: bool = False, idle: float = 5.0) -> WatchStream:
        """A stream of the changes to ``key`` (every key under it with ``prefix``)
        from now on; its ``next()`` returns None after ``idle`` seconds without one."""
        req: Dict[str, str] = {"key": _b64(key)}
        if prefix:
            req["range_end"] = _prefix_end(key)
        data = json.dumps({"create_request": req}).encode()
        errors = []
        n = len(self.endpoints)
        for k in range(n):
            i = (self._good + k) % n
            host, port = self.endpoints[i]
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
            try:
                conn.request("POST", "/v3/watch", data, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                if resp.status != 200:
                    errors.append(f"{host}:{port}: HTTP {resp.status} {resp.read(200)!r}")
                    conn.close()
                    continue
                stream = WatchStream(conn, resp, f"{host}:{port}")
                if stream.next() is None:            # the "created" message, within the call timeout
                    raise OSError("no answer to the watch request")
                assert conn.sock is not None
                conn.sock.settimeout(idle)
                self._good = i
                return stream
            except (OSError, http.client.HTTPException, EtcdUnavailable) as e:
                errors.append(f"{host}:{port}: {e}")
                conn.close()
        raise EtcdUnavailable("etcd did not answer: " + "; ".join(errors))


class Watcher:
    """Keeps a watch on ``key`` (or every key under it, ``prefix``) open in a
    thread and calls ``on_change(events)`` for each batch of changes, and
    ``on_change(None)`` whenever the stream is (re)established or broken: the
    consumer then reads the state again (the watch is a doorbell; see the
    module docstring). While no stream can be opened, it rings every ``retry``
    seconds (the consumer's slow poll); a stream idle for ``idle`` seconds is
    reopened. ``on_change`` runs on the watcher's thread."""

    def __init__(self, etcd, key: str, on_change: Callable[[Optional[Sequence[Event]]], None], *,
                 prefix: bool = False, idle: float = 5.0, retry: float = 0.5, name: str = "lockmgr-etcd-watch") -> None:
        self.etcd = etcd
        self.key = key
        self.prefix = prefix
        self.on_change = on_change
        self.idle = idle
        self.retry = retry
        self.healthy = False
        self.streams = 0                 # streams opened (a test can see a reconnect)
        self._closed = threading.Event()
        self._stream: Optional[WatchStream] = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _ring(self, events: Optional[Sequence[Event]]) -> None:
        try:
            self.on_change(events)
        except Exception:        # the consumer's bug must not end the watch
            import logging
            logging.getLogger("lockmgr.etcd").exception("etcd watch callback failed")

    def _run(self) -> None:
        closed = self._closed
        while not closed.is_set():
            try:
                stream = self.etcd.watch(self.key, prefix=self.prefix, idle=self.idle)
            except EtcdUnavailable:
                self.healthy = False
                self._ring(None)            # the slow poll while etcd cannot be watched
                closed.wait(self.retry)
                continue
            self._stream = stream
            try:
                if closed.is_set():
                    break
                self.streams += 1
                self.healthy = True
                self._ring(None)            # read again: nothing between that read and the first event is missed
                while True:
                    events = stream.next()
                    if events is None:      # idle: reopen (a silently dead connection is noticed this way)
                        break
                    if events:
                        self._ring(events)
            except EtcdUnavailable:
                if closed.is_set():
                    break
                self.healthy = False
                self._ring(None)
                closed.wait(self.retry)
            finally:
                self._stream = None
                stream.close()

    def close(self, timeout: float = 2.0) -> None:
        self._closed.set()
        s = self._stream
        if s is not None:
            s.close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


_BROKEN = object()


class _FakeStream:
    """FakeEtcd's WatchStream: events pushed by the fake's writes."""

    def __init__(self, key: str, prefix: bool, idle: float) -> None:
        self.key = key
        self.prefix = prefix
        self.idle = idle
        self.where = "fake"
        self.closed = False
        self.q: "queue.Queue[object]" = queue.Queue()

    def matches(self, key: str) -> bool:
        return key.startswith(self.key) if self.prefix else key == self.key

    def next(self) -> Optional[List[Event]]:
        if self.closed:
            raise EtcdUnavailable("etcd watch (fake): closed")
        try:
            item = self.q.get(timeout=self.idle)
        except queue.Empty:
            self.closed = True
            return None
        if item is _BROKEN:
            self.closed = True
            raise EtcdUnavailable("etcd watch (fake): broken")
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self.closed = True
        self.q.put(_BROKEN)


class FakeEtcd:
    """An in-memory etcd for deterministic tests: the same calls as EtcdClient;
    leases expire when ``clock()`` passes their deadline (at the next call, or
    ``tick()``); ``down = True`` makes every call raise EtcdUnavailable and
    breaks every watch stream."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._down = False
        self.revision = 1
        self._kv: Dict[str, KV] = {}
        self._leases: Dict[int, Tuple[float, float]] = {}   # id -> (deadline, ttl)
        self._next_lease = 1000
        self._mu = threading.Lock()
        self._streams: List[_FakeStream] = []

    @property
    def down(self) -> bool:
        return self._down

    @down.setter
    def down(self, v: bool) -> None:
        with self._mu:
            self._down = bool(v)
            if v:
                for st in self._streams:
                    st.close()
                self._streams = []

    def _notify(self, typ: str, kv: KV) -> None:
        live = []
        for st in self._streams:
            if st.closed:
                continue
            live.append(st)
            if st.matches(kv.key):
                st.q.put([Event(typ, kv)])
        self._streams = live

    def _check(self) -> None:
        if self._down:
            raise EtcdUnavailable("etcd did not answer: (fake) down")
        now = self.clock()
        for lid, (deadline, _ttl) in list(self._leases.items()):
            if deadline <= now:
                del self._leases[lid]
                for k, kv in list(self._kv.items()):
                    if kv.lease == lid:
                        del self._kv[k]
                        self.revision += 1
                        self._notify("DELETE", KV(k, "", 0, self.revision, 0))

    def tick(self) -> None:
        with self._mu:
            self._check()

    def watch(self, key: str, prefix: bool = False, idle: float = 5.0) -> _FakeStream:
        with self._mu:
            self._check()
            st = _FakeStream(key, prefix, idle)
            self._streams.append(st)
            return st

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
        self._kv[key] = kv = KV(key, value, old.create_revision if old else self.revision, self.revision, lease)
        self._notify("PUT", kv)

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
                self._notify("DELETE", KV(key, "", 0, self.revision, 0))
