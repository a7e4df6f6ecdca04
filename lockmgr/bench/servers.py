"""Throwaway peer servers for ``lockmgr bench --compare`` (and benchmarks/bench_service.py),
and the server CPU time they use, read from /proc.

Interface:
    cpu_seconds(pids) -> float          user+system CPU of the processes so far, with
                                        their live children and reaped children (Linux)
    RedisServer()                       context manager: a redis-server on 127.0.0.1 (.port, .pids())
    PostgresServer(max_connections=100) context manager: an initdb'd PostgreSQL on 127.0.0.1
                                        (.port, .pids(): the postmaster and its backends)
    Unavailable                         raised when a server or its python client is missing;
                                        the message names the Debian package / pip extra

The servers come from their Debian packages (redis-server, postgresql) when they are
installed; nothing is installed here (benchmarks/install_compare_deps.sh does that).
Both run with durability off (redis: no RDB/AOF; PostgreSQL: fsync=off): locks are
not durable data in either, and lockmgr's shards keep locks in memory too.
"""

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

__all__ = ["Unavailable", "cpu_seconds", "process_tree", "free_port", "RedisServer", "PostgresServer", "find_pg"]

_HINT = "bash benchmarks/install_compare_deps.sh installs both; or pip install 'lockmgr[bench]' for the clients"


