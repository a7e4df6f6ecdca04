"""Issue 15's figures: how soon a watcher hears of a release, and how long a
leader election takes to replace a killed leader (lockmgr's recipe, and
etcd's election API on the same machine when ``etcd`` is installed).

    bash benchmarks/install_watch_compare_deps.sh      # ZooKeeper, etcd, kazoo (optional)
    python benchmarks/bench_watch.py [--n 500] [--rounds 5] [--ttl 2.0] [--no-etcd] [--no-zookeeper]

* watch: a 1-shard LocalCluster; client A locks a row X and commits, N
  times; client B watches the row. Measured: from just before A's commit()
  to B's RELEASED event (both in this process: one monotonic clock), p50 /
  p99 / max. Also the same for ``wait_free`` (from the commit to its return).
* failover: 4 candidate processes (``client.leadership("bench")``, session
  TTL ``--ttl``); the leader is SIGKILLed; measured: from the kill to the
  next leader's "elected" line (its own CLOCK_MONOTONIC reading: the same
  clock system-wide). The expectation is about one TTL (the shard expires
  the dead leader's session when its lease runs out) plus a round trip.
* ZooKeeper and kazoo (``benchmarks/install_watch_compare_deps.sh``
  installs Debian's zookeeper, etcd-server and the kazoo client): a throwaway
  standalone ZooKeeper (tickTime 200 ms), 4 candidates running kazoo's
  ``Election.run`` with a session timeout of ``--ttl``; the same kill and
  measurement.
* etcd (``/usr/bin/etcd``): a throwaway single-member etcd on 127.0.0.1,
  4 candidate processes each with a lease of ``--ttl`` seconds (kept alive
  every ttl/3) campaigning through the v3 JSON gateway
  (``/v3/election/campaign``, what ``etcdctl elect`` does); the same kill
  and measurement. etcd's smallest lease TTL is about 2 s (1.5 x its
  election timeout), hence the default ``--ttl 2``.
"""

import argparse
import base64
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

import lockmgr  # noqa: E402
from lockmgr import LocalCluster, Mode  # noqa: E402
from lockmgr.service.client.watch import GRANTED, RELEASED  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(name, xs):
    ms = [x * 1000 for x in xs]
    print(f"{name}: n={len(ms)} p50={pct(ms, 50):.3f} ms p99={pct(ms, 99):.3f} ms max={max(ms):.3f} ms",
          flush=True)
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 3), "p99_ms": round(pct(ms, 99), 3),
            "max_ms": round(max(ms), 3)}


def bench_watch(n):
    out = {}
    with LocalCluster(1) as c:
        a = c.connect()
        b = c.connect()
        row = ("db", "bench", 1)
        lat = []
        with b.watch(row) as w:
            w.get(5)                                # INITIAL
            for _ in range(n + 20):
                t = a.begin()
                t.lock(row, Mode.X)
                while w.get(5).kind != GRANTED:
                    pass
                t0 = time.perf_counter()
                t.commit()
                while True:
                    ev = w.get(5)
                    if ev.kind == RELEASED:
                        lat.append(time.perf_counter() - t0)
                        break
        out["release_to_watch_event"] = summary("release -> watcher's RELEASED event", lat[20:])
        lat = []
        for _ in range(min(n, 200) + 10):
            t = a.begin()
            t.lock(row, Mode.X)
            box = queue.Queue()
            th = threading.Thread(target=lambda: box.put((b.wait_free(row, Mode.X, 10), time.perf_counter())))
            th.start()
            time.sleep(0.01)                         # (wait_free has set its watch)
            t0 = time.perf_counter()
            t.commit()
            ok, t1 = box.get(10)
            th.join()
            assert ok
            lat.append(t1 - t0)
        out["release_to_wait_free"] = summary("release -> wait_free returns", lat[10:])
        a.close()
        b.close()
    return out


LOCKMGR_CANDIDATE = r"""
import sys, time, lockmgr
c = lockmgr.connect(sys.argv[1], session_ttl=float(sys.argv[2]), request_timeout=1.0)
print("READY", flush=True)
with c.leadership("bench") as lead:
    print("LEADER", time.monotonic(), lead.token, flush=True)
    lead.lost.wait()
"""

ETCD_CANDIDATE = r"""
import base64, json, sys, threading, time, urllib.request
ep, ttl = sys.argv[1], float(sys.argv[2])
def call(path, body, timeout=3600):
    req = urllib.request.Request(ep + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=timeout).read() or b"{}")
lease = call("/v3/lease/grant", {"TTL": int(ttl)})["ID"]
def keep():
    while True:
        call("/v3/lease/keepalive", {"ID": lease}, 5)
        time.sleep(ttl / 3)
threading.Thread(target=keep, daemon=True).start()
print("READY", flush=True)
r = call("/v3/election/campaign", {"name": base64.b64encode(b"bench").decode(), "lease": lease,
                                   "value": base64.b64encode(b"me").decode()})
print("LEADER", time.monotonic(), r["leader"]["rev"], flush=True)
time.sleep(3600)
"""


