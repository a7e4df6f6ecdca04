"""LocalCluster: shard processes on 127.0.0.1, for tests, demos and benchmarks.

Interface:
    LocalCluster(shards=3, *, data_dir=None, base_port=None, partition_depth=2,
                 escalation_threshold=5000, start_timeout=20.0, probe_delay=0.010, probe_interval=None,
                 grace=None,    # seconds of a restarted shard's grace period (None: its default)
                 log_dir=None, metrics=False, secure=False, quotas=None)
        .endpoints          list of "tcp://127.0.0.1:port", in shard order
        .peer_endpoints     what the shards use to reach each other (ipc:// in their dirs)
        .cluster_key        the random key their shard-to-shard messages carry
        .pids               list of shard PIDs (None for a killed shard)
        .shard_dir(i)       shard i's data directory (epoch file, prepare log, shard.log: its stderr)
        .metrics_urls       with metrics=True: each shard's http://127.0.0.1:PORT/metrics
        log_dir             each shard also logs to log_dir/shard<i>.log, which outlives the cluster
        .connect(**kw)      lockmgr.connect(self.endpoints, **kw) (secure: with the client key)
    secure=True: CURVE (docs/security.md). The cluster makes key pairs under
    data_dir/keys: one for its shards (they share it; it is also their peer key),
    one client and one admin key:
        .server_key         the shards' public key file
        .client_secret_file, .admin_secret_file     the client's and the admin's secret key files
        .client_keys_dir, .admin_keys_dir           the shards' key directories (add keys, then
                                                    .reload_keys() or wait for the shards' timer)
        .admin_curve        a ClientCurve with the admin key (admin requests, lockmgr.service.admin)
        .reload_keys()      SIGHUP every shard
    quotas: "name=value,..." (lockmgr serve --quota) for every shard
        .kill(i)            SIGKILL shard i;  .restart(i): same endpoint and data dir
        .stop()             SIGTERM every shard (SIGKILL after a grace period)
        context-manager use (stop on exit)

Each shard is ``python -m lockmgr serve`` with its own data directory (the
epoch file lives there); a shard prints one ``READY <endpoint>`` line when its
socket is bound, which is what ``start`` waits for (no sleeps, no port races:
with ``base_port=None`` each shard binds port 0 and reports the port it got).
"""

import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import IO, TYPE_CHECKING, Any, List, Optional, TypeVar

from ..errors import InvalidRequest, ShardUnavailable

if TYPE_CHECKING:   # the client (zmq) is imported only by connect()
    from .client.sync import Client

__all__ = ["LocalCluster", "ProcessCluster", "terminate"]


def terminate(procs: "List[subprocess.Popen[bytes]]", timeout: float = 5.0) -> None:
    """SIGTERM each process, SIGKILL those still running after ``timeout`` s; close their stdout."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stdout:
            p.stdout.close()


_C = TypeVar("_C", bound="ProcessCluster")


class ProcessCluster:
    """What LocalCluster and the replicated one (repcluster.py) share: a child's
    READY line, and stop() on exit and on garbage collection."""

    start_timeout: float

    def stop(self) -> None:
        raise NotImplementedError

    def _read_ready(self, p: "subprocess.Popen[bytes]", what: str, log_path: str) -> str:
        """The child's first stdout line, ``READY <endpoint> ...`` (within start_timeout);
        else it is killed and ShardUnavailable names ``what`` with its log's tail."""
        deadline = time.monotonic() + self.start_timeout
        out = p.stdout
        assert out is not None   # stdout=PIPE
        sel = selectors.DefaultSelector()
        sel.register(out, selectors.EVENT_READ)
        buf = b""
        try:
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or p.poll() is not None and not sel.select(0):
                    break
                if sel.select(min(left, 0.5)):
                    chunk = os.read(out.fileno(), 4096)
                    if not chunk:
                        break
                    buf += chunk
        finally:
            sel.close()
        if not buf.startswith(b"READY "):
            try:
                p.kill()
            except ProcessLookupError:
                pass
            p.wait()
            try:
                with open(log_path, "rb") as f:
                    tail = f.read()[-2000:].decode(errors="replace")
            except OSError:
                tail = ""
            raise ShardUnavailable(f"{what} did not start within {self.start_timeout:g}s: {tail}")
        return buf.split(b"\n", 1)[0].decode()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        try:
            self.stop()
        except Exception:
            pass