class Unavailable(RuntimeError):
    """A peer system cannot be run here (its server or its python client is not installed)."""


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def _stat(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children(pid: int) -> List[int]:
    out: List[int] = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(task) as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def _walk(pids: Iterable[Optional[int]]) -> Dict[int, List[str]]:
    """pid -> /proc stat fields of every process in the trees under ``pids``
    (bounded walk: O(processes in the trees))."""
    out: Dict[int, List[str]] = {}
    todo = [p for p in pids if p]
    for _ in range(100_000):
        if not todo:
            break
        pid = todo.pop()
        if pid in out:
            continue
        f = _stat(pid)
        if f is None:
            continue
        out[pid] = f
        todo.extend(_children(pid))
    return out


def process_tree(pids: Iterable[Optional[int]]) -> Set[int]:
    """The pids of ``pids`` and their live descendants."""
    return set(_walk(pids))


def cpu_seconds(pids: Iterable[Optional[int]]) -> float:
    """User+system CPU seconds of ``pids`` so far: every thread, the children they
    reaped (cutime/cstime) and their live descendants (PostgreSQL's backends).
    A descendant that has exited but is not reaped yet may be missed: read it
    when the trees are settled (runner.run waits for that)."""
    tick = os.sysconf("SC_CLK_TCK")
    # fields after the ")": state=0 ... utime=11 stime=12 cutime=13 cstime=14
    total = sum(int(f[11]) + int(f[12]) + int(f[13]) + int(f[14]) for f in _walk(pids).values())
    return total / tick


def _wait_port(port: int, proc: "subprocess.Popen[bytes]", what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"{what} exited at start (code {proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)     # polling a port another process opens: no event to wait on
    raise Unavailable(f"{what} did not open 127.0.0.1:{port} within {timeout:g}s")


class RedisServer:
    """A redis-server on 127.0.0.1 and a free port, no persistence; stopped on exit."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None)
        if self.binary is None:
            raise Unavailable(f"redis: redis-server is not installed (Debian package redis-server; {_HINT})")
        try:
            import redis  # noqa: F401
        except ImportError:
            raise Unavailable(f"redis: the python package redis is not installed ({_HINT})") from None
        self.port = 0
        self.proc: "Optional[subprocess.Popen[bytes]]" = None

    def __enter__(self) -> "RedisServer":
        self.port = free_port()
        assert self.binary is not None
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--maxclients", "1000"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL)
        try:
            _wait_port(self.port, self.proc, "redis-server")
        except BaseException:
            self.__exit__()
            raise
        return self

    def pids(self) -> List[Optional[int]]:
        return [self.proc.pid if self.proc is not None else None]

    def describe(self) -> str:
        out = subprocess.run([str(self.binary), "--version"], capture_output=True, text=True).stdout.split()
        ver = next((w[2:] for w in out if w.startswith("v=")), "?")
        return f"redis-server {ver} on 127.0.0.1:{self.port} (no persistence)"

    def __exit__(self, *exc: object) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.proc = None


def find_pg() -> Optional[Tuple[str, str]]:
    """(initdb, pg_ctl) from one directory: PATH first, then Debian's
    /usr/lib/postgresql/<version>/bin (newest version first); or None."""
    dirs = []
    w = shutil.which("initdb")
    if w:
        dirs.append(os.path.dirname(os.path.realpath(w)))

    def version(d: str) -> Tuple[int, ...]:
        v = d.split("/")[-2]
        return tuple(int(x) for x in v.split(".") if x.isdigit())
    dirs += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for d in dirs:
        initdb, pg_ctl = os.path.join(d, "initdb"), os.path.join(d, "pg_ctl")
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return initdb, pg_ctl
    return None


def pg_user() -> Optional[Dict[str, Any]]:
    """subprocess keyword arguments that run PostgreSQL's tools: {} normally; as
    root (postgres refuses to run as root) the 'postgres' user's, or None when
    there is no such user."""
    if os.geteuid() != 0:
        return {}
    import pwd
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        return None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [],
            "env": dict(os.environ, HOME=pw.pw_dir, USER="postgres", LOGNAME="postgres")}


class PostgresServer:
    """A throwaway initdb'd PostgreSQL on 127.0.0.1 (fsync=off; as user postgres
    when run as root); stopped and deleted on exit."""

    def __init__(self, max_connections: int = 100, deadlock_timeout_ms: int = 10) -> None:
        pg = find_pg()
        if pg is None:
            raise Unavailable("postgres: initdb/pg_ctl not found on PATH or in /usr/lib/postgresql/*/bin "
                              f"(Debian package postgresql; {_HINT})")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise Unavailable(f"postgres: the python package psycopg is not installed ({_HINT})") from None
        runas = pg_user()
        if runas is None:
            raise Unavailable("postgres: running as root and there is no 'postgres' user to run PostgreSQL as "
                              "(the Debian package postgresql creates it)")
        self.initdb, self.pg_ctl = pg
        self.runas = runas
        self.max_connections = max_connections
        self.deadlock_timeout_ms = deadlock_timeout_ms
        self.port = 0
        self.dir: Optional[str] = None

    def _run(self, args: List[str], check: bool = True) -> None:
        kw: Dict[str, Any] = dict(self.runas, cwd=self.dir, check=check, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        try:
            subprocess.run(args, **kw)
        except subprocess.CalledProcessError as e:
            raise Unavailable(f"postgres: {os.path.basename(args[0])} failed: "
                              f"{(e.stderr or b'').decode(errors='replace').strip()[-300:]}") from None

    def __enter__(self) -> "PostgresServer":
        self.dir = d = tempfile.mkdtemp(prefix="lockmgr-bench-pg-")
        self.port = free_port()
        if self.runas:
            os.chown(d, self.runas["user"], self.runas["group"])     # mkdtemp made it 0700
        try:
            self._run([self.initdb, "-D", d + "/data", "-U", "postgres", "--auth=trust", "-E", "UTF8"])
            self._run([self.pg_ctl, "-D", d + "/data", "-o",
                       f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={d} "
                       f"-c fsync=off -c max_connections={self.max_connections} "
                       f"-c deadlock_timeout={self.deadlock_timeout_ms}ms", "-w", "-l", d + "/log", "start"])
        except BaseException:
            self.__exit__()
            raise
        return self

    def pids(self) -> List[Optional[int]]:
        try:
            with open(f"{self.dir}/data/postmaster.pid") as f:
                return [int(f.readline())]
        except (OSError, ValueError):
            return []

    def describe(self) -> str:
        return (f"PostgreSQL {os.path.basename(os.path.dirname(os.path.dirname(self.initdb)))} "
                f"on 127.0.0.1:{self.port} (fsync=off, deadlock_timeout={self.deadlock_timeout_ms}ms)")

    def __exit__(self, *exc: object) -> None:
        if self.dir is None:
            return
        if os.path.exists(self.dir + "/data/postmaster.pid"):
            self._run([self.pg_ctl, "-D", self.dir + "/data", "-m", "immediate", "-w", "stop"], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
