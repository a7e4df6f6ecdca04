"""``lockmgr serve | cluster | demo``: the lock service from the command line (inspection: inspect.py).

    lockmgr serve --endpoint tcp://127.0.0.1:7400 --data-dir DIR [--index I --shards N]
    lockmgr cluster --shards 3 [--base-port 7400] [--data-dir DIR]   (foreground; Ctrl-C stops)
    lockmgr demo [--shards 3 --threads 8 --seconds 5]                (local cluster + workload)
"""

import random
import signal
import sys
import threading
import time

from .registry import command


@command("keygen", "Make a CURVE key pair: DIR/NAME.key (public) and DIR/NAME.key_secret (secret, mode 0600).")
def cmd_keygen(p, args):
    if p is not None:
        p.add_argument("directory", help="where to write the two files (made if missing)")
        p.add_argument("name", help="the key's name (e.g. shard, client-app1, admin-alice)")
        return None
    from ..errors import InvalidRequest
    from ..service.security import keygen
    from .util import CliError
    try:
        pub, sec = keygen(args.directory, args.name)
    except InvalidRequest as e:
        raise CliError(str(e)) from None
    print(f"public key: {pub}  (copy it into a shard's --client-keys, --admin-keys or --peer-keys directory)")
    print(f"secret key: {sec}  (keep it private: the shard's --curve-secret-file, or a client's "
          f"curve_secret_file)")
    return 0


@command("serve", "Run one lock shard in the foreground (binds 127.0.0.1 by default).")
def cmd_serve(p, args):
    from . import serve as shard
    if p is not None:
        shard.add_serve_args(p)
        return None
    return shard.run_serve(args)


@command("cluster", "Run a local cluster of shard processes in the foreground and print its endpoints.")
def cmd_cluster(p, args):
    if p is not None:
        p.add_argument("--shards", type=int, default=3)
        p.add_argument("--base-port", type=int, default=None, help="first port (default: free ports)")
        p.add_argument("--data-dir", default=None, help="default: a temporary directory")
        p.add_argument("--partition-depth", type=int, default=2)
        p.add_argument("--log-dir", default=None, help="each shard also logs to LOG_DIR/shard<i>.log (kept)")
        p.add_argument("--metrics", action="store_true", help="each shard serves Prometheus metrics (a free port)")
        p.add_argument("--secure", action="store_true",
                       help="CURVE: make a shard, a client and an admin key pair under DATA_DIR/keys and admit "
                            "only those (printed)")
        p.add_argument("--quota", default=None, metavar="NAME=VALUE,...", help="quotas for every shard "
                       "(lockmgr serve --quota)")
        p.add_argument("--replicas", type=int, default=1,
                       help="replicas per shard (>= 2: standbys, leadership in its own etcd; needs Debian's "
                            "etcd-server; docs/replication.md)")
        p.add_argument("--lease-ttl", type=float, default=2.0, help="with --replicas: the leader lease (2 s)")
        return None
    from ..service.cluster import LocalCluster
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    if args.replicas != 1:
        with LocalCluster(args.shards, replicas=args.replicas, data_dir=args.data_dir,
                          partition_depth=args.partition_depth, lease_ttl=args.lease_ttl) as rc:
            print(f"lockmgr cluster: {args.shards} shard(s) x {args.replicas} replicas, "
                  f"partition depth {args.partition_depth}; etcd {rc.etcd_url}, cluster {rc.cluster_name}")
            for i in range(args.shards):
                for j, ep in enumerate(rc.endpoints[i]):
                    role = "primary" if rc.primary(i) == j else "standby"
                    print(f"  shard {i} replica {j}: {ep}  ({role}, pid {rc.pid(i, j)})")
            print(f"connect: lockmgr.connect(etcd={rc.etcd_url!r}, cluster={rc.cluster_name!r})")
            print(f"status:  lockmgr status --etcd {rc.etcd_url} --cluster {rc.cluster_name}")
            print("Ctrl-C to stop.", flush=True)
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
        return 0
    with LocalCluster(args.shards, data_dir=args.data_dir, base_port=args.base_port,
                      partition_depth=args.partition_depth, log_dir=args.log_dir, metrics=args.metrics,
                      secure=args.secure, quotas=args.quota) as c:
        print(f"lockmgr cluster: {args.shards} shard(s), partition depth {args.partition_depth}")
        if c.secure:
            print(f"  CURVE: server key {c.server_key}; client secret key {c.client_secret_file}; "
                  f"admin secret key {c.admin_secret_file}; client keys in {c.client_keys_dir}")
        for i, (ep, pid) in enumerate(zip(c.endpoints, c.pids)):
            m = c.metrics_urls[i]
            print(f"  shard {i}: {ep}  (pid {pid})" + (f"  metrics {m}" if m else ""))
        print(f"endpoints: {','.join(c.endpoints)}")
        print("Ctrl-C to stop.", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


def _table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))
    return "\n".join(out)


