"""ReplicatedCluster: ``LocalCluster(shards=N, replicas=R)`` with R >= 2 -- its own
etcd and R replica processes per shard, all on 127.0.0.1.

Interface (besides LocalCluster's connect/stop/context manager):
    .etcd_url, .cluster_name, .replicas
    .endpoints              [[replica endpoint, ...] per shard] (replica sets, for connect())
    .primary(i) -> j        the replica currently serving shard i (from etcd)
    .wait_primary(i, timeout, exclude=None) -> j
    .in_sync(i), .wait_in_sync(i, timeout)   every running standby of shard i in the sync set
    .pid(i, replica=None)   that replica's PID (default: the primary)
    .kill(i, wipe=False, replica=None)   SIGKILL shard i's primary (or ``replica``); wipe: delete its data dir
    .restart(i, replica=j)  start replica j again (a standby if another is primary)
    .stop_etcd(), .start_etcd()   etcd down / back (tests)
    .replica_dir(i, j)
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, List, Optional

from ..errors import InvalidRequest, ShardUnavailable

__all__ = ["ReplicatedCluster", "start_etcd", "etcd_binary"]


def etcd_binary() -> str:
    path = shutil.which("etcd")
    if path is None:
        raise ShardUnavailable("replicas >= 2 needs the etcd binary on PATH: install Debian's etcd-server "
                               "package (apt-get install etcd-server)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_etcd(data_dir: str, timeout: float = 20.0):
    """Start a one-member etcd on free 127.0.0.1 ports; returns (Popen, client url)."""
    binary = etcd_binary()
    cport, pport = _free_port(), _free_port()
    url = f"http://127.0.0.1:{cport}"
    peer = f"http://127.0.0.1:{pport}"
    os.makedirs(data_dir, exist_ok=True)
    log = open(os.path.join(data_dir, "etcd.log"), "ab")
    p = subprocess.Popen([binary, "--name", "lockmgr", "--data-dir", os.path.join(data_dir, "data"),
                          "--listen-client-urls", url, "--advertise-client-urls", url,
                          "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                          "--initial-cluster", f"lockmgr={peer}", "--log-level", "warn",
                          # a one-member etcd on loopback: short raft timers allow leases down to ~1 s
                          "--heartbeat-interval", "50", "--election-timeout", "500"],
                         stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    from .etcd import EtcdClient, EtcdUnavailable
    c = EtcdClient(url, timeout=0.5)
    deadline = time.monotonic() + timeout
    while True:
        try:
            c.get("/lockmgr-ping")
            return p, url
        except EtcdUnavailable:
            if p.poll() is not None or time.monotonic() > deadline:
                p.kill()
                p.wait()
                raise ShardUnavailable(f"etcd did not start (log: {os.path.join(data_dir, 'etcd.log')})") from None
            time.sleep(0.05)


class ReplicatedCluster:
    def __init__(self, shards: int = 3, *, replicas: int = 2, data_dir: Optional[str] = None,
                 partition_depth: int = 2, start_timeout: float = 20.0, grace: Optional[float] = None,
                 lease_ttl: float = 2.0, sync_standbys: Optional[int] = None, sync_timeout: float = 1.0,
                 on_standby_loss: str = "degrade", cluster: Optional[str] = None, **_ignored: Any) -> None:
        if type(shards) is not int or not 1 <= shards <= 64:
            raise InvalidRequest(f"shards must be an int in 1..64; got {shards!r}")
        if type(replicas) is not int or not 2 <= replicas <= 9:
            raise InvalidRequest(f"replicas must be an int in 1..9; got {replicas!r}")
        if sync_standbys is not None and (type(sync_standbys) is not int or not 0 <= sync_standbys < replicas):
            raise InvalidRequest(f"sync_standbys must be None or an int in 0..{replicas - 1}; got {sync_standbys!r}")
        if on_standby_loss not in ("degrade", "fail"):
            raise InvalidRequest(f"on_standby_loss must be 'degrade' or 'fail'; got {on_standby_loss!r}")
        etcd_binary()
        self.nshards = shards
        self.replicas = replicas
        self.partition_depth = partition_depth
        self.start_timeout = start_timeout
        self.grace = grace
        self.lease_ttl = lease_ttl
        self.sync_standbys = replicas - 1 if sync_standbys is None else sync_standbys
        self.sync_timeout = sync_timeout
        self.on_standby_loss = on_standby_loss
        self.cluster_name = cluster or "c" + secrets.token_hex(4)
        self.cluster_key = secrets.token_hex(16)     # shard-to-shard messages carry it (as LocalCluster's)
        self._own_dir = data_dir is None
        self.data_dir = tempfile.mkdtemp(prefix="lockmgr-repl-") if data_dir is None else data_dir
        os.makedirs(self.data_dir, exist_ok=True)
        self._stopped = False
        self._procs: List[List[Any]] = [[None] * replicas for _ in range(shards)]
        self.endpoints: List[List[str]] = [["tcp://127.0.0.1:0"] * replicas for _ in range(shards)]
        self._etcd = None
        self.etcd_url: str = ""
        try:
            self.start_etcd()
            from .etcd import EtcdClient
            self.etcd = EtcdClient(self.etcd_url, timeout=0.5)
            for i in range(shards):
                for j in range(replicas):
                    self._start(i, j)
            for i in range(shards):
                self.wait_primary(i, start_timeout)
            for i in range(shards):      # every standby in the sync set: a failover can happen at once
                self.wait_in_sync(i, start_timeout)
        except BaseException:
            self.stop()
            raise

    # -- etcd

    def start_etcd(self) -> None:
        d = os.path.join(self.data_dir, "etcd")
        if self.etcd_url:
            # again on the same port (the replicas know it)
            port = int(self.etcd_url.rsplit(":", 1)[1])
            self._etcd = self._start_etcd_at(d, port)
            return
        self._etcd, self.etcd_url = start_etcd(d, self.start_timeout)

    def _start_etcd_at(self, d: str, port: int):
        binary = etcd_binary()
        url = f"http://127.0.0.1:{port}"
        pport = _free_port()
        peer = f"http://127.0.0.1:{pport}"
        log = open(os.path.join(d, "etcd.log"), "ab")
        p = subprocess.Popen([binary, "--name", "lockmgr", "--data-dir", os.path.join(d, "data"),
                              "--listen-client-urls", url, "--advertise-client-urls", url,
                              "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                              "--initial-cluster", f"lockmgr={peer}", "--log-level", "warn",
                          # a one-member etcd on loopback: short raft timers allow leases down to ~1 s
                          "--heartbeat-interval", "50", "--election-timeout", "500"],
                             stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        from .etcd import EtcdUnavailable
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                self.etcd.get("/lockmgr-ping")
                return p
            except EtcdUnavailable:
                if p.poll() is not None or time.monotonic() > deadline:
                    raise ShardUnavailable("etcd did not restart") from None
                time.sleep(0.05)

    def stop_etcd(self) -> None:
        """SIGKILL etcd (tests: etcd lost)."""
        if self._etcd is not None and self._etcd.poll() is None:
            self._etcd.kill()
            self._etcd.wait()

    @property
    def etcd_pid(self) -> Optional[int]:
        return self._etcd.pid if self._etcd is not None and self._etcd.poll() is None else None

    # -- replicas

    def replica_dir(self, i: int, j: int) -> str:
        return os.path.join(self.data_dir, f"shard{i}", f"replica{j}")

    def _start(self, i: int, j: int) -> None:
        d = self.replica_dir(i, j)
        os.makedirs(d, exist_ok=True)
        log = open(os.path.join(os.path.dirname(d), f"replica{j}.log"), "ab")
        cmd = [sys.executable, "-m", "lockmgr", "replica", "--etcd", self.etcd_url, "--cluster", self.cluster_name,
               "--shard", str(i), "--shards", str(self.nshards), "--replica", str(j),
               "--replicas", str(self.replicas), "--endpoint", self.endpoints[i][j], "--data-dir", d,
               "--partition-depth", str(self.partition_depth), "--lease-ttl", str(self.lease_ttl),
               "--sync-standbys", str(self.sync_standbys), "--sync-timeout", str(self.sync_timeout),
               "--on-standby-loss", self.on_standby_loss, "--parent-pid", str(os.getpid())]
        if self.grace is not None:
            cmd += ["--grace", str(self.grace)]
        env = dict(os.environ)
        env["LOCKMGR_CLUSTER_KEY"] = self.cluster_key
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env)
        log.close()
        self._procs[i][j] = p
        assert p.stdout is not None
        line = b""
        deadline = time.monotonic() + self.start_timeout
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        try:
            while b"\n" not in line and time.monotonic() < deadline and p.poll() is None:
                if sel.select(0.2):
                    chunk = os.read(p.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    line += chunk
        finally:
            sel.close()
        if not line.startswith(b"READY "):
            p.kill()
            p.wait()
            raise ShardUnavailable(f"replica {j} of shard {i} did not start: see "
                                   f"{os.path.join(os.path.dirname(d), f'replica{j}.log')}")
        self.endpoints[i][j] = line.split()[1].decode()

    def _leader(self, i: int):
        from .etcd import keys
        kv = self.etcd.get(keys(self.cluster_name, i).leader)
        if kv is None:
            return None
        v = json.loads(kv.value)
        return v if v.get("endpoint") else None

    def primary(self, i: int) -> Optional[int]:
        """The replica index serving shard ``i`` now (None during an election)."""
        v = self._leader(i)
        return None if v is None else v["replica"]

    def wait_primary(self, i: int, timeout: float = 10.0, exclude: Optional[int] = None) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                j = self.primary(i)
            except Exception:
                j = None
            if j is not None and j != exclude:
                return j
            if time.monotonic() > deadline:
                raise ShardUnavailable(f"shard {i} has no primary after {timeout:g}s")
            time.sleep(0.02)

    def in_sync(self, i: int) -> bool:
        """True if shard ``i`` has a primary and every running standby is in its sync set."""
        from . import wire
        from .admin import request
        from ..errors import LockError
        j = self.primary(i)
        if j is None:
            return False
        try:
            r = request(self.endpoints[i][j], wire.REPL_ROLE, (), timeout=1.0)
        except LockError:
            return False
        running = sum(1 for k, p in enumerate(self._procs[i]) if k != j and p is not None and p.poll() is None)
        fol = [f for f in (r.get("replication") or {}).get("followers", []) if f["in_sync"]]
        return len(fol) >= running

    def wait_in_sync(self, i: int, timeout: float = 10.0) -> None:
        """Wait until every running standby of shard ``i`` is in its sync set."""
        deadline = time.monotonic() + timeout
        while not self.in_sync(i):
            if time.monotonic() > deadline:
                raise ShardUnavailable(f"shard {i}: standbys not in sync after {timeout:g}s")
            time.sleep(0.02)

    def pid(self, i: int, replica: Optional[int] = None) -> Optional[int]:
        j = self.primary(i) if replica is None else replica
        if j is None:
            return None
        p = self._procs[i][j]
        return p.pid if p is not None and p.poll() is None else None

    @property
    def pids(self) -> List[List[Optional[int]]]:
        return [[p.pid if p is not None and p.poll() is None else None for p in row] for row in self._procs]

    def kill(self, i: int, wipe: bool = False, replica: Optional[int] = None) -> Optional[int]:
        """SIGKILL shard ``i``'s primary (or ``replica``); with ``wipe`` delete its data
        directory too (the machine is lost). Returns the replica index killed."""
        j = self.primary(i) if replica is None else replica
        if j is None:
            return None
        p = self._procs[i][j]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
        if p is not None and p.stdout:
            p.stdout.close()
        if wipe:
            shutil.rmtree(self.replica_dir(i, j), ignore_errors=True)
        return j

    def restart(self, i: int, replica: int) -> None:
        """Start replica ``replica`` of shard ``i`` again (a standby if another is primary)."""
        p = self._procs[i][replica]
        if p is not None and p.poll() is None:
            self.kill(i, replica=replica)
        self._start(i, replica)

    def connect(self, **kw: Any):
        from .client.sync import connect
        kw.setdefault("partition_depth", self.partition_depth)
        return connect(etcd=self.etcd_url, cluster=self.cluster_name, **kw)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        procs = [p for row in self._procs for p in row if p is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout:
                p.stdout.close()
        if self._etcd is not None and self._etcd.poll() is None:
            self._etcd.terminate()
            try:
                self._etcd.wait(5)
            except subprocess.TimeoutExpired:
                self._etcd.kill()
                self._etcd.wait()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "ReplicatedCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        try:
            self.stop()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<LocalCluster shards={self.nshards} replicas={self.replicas} etcd={getattr(self, 'etcd_url', None)}>"
