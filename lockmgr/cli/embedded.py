"""``lockmgr embedded``: a short embedded workload that prints throughput and deadlocks."""

import random
import threading
import time

from .registry import command


def run_workload(*, threads=4, seconds=2.0, tables=4, rows=200, locks_per_txn=4, seed=1, timeout=1.0, mgr=None):
    """Threads run transactions that lock random rows (X or S) in random order.

    Returns a dict of counts. Deadlocks are expected: rows are taken in random
    order. Each thread runs until ``seconds`` have passed.
    """
    from ..embedded.manager import LockManager
    from ..errors import DeadlockDetected, LockTimeout
    from ..modes import Mode

    mgr = mgr or LockManager()
    counts = {"committed": 0, "deadlocks": 0, "timeouts": 0, "locks": 0}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(k):
        rnd = random.Random(seed * 1000 + k)
        mine = dict.fromkeys(counts, 0)
        while time.monotonic() < stop:
            t = mgr.begin()
            try:
                for _ in range(locks_per_txn):
                    path = ("db", f"t{rnd.randrange(tables)}", rnd.randrange(rows))
                    t.lock(path, Mode.X if rnd.random() < 0.5 else Mode.S, timeout=timeout)
                    mine["locks"] += 1
                t.commit()
                mine["committed"] += 1
            except DeadlockDetected:
                mine["deadlocks"] += 1
            except LockTimeout:
                mine["timeouts"] += 1
                t.abort()
        with lock:
            for key, v in mine.items():
                counts[key] += v

    t0 = time.perf_counter()
    ths = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    counts["elapsed"] = time.perf_counter() - t0
    counts["stats"] = mgr.stats()
    return counts


@command("embedded", "Run a short embedded workload (threads, random row locks) and print throughput.")
def cmd_embedded(p, args):
    if p is not None:
        p.add_argument("--threads", type=int, default=4)
        p.add_argument("--seconds", type=float, default=2.0)
        p.add_argument("--rows", type=int, default=200)
        p.add_argument("--seed", type=int, default=1)
        return
    from .._core import BACKEND
    r = run_workload(threads=args.threads, seconds=args.seconds, rows=args.rows, seed=args.seed)
    el = r["elapsed"]
    print(f"backend: {BACKEND}   threads: {args.threads}   seconds: {el:.2f}")
    print(f"{'transactions committed':<26}{r['committed']:>12,}  ({r['committed'] / el:,.0f}/s)")
    print(f"{'row locks granted':<26}{r['locks']:>12,}  ({r['locks'] / el:,.0f}/s)")
    print(f"{'deadlock victims':<26}{r['deadlocks']:>12,}")
    print(f"{'timeouts':<26}{r['timeouts']:>12,}")
    s = r["stats"]
    print(f"{'locks held at the end':<26}{s['requests']:>12,}")
    return 0 if s["requests"] == 0 else 1
