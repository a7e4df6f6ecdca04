"""ReplicatedCluster: ``LocalCluster(shards=N, replicas=R)`` with R >= 2 -- its own
etcd and R replica processes per shard, all on 127.0.0.1.

Interface (besides LocalCluster's connect/stop/context manager):
    ReplicatedCluster(shards=3, *, replicas=2, data_dir=None, partition_depth=2, start_timeout=20.0,
                      grace=None, lease_ttl=2.0, sync_standbys=None, sync_timeout=1.0,
                      on_standby_loss="degrade", cluster=None, probe_delay=0.010, probe_interval=None)
    .etcd_url, .cluster_name, .replicas
    .endpoints              [[replica endpoint, ...] per shard] (replica sets, for connect())
    .primary(i) -> j        the replica currently serving shard i (from etcd)
    .wait_primary(i, timeout, exclude=None) -> j     (watches the leader key)
    .in_sync(i), .wait_in_sync(i, timeout)   every running standby of shard i in the sync set (etcd's)
    .peers_current(i), .wait_peers(timeout)  the primaries' probe peers are every shard's primary
    .pid(i, replica=None)   that replica's PID (default: the primary)
    .leader(i) -> {replica, endpoint, repl, epoch} | None   shard i's leader key (a primary that serves)
    .kill(i, wipe=False, replica=None)   SIGKILL shard i's primary (or ``replica``); wipe: delete its data dir
    .terminate(i, replica=None)          SIGTERM it (a clean stop: the primary revokes its lease)
    .restart(i, replica=j)  start replica j again (a standby if another is primary)
    .stop_etcd(), .start_etcd()   etcd down / back (tests)
    .replica_dir(i, j)
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from ..errors import InvalidRequest, LockError, ShardUnavailable
from .cluster import ProcessCluster, terminate
from .etcd import get_json, keys
from .probes import DEFAULT_PROBE_DELAY

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


def start_etcd(data_dir: str, timeout: float = 20.0, port: Optional[int] = None):
    """Start a one-member etcd on 127.0.0.1 (its client port: ``port``, or a free one)
    with its data and log in ``data_dir``; returns (Popen, client url) once it answers."""
    from .etcd import EtcdClient, EtcdUnavailable
    binary = etcd_binary()
    url = f"http://127.0.0.1:{port or _free_port()}"
    peer = f"http://127.0.0.1:{_free_port()}"
    os.makedirs(data_dir, exist_ok=True)
    log_path = os.path.join(data_dir, "etcd.log")
    with open(log_path, "ab") as log:
        p = subprocess.Popen([binary, "--name", "lockmgr", "--data-dir", os.path.join(data_dir, "data"),
                              "--listen-client-urls", url, "--advertise-client-urls", url,
                              "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                              "--initial-cluster", f"lockmgr={peer}", "--log-level", "warn",
                              # a one-member etcd on loopback: short raft timers allow leases down to ~1 s
                              "--heartbeat-interval", "50", "--election-timeout", "500"],
                             stdout=log, stderr=log, stdin=subprocess.DEVNULL)
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
                raise ShardUnavailable(f"etcd did not start (log: {log_path})") from None
            time.sleep(0.05)      # (etcd has no readiness signal but its answer)


class ReplicatedCluster(ProcessCluster):
    def __init__(self, shards: int = 3, *, replicas: int = 2, data_dir: Optional[str] = None,
                 partition_depth: int = 2, start_timeout: float = 20.0, grace: Optional[float] = None,
                 lease_ttl: float = 2.0, sync_standbys: Optional[int] = None, sync_timeout: float = 1.0,
                 on_standby_loss: str = "degrade", cluster: Optional[str] = None,
                 probe_delay: Optional[float] = DEFAULT_PROBE_DELAY, probe_interval: Optional[float] = None,
                 **other: Any) -> None:
        if type(shards) is not int or not 1 <= shards <= 64:
            raise InvalidRequest(f"shards must be an int in 1..64; got {shards!r}")
        if type(replicas) is not int or not 2 <= replicas <= 9:
            raise InvalidRequest(f"replicas must be an int in 1..9; got {replicas!r}")
        if sync_standbys is not None and (type(sync_standbys) is not int or not 0 <= sync_standbys < replicas):
            raise InvalidRequest(f"sync_standbys must be None or an int in 0..{replicas - 1}; got {sync_standbys!r}")
        if on_standby_loss not in ("degrade", "fail"):
            raise InvalidRequest(f"on_standby_loss must be 'degrade' or 'fail'; got {on_standby_loss!r}")
        # LocalCluster's options that replica sets do not implement: refused, never dropped
        # (a cluster asked to be secure must not start plain)
        unsupported = sorted(k for k, v in other.items() if v is not None and v is not False)
        if unsupported:
            raise InvalidRequest(f"LocalCluster(replicas={replicas}) does not support {', '.join(unsupported)} "
                                 f"(replica sets: docs/replication.md)")
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
        # cross-shard deadlock probes (docs/probes.md); each primary finds its peers in etcd
        self.probe_delay = probe_delay
        self.probe_interval = probe_interval
        self.cluster_name = cluster or "c" + secrets.token_hex(4)
        self.cluster_key = secrets.token_hex(16)     # shard-to-shard messages carry it (as LocalCluster's)
        self._own_dir = data_dir is None
        self.data_dir = tempfile.mkdtemp(prefix="lockmgr-repl-") if data_dir is None else data_dir
        os.makedirs(self.data_dir, exist_ok=True)
        self._stopped = False
        self._procs: List[List[Any]] = [[None] * replicas for _ in range(shards)]
        self.endpoints: List[List[str]] = [["tcp://127.0.0.1:0"] * replicas for _ in range(shards)]
        self._members: List[List[str]] = [[""] * replicas for _ in range(shards)]   # "replica:incarnation"
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
            self.wait_peers(start_timeout)
        except BaseException:
            self.stop()
            raise

    # -- etcd

    def start_etcd(self) -> None:
        """Start the cluster's etcd (again on the same port: the replicas know it)."""
        port = int(self.etcd_url.rsplit(":", 1)[1]) if self.etcd_url else None
        self._etcd, self.etcd_url = start_etcd(os.path.join(self.data_dir, "etcd"), self.start_timeout, port)

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
        log_path = os.path.join(os.path.dirname(d), f"replica{j}.log")
        cmd = [sys.executable, "-m", "lockmgr", "replica", "--etcd", self.etcd_url, "--cluster", self.cluster_name,
               "--shard", str(i), "--shards", str(self.nshards), "--replica", str(j),
               "--replicas", str(self.replicas), "--endpoint", self.endpoints[i][j], "--data-dir", d,
               "--partition-depth", str(self.partition_depth), "--lease-ttl", str(self.lease_ttl),
               "--sync-standbys", str(self.sync_standbys), "--sync-timeout", str(self.sync_timeout),
               "--on-standby-loss", self.on_standby_loss,
               "--probe-delay-ms", str(-1 if self.probe_delay is None else self.probe_delay * 1000),
               "--parent-pid", str(os.getpid())]
        if self.probe_interval is not None:
            cmd += ["--probe-interval-ms", str(self.probe_interval * 1000)]
        if self.grace is not None:
            cmd += ["--grace", str(self.grace)]
        env = dict(os.environ)
        env["LOCKMGR_CLUSTER_KEY"] = self.cluster_key
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(log_path, "ab") as log:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env)
        self._procs[i][j] = p
        # "READY tcp://127.0.0.1:PORT replica=J incarnation=INC"
        line = self._read_ready(p, f"replica {j} of shard {i}", log_path).split()
        self.endpoints[i][j] = line[1]
        self._members[i][j] = f"{j}:" + next(w[12:] for w in line if w.startswith("incarnation="))

    def leader(self, i: int) -> Optional[Dict[str, Any]]:
        """Shard ``i``'s leader key once its primary serves: {replica, endpoint, repl, epoch}."""
        v = get_json(self.etcd, keys(self.cluster_name, i).leader)
        return v if v is not None and v.get("endpoint") else None

    def _wait_etcd(self, key: str, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        """``pred()`` once true, evaluated at each change of etcd's ``key`` (a watch; every
        0.2 s while etcd cannot be watched); ShardUnavailable after ``timeout`` s."""
        from .etcd import Watcher
        bell = threading.Event()
        w = Watcher(self.etcd, key, lambda _events: bell.set(), retry=0.2, name="lockmgr-cluster-wait")
        try:
            deadline = time.monotonic() + timeout
            while True:
                bell.clear()
                try:
                    v = pred()
                except LockError:
                    v = None
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0 or not bell.wait(left):
                    raise ShardUnavailable(f"{what} after {timeout:g}s")
        finally:
            w.close()

    def primary(self, i: int) -> Optional[int]:
        """The replica index serving shard ``i`` now (None during an election)."""
        v = self.leader(i)
        return None if v is None else v["replica"]

    def wait_primary(self, i: int, timeout: float = 10.0, exclude: Optional[int] = None) -> int:
        """The replica serving shard ``i`` once there is one (other than ``exclude``)."""
        def found():
            j = self.primary(i)
            return None if j is None or j == exclude else (j,)
        return self._wait_etcd(keys(self.cluster_name, i).leader, found, timeout, f"shard {i} has no primary")[0]

    def in_sync(self, i: int) -> bool:
        """True if shard ``i`` has a primary and every running standby is in its sync set
        (in etcd: such a standby may take over at once)."""
        k = keys(self.cluster_name, i)
        leader = self.leader(i)
        sync = get_json(self.etcd, k.sync)
        if leader is None or sync is None or sync.get("epoch") != leader.get("epoch"):
            return False
        members = set(sync.get("members", []))
        return all(self._members[i][j] in members for j, p in enumerate(self._procs[i])
                   if p is not None and p.poll() is None)

    def wait_in_sync(self, i: int, timeout: float = 10.0) -> None:
        """Wait until every running standby of shard ``i`` is in its sync set."""
        self._wait_etcd(keys(self.cluster_name, i).sync, lambda: self.in_sync(i), timeout,
                        f"shard {i}: standbys not in sync")

    def peers_current(self, i: int) -> bool:
        """True if shard ``i``'s primary sends its deadlock probes to every shard's
        current primary (its peer list, from etcd, is up to date)."""
        from . import wire
        from .admin import request
        eps = []
        for k in range(self.nshards):
            v = self.leader(k)
            if v is None:
                return False
            eps.append(v["endpoint"])
        try:
            role = request(eps[i], wire.REPL_ROLE, (), timeout=1.0)
        except LockError:
            return False
        return role.get("peers") == eps

    def wait_peers(self, timeout: float = 10.0) -> None:
        """Wait until every primary knows every other's endpoint (after a start or a failover;
        a no-op without probes). Polls REPL_ROLE (a shard's own state has no event to watch)."""
        if self.probe_delay is None or self.nshards < 2:
            return
        deadline = time.monotonic() + timeout
        while not all(self.peers_current(i) for i in range(self.nshards)):
            if time.monotonic() > deadline:
                raise ShardUnavailable(f"the primaries do not know each other's endpoints after {timeout:g}s")
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

    def terminate(self, i: int, replica: Optional[int] = None) -> Optional[int]:
        """SIGTERM shard ``i``'s primary (or ``replica``) and wait for its exit: a clean
        stop, in which a primary revokes its lease (a switchover). Returns the replica."""
        j = self.primary(i) if replica is None else replica
        p = None if j is None else self._procs[i][j]
        if p is None:
            return None
        terminate([p], self.start_timeout)
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
        terminate([p for row in self._procs for p in row if p is not None])
        if self._etcd is not None:
            terminate([self._etcd])
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<LocalCluster shards={self.nshards} replicas={self.replicas} etcd={getattr(self, 'etcd_url', None)}>"
