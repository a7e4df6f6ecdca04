"""Replica sets (issue 12): failover time, prepares/s and lock throughput with standbys.

    python benchmarks/bench_failover.py [--runs 20] [--seconds 5] [--threads 8] [--only failover|prepare|locks]
                                        [--ttl 2] [--switchover]

failover: one shard, two replicas, lease TTL 2 s (the default). A client holds a
session; each run SIGKILLs the primary and measures SIGKILL -> the first lock
granted by the new primary to that client (it finds the primary in etcd,
opens its session there and reclaims); the killed replica is then restarted as
a standby and the next run waits until it is back in the sync set. Reported:
p50 and max over ``--runs`` runs (goal: <= TTL + 1 s), and where the time
went, from a watch on the leader key: SIGKILL -> the lease's end in etcd (the
leader key deleted), -> the new primary's endpoint published, -> the first
grant to the client. ``--switchover``: SIGTERM instead of SIGKILL (a clean stop:
the primary revokes its lease, so no lease has to run out).

prepare: ``--threads`` threads each begin(gtrid) + lock + prepare + commit, for
``--seconds``: one shard without a standby (replicas=1) against one shard with
one synchronous standby (replicas=2); ratio (goal >= 0.7x).

locks: the same threads lock + commit (plain locks: not replicated), replicas=1
against replicas=2; ratio (goal: within noise).
"""

import argparse
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lockmgr import LocalCluster, Mode  # noqa: E402
from lockmgr.errors import LockError  # noqa: E402


def failover(runs, ttl, switchover=False):
    from lockmgr.service.etcd import Watcher, keys
    out = []
    phases = []
    with LocalCluster(shards=1, replicas=2, lease_ttl=ttl) as c:
        seen = []            # (monotonic time, event type, endpoint published) of the leader key

        def on_change(events):
            now = time.monotonic()
            for e in events or ():
                seen.append((now, e.type, '"endpoint"' in e.kv.value))
        w = Watcher(c.etcd, keys(c.cluster_name, 0).leader, on_change)
        cl = c.connect(session_ttl=30, request_timeout=10)
        for k in range(runs):
            c.wait_in_sync(0, 20)            # the restarted standby may take over again
            t = cl.begin()
            t.lock(("db", "t", 0), Mode.X, timeout=5)
            t.commit()
            old = c.primary(0)
            t0 = time.monotonic()
            if switchover:
                c.terminate(0)
            else:
                c.kill(0)
            while True:
                t = cl.begin()
                try:
                    t.lock(("db", "t", k + 1), Mode.X, timeout=10)
                    t.commit()
                    break
                except LockError:
                    try:
                        t.abort()
                    except LockError:
                        pass
            t1 = time.monotonic()
            took = t1 - t0
            out.append(took)
            gone = next((t for t, typ, _ in seen if t >= t0 and typ == "DELETE"), None)
            up = next((t for t, typ, ep in seen if t >= t0 and typ == "PUT" and ep), None)
            if gone is not None and up is not None:
                phases.append((gone - t0, up - gone, t1 - up))
            print(f"  run {k + 1}: replica {old} stopped -> replica {c.primary(0)} granted after {took:.3f} s",
                  flush=True)
            c.restart(0, replica=old)
        w.close()
        cl.close()
    if phases:
        med = [statistics.median(p[i] for p in phases) for i in range(3)]
        print(f"  p50 phases: lease ends in etcd {med[0]:.3f} s, new primary published {med[1] * 1000:.0f} ms later, "
              f"first grant {med[2] * 1000:.0f} ms later ({len(phases)} runs)")
    return out


def _workload(c, threads, seconds, prepare):
    cl = c.connect(session_ttl=30)
    n = [0] * threads
    stop = time.monotonic() + seconds

    def run(k):
        i = 0
        while time.monotonic() < stop:
            i += 1
            if prepare:
                t = cl.begin(gtrid=f"g{k}-{i}-{time.monotonic_ns()}")
                t.lock(("db", f"t{k}", i), Mode.X)
                t.prepare()
                t.commit()
            else:
                t = cl.begin()
                t.lock(("db", f"t{k}", i % 1000), Mode.X)
                t.commit()
            n[k] += 1
    ths = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    t0 = time.monotonic()
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    el = time.monotonic() - t0
    cl.close()
    return sum(n) / el


def compare(threads, seconds, prepare):
    with LocalCluster(shards=1) as c1:
        none = _workload(c1, threads, seconds, prepare)
    with LocalCluster(shards=1, replicas=2) as c2:
        one = _workload(c2, threads, seconds, prepare)
    return none, one


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--ttl", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--only", choices=("failover", "prepare", "locks"), default=None)
    ap.add_argument("--switchover", action="store_true", help="failover: SIGTERM the primary instead of SIGKILL")
    a = ap.parse_args(argv)
    if a.only in (None, "failover"):
        print(f"failover (lease TTL {a.ttl:g} s, {'SIGTERM' if a.switchover else 'SIGKILL'}), {a.runs} runs:")
        f = failover(a.runs, a.ttl, a.switchover)
        print(f"failover: p50 {statistics.median(f):.3f} s  max {max(f):.3f} s  (goal <= {a.ttl + 1:g} s)")
    for kind in ("prepare", "locks"):
        if a.only in (None, kind):
            none, one = compare(a.threads, a.seconds, kind == "prepare")
            what = "prepare+commit" if kind == "prepare" else "lock+commit"
            print(f"{what}/s, {a.threads} threads, {a.seconds:g} s: no standby {none:,.0f}  one sync standby "
                  f"{one:,.0f}  ratio {one / none:.2f}x")


if __name__ == "__main__":
    main()