KAZOO_CANDIDATE = r"""
import sys, time
from kazoo.client import KazooClient
z = KazooClient(sys.argv[1], timeout=float(sys.argv[2]))
z.start(timeout=10)
print("READY", flush=True)
def lead():
    print("LEADER", time.monotonic(), 0, flush=True)
    time.sleep(3600)
z.Election("/bench-election", "me").run(lead)
"""


def failover(script, target, ttl, rounds, env=None):
    """Kill the leader ``rounds`` times among 4 + rounds candidates; the seconds from
    each kill to the next leader's election."""
    procs = []
    lines = queue.Queue()

    def spawn():
        p = subprocess.Popen([sys.executable, "-c", script, target, str(ttl)], stdout=subprocess.PIPE,
                             env=env or dict(os.environ, PYTHONPATH=HERE))
        procs.append(p)
        threading.Thread(target=lambda: [lines.put((p, ln.decode().split())) for ln in p.stdout],
                         daemon=True).start()

    out = []
    try:
        for _ in range(4):
            spawn()
        killed_at = None
        leader = None
        while len(out) < rounds:
            p, ln = lines.get(timeout=max(30, 5 * ttl))
            if ln[0] != "LEADER":
                continue
            if killed_at is not None:
                out.append(float(ln[1]) - killed_at)
            leader = p
            spawn()                                  # keep 4 candidates
            time.sleep(0.5)                           # the followers are queued / campaigning
            killed_at = time.monotonic()
            leader.send_signal(signal.SIGKILL)
            leader.wait()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def bench_failover_lockmgr(ttl, rounds):
    with LocalCluster(2) as c:
        xs = failover(LOCKMGR_CANDIDATE, ",".join(c.endpoints), ttl, rounds)
    return summary(f"lockmgr leadership failover (session TTL {ttl:g} s)", xs)


def bench_failover_etcd(ttl, rounds):
    etcd = shutil.which("etcd")
    if etcd is None:
        print("etcd: not installed (apt-get install etcd-server); skipped")
        return None
    d = tempfile.mkdtemp(prefix="bench-etcd-")
    cport, pport = free_port(), free_port()
    ep = f"http://127.0.0.1:{cport}"
    proc = subprocess.Popen([etcd, "--data-dir", d, "--listen-client-urls", ep, "--advertise-client-urls", ep,
                             "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                             "--initial-cluster", f"default=http://127.0.0.1:{pport}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(
                    ep + "/v3/kv/range", data=json.dumps({"key": base64.b64encode(b"x").decode()}).encode()),
                    timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        xs = failover(ETCD_CANDIDATE, ep, ttl, rounds)
        return summary(f"etcd election failover (lease TTL {ttl:g} s, v3 gateway campaign)", xs)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)


def bench_failover_zookeeper(ttl, rounds):
    zk = "/usr/share/zookeeper/bin/zkServer.sh"
    try:
        import kazoo  # noqa: F401
    except ImportError:
        kazoo = None
    if not os.path.exists(zk) or kazoo is None:
        print("ZooKeeper/kazoo: not installed (benchmarks/install_watch_compare_deps.sh); skipped")
        return None
    d = tempfile.mkdtemp(prefix="bench-zk-")
    port = free_port()
    # tickTime 200 ms: sessions of 0.4..4 s are allowed (2 and 20 ticks)
    with open(os.path.join(d, "zoo.cfg"), "w") as f:
        f.write(f"tickTime=200\ndataDir={d}/data\nclientPort={port}\nmaxClientCnxns=100\n"
                f"admin.enableServer=false\n4lw.commands.whitelist=ruok\n")
    proc = subprocess.Popen([zk, "start-foreground", os.path.join(d, "zoo.cfg")], cwd=d,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 1) as sk:
                    sk.sendall(b"ruok")
                    if sk.recv(4) == b"imok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("ZooKeeper did not start")
            time.sleep(0.2)
        xs = failover(KAZOO_CANDIDATE, f"127.0.0.1:{port}", ttl, rounds, dict(os.environ))
        return summary(f"ZooKeeper (kazoo Election) failover (session timeout {ttl:g} s)", xs)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ttl", type=float, default=2.0)
    ap.add_argument("--no-etcd", action="store_true")
    ap.add_argument("--no-zookeeper", action="store_true")
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args()
    res = {"backend": lockmgr.BACKEND}
    res.update(bench_watch(a.n))
    res["failover_lockmgr"] = bench_failover_lockmgr(a.ttl, a.rounds)
    if not a.no_etcd:
        res["failover_etcd"] = bench_failover_etcd(a.ttl, a.rounds)
    if not a.no_zookeeper:
        res["failover_zookeeper"] = bench_failover_zookeeper(a.ttl, a.rounds)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