def run_demo(cluster_or_endpoints, *, threads=8, seconds=5.0, tables=8, rows=1000, locks_per_txn=4, seed=1,
             timeout=1.0, progress=True, out=sys.stdout):
    """Threads share one client; each transaction locks rows of one table
    (mostly X, some S) in random order. Returns a summary dict."""
    from ..errors import DeadlockDetected, LockError, LockTimeout
    from ..modes import Mode
    from ..service.client.sync import connect
    eps = cluster_or_endpoints.endpoints if hasattr(cluster_or_endpoints, "endpoints") else cluster_or_endpoints
    from .util import curve_from_env
    client = connect(eps, default_timeout=timeout, **curve_from_env())
    counts = {"committed": 0, "deadlocks": 0, "timeouts": 0, "locks": 0, "errors": 0}
    lat = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    live = dict.fromkeys(counts, 0)

    def worker(k):
        rnd = random.Random(seed * 1000 + k)
        mine = dict.fromkeys(counts, 0)
        my_lat = []
        while time.monotonic() < stop_at:
            t = client.begin()
            table = f"t{rnd.randrange(tables)}"
            t0 = time.perf_counter()
            try:
                for _ in range(locks_per_txn):
                    t.lock(("db", table, rnd.randrange(rows)), Mode.X if rnd.random() < 0.7 else Mode.S)
                    mine["locks"] += 1
                t.commit()
                mine["committed"] += 1
                my_lat.append(time.perf_counter() - t0)
            except DeadlockDetected:
                mine["deadlocks"] += 1
            except LockTimeout:
                mine["timeouts"] += 1
                t.abort()
            except Exception:
                mine["errors"] += 1
                try:
                    t.abort()
                except LockError:   # e.g. SessionExpired: counted above already
                    pass
            if mine["committed"] % 50 == 0:
                with lock:
                    for key in counts:
                        live[key] += mine[key] - live.get((k, key), 0)
                        live[(k, key)] = mine[key]
        with lock:
            for key, v in mine.items():
                counts[key] += v
            lat.extend(my_lat)

    t0 = time.perf_counter()
    ths = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    for th in ths:
        th.start()
    # a terminal gets the progress line redrawn in place every 0.25 s; a pipe or
    # a file a plain line per second
    tty = progress and getattr(out, "isatty", lambda: False)()
    next_line = 1.0
    while True:
        alive = [th for th in ths if th.is_alive()]
        if not alive:
            break
        alive[0].join(0.25)
        el = time.perf_counter() - t0
        if progress and (tty or el >= next_line):
            next_line = el + 1.0
            with lock:
                c, lk, d = live["committed"], live["locks"], live["deadlocks"]
            line = (f"  {el:5.1f}s  committed {c:>8,}  locks {lk:>9,}  ({lk / max(el, 1e-9):>9,.0f}/s)  "
                    f"deadlocks {d:>5,}   ")
            out.write("\r" + line if tty else line.rstrip() + "\n")
            out.flush()
    if tty:
        out.write("\n")
    elapsed = time.perf_counter() - t0
    per_shard = client.stats()
    client.close()
    lat.sort()
    q = (lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1e3 if lat else float("nan"))
    return dict(counts, elapsed=elapsed, p50_ms=q(0.5), p99_ms=q(0.99), shards=per_shard)


@command("demo", "Start a local cluster and run a workload against it (live progress, then a summary).")
def cmd_demo(p, args):
    if p is not None:
        p.add_argument("--shards", type=int, default=3)
        p.add_argument("--threads", type=int, default=8)
        p.add_argument("--seconds", type=float, default=5.0)
        p.add_argument("--rows", type=int, default=1000)
        p.add_argument("--tables", type=int, default=8)
        p.add_argument("--seed", type=int, default=1)
        return None
    from ..service.cluster import LocalCluster
    with LocalCluster(args.shards) as c:
        print(f"local cluster: {args.shards} shard(s) at {','.join(c.endpoints)}")
        print(f"workload: {args.threads} threads, {args.seconds:g}s, 4 row locks per transaction "
              f"(70% X) over {args.tables} tables x {args.rows} rows")
        r = run_demo(c, threads=args.threads, seconds=args.seconds, tables=args.tables, rows=args.rows,
                     seed=args.seed)
    el = r["elapsed"]
    print()
    print(_table(("metric", "value"), [
        ("transactions committed", f"{r['committed']:,}"),
        ("transactions/s", f"{r['committed'] / el:,.0f}"),
        ("locks granted", f"{r['locks']:,}"),
        ("locks/s", f"{r['locks'] / el:,.0f}"),
        ("deadlock victims", f"{r['deadlocks']:,}"),
        ("lock timeouts", f"{r['timeouts']:,}"),
        ("other errors", f"{r['errors']:,}"),
        ("txn latency p50 / p99", f"{r['p50_ms']:.2f} ms / {r['p99_ms']:.2f} ms"),
    ]))
    print()
    print(_table(("shard", "epoch", "locks granted (incl. IS/IX on ancestors)", "waited", "deadlocks", "timeouts",
                  "sessions"), [
        (s["index"], s["epoch"], f"{s['granted']:,}", f"{s['waited']:,}", s.get("deadlocks", 0),
         s.get("timeouts", 0), s["sessions"]) for s in r["shards"]]))
    return 0 if r["errors"] == 0 else 1
