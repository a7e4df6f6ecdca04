"""What CURVE (authentication + encryption, issue 13) costs, and what a huge
SNAPSHOT costs the other clients, measured side by side in one run.

    python benchmarks/bench_curve.py [--quick] [--only rtt|many|snapshot]

rtt:      one client, one shard: begin + lock(X) on a fresh row + commit (a LOCK and a
          RELEASE round trip), plain vs CURVE: microseconds per acquire+release (median
          of ROUNDS rounds), and the ratio.
many:     one client: LOCK_MANY of 1,000 rows + commit, plain vs CURVE: locks/s and the ratio.
snapshot: one shard holding 1,000,000 locks (250 transactions x 4,000 rows); client B
          does lock+commit in a loop while an admin lists every lock: paged
          (SNAPSHOT_PAGE, the answer_rows quota: 2,000 rows a page) vs one SNAPSHOT
          answer (answer_rows raised to 2,000,000: what the shard did before). Reported:
          B's worst and 99th-percentile lock+commit while the listing runs, and the
          listing's time (the listing runs in a process of its own). The shard's turn
          budget is TURN_BUDGET (20 ms).
"""

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lockmgr import LocalCluster, Mode  # noqa: E402
from lockmgr.service import admin, wire  # noqa: E402
from lockmgr.service.shard.server import TURN_BUDGET  # noqa: E402

X = Mode.X


def _rtt(cl, n):
    c = cl.connect(session_ttl=30.0, request_timeout=30.0)
    try:
        for i in range(200):                       # warm-up
            with c.transaction() as t:
                t.lock(("db", "w", i), X)
        t0 = time.perf_counter()
        for i in range(n):
            t = c.begin()
            t.lock(("db", "t", i), X)
            t.commit()
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        c.close()


def _many(cl, batches):
    c = cl.connect(session_ttl=30.0, request_timeout=30.0)
    try:
        items = [(("db", "m", i), X) for i in range(1000)]
        with c.transaction() as t:
            t.lock_many(items)
        t0 = time.perf_counter()
        for _ in range(batches):
            t = c.begin()
            t.lock_many(items)
            t.commit()
        return batches * len(items) / (time.perf_counter() - t0)
    finally:
        c.close()


def rtt_and_many(quick, only):
    rounds = 3 if quick else 5
    n = 500 if quick else 2000
    batches = 20 if quick else 100
    res = {"plain": {"rtt": [], "many": []}, "curve": {"rtt": [], "many": []}}
    with LocalCluster(1) as plain, LocalCluster(1, secure=True) as secure:
        for _ in range(rounds):                    # interleaved: drift hits both alike
            for name, cl in (("plain", plain), ("curve", secure)):
                if only in (None, "rtt"):
                    res[name]["rtt"].append(_rtt(cl, n))
                if only in (None, "many"):
                    res[name]["many"].append(_many(cl, batches))
    if only in (None, "rtt"):
        p, c = statistics.median(res["plain"]["rtt"]), statistics.median(res["curve"]["rtt"])
        print(f"rtt   acquire+release (LOCK + RELEASE round trips), median of {rounds} x {n}: "
              f"plain {p:.1f} us, CURVE {c:.1f} us, CURVE/plain {c / p:.2f}")
    if only in (None, "many"):
        p, c = statistics.median(res["plain"]["many"]), statistics.median(res["curve"]["many"])
        print(f"many  LOCK_MANY 1,000 rows + commit, median of {rounds} x {batches}: "
              f"plain {p:,.0f} locks/s, CURVE {c:,.0f} locks/s, CURVE/plain {c / p:.2f}")


def _load(cl, ntxn, per):
    c = cl.connect(session_ttl=600.0, request_timeout=120.0)
    for k in range(ntxn):
        t = c.begin()
        items = [(("big", f"t{k}", i), X) for i in range(per)]
        for j in range(0, per, 4000):
            t.lock_many(items[j:j + 4000])
    return c


def _list_locks(endpoint, paged):
    t0 = time.perf_counter()
    if paged:
        rows = admin.snapshot(endpoint, timeout=120.0)
    else:
        rows = admin.request(endpoint, wire.SNAPSHOT, timeout=120.0)
    return len(rows), time.perf_counter() - t0


def _listing(cl, paged, quick):
    ntxn, per = (25, 4000) if quick else (250, 4000)
    holder = _load(cl, ntxn, per)
    b = cl.connect(session_ttl=60.0, request_timeout=60.0)
    lat = []
    stop = threading.Event()

    def worker():
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            t = b.begin()
            t.lock(("db", "b", i), X)
            t.commit()
            lat.append(time.perf_counter() - t0)
            i += 1
    th = threading.Thread(target=worker)
    th.start()
    time.sleep(0.5)
    n0 = len(lat)
    # the listing runs in another process: its decoding (and garbage collection of a
    # million rows) must not stall B's thread through this process's GIL
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        nrows, took = pool.apply(_list_locks, (cl.endpoints[0], paged))
    time.sleep(0.2)
    stop.set()
    th.join()
    during = sorted(lat[n0:])
    b.close()
    holder.close()
    return nrows, took, during


def snapshot(quick):
    out = {}
    for paged in (True, False):
        q = None if paged else "answer_rows=2000000"
        with LocalCluster(1, quotas=q) as cl:
            out[paged] = _listing(cl, paged, quick)
    for paged in (True, False):
        n, took, during = out[paged]
        p99 = during[int(len(during) * 0.99) - 1] if during else float("nan")
        print(f"snapshot {'SNAPSHOT_PAGE (paged)' if paged else 'SNAPSHOT (one answer)':22s} {n:,} rows in "
              f"{took:.2f} s; other client's lock+commit meanwhile: {len(during)} done, worst "
              f"{max(during) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms (turn budget {TURN_BUDGET * 1000:.0f} ms)")
    worst_paged, worst_one = max(out[True][2]), max(out[False][2])
    print(f"snapshot worst lock+commit, one answer / paged: {worst_one / worst_paged:.1f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=("rtt", "many", "snapshot"), default=None)
    a = ap.parse_args()
    if a.only in (None, "rtt", "many"):
        rtt_and_many(a.quick, a.only)
    if a.only in (None, "snapshot"):
        snapshot(a.quick)


if __name__ == "__main__":
    main()