class LocalCluster(ProcessCluster):
    """A cluster of shard processes on this machine."""

    def __new__(cls, shards: int = 3, *, replicas: int = 1, **kw: Any) -> Any:
        # replicas >= 2: replica sets with leadership in etcd (lockmgr/service/repcluster.py)
        if type(replicas) is not int or not 1 <= replicas <= 9:
            raise InvalidRequest(f"replicas must be an int in 1..9; got {replicas!r}")
        if replicas > 1 and cls is LocalCluster:
            from .repcluster import ReplicatedCluster
            return ReplicatedCluster(shards, replicas=replicas, **kw)
        return super().__new__(cls)

    def __init__(self, shards: int = 3, *, replicas: int = 1, data_dir: Optional[str] = None,
                 base_port: Optional[int] = None,
                 partition_depth: int = 2, escalation_threshold: int = 5000, start_timeout: float = 20.0,
                 probe_delay: Optional[float] = 0.010, probe_interval: Optional[float] = None,
                 grace: Optional[float] = None, log_dir: Optional[str] = None, metrics: bool = False,
                 secure: bool = False, quotas: Optional[str] = None) -> None:
        if type(shards) is not int or not 1 <= shards <= 256:
            raise InvalidRequest(f"shards must be an int in 1..256; got {shards!r}")
        if type(partition_depth) is not int or not 1 <= partition_depth <= 32:
            raise InvalidRequest(f"partition_depth must be an int in 1..32; got {partition_depth!r}")
        self.nshards = shards
        self.partition_depth = partition_depth
        self.escalation_threshold = escalation_threshold
        self.start_timeout = start_timeout
        # cross-shard deadlock detection (docs/probes.md): None disables it
        self.probe_delay = probe_delay
        self.probe_interval = probe_interval
        if grace is not None and (type(grace) not in (int, float) or not 0 <= grace <= 3600):
            raise InvalidRequest(f"grace must be None or seconds in 0..3600; got {grace!r}")
        # a restarted shard's grace period (lockmgr/service/shard/reclaim.py); None: the shard's default
        self.grace = grace
        # log_dir: each shard also appends its log to log_dir/shard<i>.log (kept after stop);
        # metrics: each shard serves Prometheus metrics on a free port (metrics_urls)
        self.log_dir = os.path.abspath(log_dir) if log_dir is not None else None
        self.metrics = metrics
        self.metrics_urls: List[Optional[str]] = [None] * shards
        # shard-to-shard messages (and PEERS/FAULTS) carry this key: no other local process can
        # abort a transaction as a deadlock victim (given to the shards in their environment)
        self.cluster_key = secrets.token_hex(16)
        self._own_dir = data_dir is None
        self.data_dir = tempfile.mkdtemp(prefix="lockmgr-cluster-") if data_dir is None else data_dir
        os.makedirs(self.data_dir, exist_ok=True)
        self._procs: List[Optional["subprocess.Popen[bytes]"]] = [None] * shards
        self._logs: List[Optional[IO[bytes]]] = [None] * shards
        self.secure = bool(secure)
        self.quotas = quotas
        self.admin_curve: Any = None
        if self.secure:
            self._make_keys()
        self.endpoints = [f"tcp://127.0.0.1:{base_port + i}" if base_port else "tcp://127.0.0.1:0"
                          for i in range(shards)]
        # the shards talk to each other over unix sockets in their directories (cheaper
        # than loopback TCP); over TCP if the path is too long for a unix socket
        self.peer_endpoints: List[Optional[str]] = [None] * shards
        self._stopped = False
        try:
            for i in range(shards):
                self._start(i)
            for i in range(shards):
                self._send_peers(i)
        except BaseException:
            self.stop()
            raise

    def _make_keys(self) -> None:
        from .security import ClientCurve, keygen
        kd = os.path.join(self.data_dir, "keys")
        private = os.path.join(kd, "private")
        self.client_keys_dir = os.path.join(kd, "clients")
        self.admin_keys_dir = os.path.join(kd, "admins")
        for d in (self.client_keys_dir, self.admin_keys_dir):
            os.makedirs(d, exist_ok=True)
        if not os.path.exists(os.path.join(private, "shard.key_secret")):
            keygen(private, "shard")
            keygen(private, "client")
            keygen(private, "admin")
            shutil.copy(os.path.join(private, "client.key"), self.client_keys_dir)
            shutil.copy(os.path.join(private, "admin.key"), self.admin_keys_dir)
        self.server_key = os.path.join(private, "shard.key")
        self.shard_secret_file = os.path.join(private, "shard.key_secret")
        self.client_secret_file = os.path.join(private, "client.key_secret")
        self.admin_secret_file = os.path.join(private, "admin.key_secret")
        self.admin_curve = ClientCurve(self.admin_secret_file, self.server_key)

    def reload_keys(self) -> None:
        """Ask every running shard to re-read its key directories (SIGHUP)."""
        for p in self._procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGHUP)

    @property
    def pids(self) -> List[Optional[int]]:
        """Each shard's PID, in shard order; None for a shard that is not running."""
        return [p.pid if p is not None and p.poll() is None else None for p in self._procs]

    def shard_dir(self, i: int) -> str:
        """Shard ``i``'s data directory (epoch file, prepare log, shard.log)."""
        return os.path.join(self.data_dir, f"shard{i}")

    def _start(self, i: int) -> None:
        d = self.shard_dir(i)
        os.makedirs(d, exist_ok=True)
        log = open(os.path.join(d, "shard.log"), "ab")
        cmd = [sys.executable, "-m", "lockmgr", "serve", "--endpoint", self.endpoints[i], "--data-dir", d,
               "--index", str(i), "--shards", str(self.nshards), "--partition-depth", str(self.partition_depth),
               "--escalation-threshold", str(self.escalation_threshold),
               "--probe-delay-ms", str(-1 if self.probe_delay is None else self.probe_delay * 1000),
               "--parent-pid", str(os.getpid())]      # the shard stops if this process dies
        if self.probe_interval is not None:
            cmd += ["--probe-interval-ms", str(self.probe_interval * 1000)]
        if self.grace is not None:
            cmd += ["--grace", str(self.grace)]
        if self.log_dir is not None:
            cmd += ["--log-file", os.path.join(self.log_dir, f"shard{i}.log")]
        if self.metrics:
            cmd += ["--metrics-port", "0"]
        if self.secure:
            cmd += ["--curve-secret-file", self.shard_secret_file, "--client-keys", self.client_keys_dir,
                    "--admin-keys", self.admin_keys_dir]
        if self.quotas:
            cmd += ["--quota", self.quotas]
        sock_path = os.path.join(os.path.abspath(d), "peers.ipc")
        peer_ep = f"ipc://{sock_path}" if len(sock_path) < 100 else None
        if peer_ep:
            cmd += ["--peer-endpoint", peer_ep]
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["LOCKMGR_CLUSTER_KEY"] = self.cluster_key
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env)
        self._procs[i] = p
        old_log = self._logs[i]
        if old_log is not None:
            old_log.close()
        self._logs[i] = log
        line = self._read_ready(p, f"shard {i}", os.path.join(d, "shard.log"))
        # "READY tcp://127.0.0.1:PORT epoch=E backend=B"
        self.endpoints[i] = line.split()[1]
        self.metrics_urls[i] = next((w[8:] for w in line.split() if w.startswith("metrics=")), None)
        self.peer_endpoints[i] = peer_ep or self.endpoints[i]

    def connect(self, **kw: Any) -> "Client":
        """A :class:`lockmgr.Client` for this cluster."""
        from .client.sync import connect
        kw.setdefault("partition_depth", self.partition_depth)
        if self.secure:
            kw.setdefault("curve_secret_file", self.client_secret_file)
            kw.setdefault("curve_server_key", self.server_key)
        return connect(self.endpoints, **kw)

    def kill(self, i: int) -> None:
        """SIGKILL shard ``i`` (its locks are lost; its epoch file stays)."""
        p = self._procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()

    def restart(self, i: int) -> None:
        """Start shard ``i`` again on the same endpoint and data directory (a new epoch)."""
        self.kill(i)
        self._start(i)
        self._send_peers(i)

    def _send_peers(self, i: int) -> None:
        """Tell shard ``i`` every shard's endpoint (shard-to-shard probe messages)."""
        from . import wire
        from .admin import request as send_admin
        try:
            send_admin(self.endpoints[i], wire.PEERS, [list(self.peer_endpoints)],
                       timeout=self.start_timeout, key=self.cluster_key, curve=self.admin_curve)
        except InvalidRequest as e:
            raise InvalidRequest(f"shard {i} refused its peers: {e}") from None

    def stop(self) -> None:
        """Stop every shard (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        terminate([p for p in self._procs if p is not None])
        for log in self._logs:
            if log is not None:
                log.close()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<LocalCluster shards={self.nshards} endpoints={self.endpoints}>"
