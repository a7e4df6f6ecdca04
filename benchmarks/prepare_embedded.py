"""Durable prepare in the embedded LockManager (data_dir=).

    python benchmarks/prepare_embedded.py [--seconds 3] [--dir /tmp/x]

Prints prepares/s with 1 and 32 preparing threads and the fsyncs/s behind
them (group commit), and the restart time with 100,000 prepared locks.
"""

import argparse
import shutil
import tempfile
import threading
import time

from lockmgr import LockManager, Mode


def prepares(data_dir, threads, seconds):
    m = LockManager(data_dir=data_dir)
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def work(k):
        i = 0
        while time.monotonic() < stop:
            t = m.begin(gtrid=f"{k}-{i}")
            t.lock(("acct", k, i), Mode.X)
            t.prepare()
            t.commit()
            i += 1
        counts[k] = i

    f0 = m._log.fsyncs
    t0 = time.perf_counter()
    ths = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    el = time.perf_counter() - t0
    fs = m._log.fsyncs - f0
    m.close()
    return sum(counts) / el, fs / el


def restart(data_dir, nlocks, per_txn=100):
    m = LockManager(data_dir=data_dir)
    for k in range(nlocks // per_txn):
        t = m.begin(gtrid=f"r{k}")
        for i in range(per_txn):
            t.lock(("db", "t", k * per_txn + i), Mode.X)
        t.prepare()
    m.close()
    t0 = time.perf_counter()
    m2 = LockManager(data_dir=data_dir)
    el = time.perf_counter() - t0
    n = m2.stats()["requests"]
    m2.close()
    return el, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    base = a.dir or tempfile.mkdtemp(prefix="lockmgr-bench-")
    try:
        r1, f1 = prepares(base + "/p1", 1, a.seconds)
        r32, f32 = prepares(base + "/p32", 32, a.seconds)
        print(f"prepare+commit, 1 thread:   {r1:9,.0f} txn/s  ({f1:7,.0f} fsyncs/s, "
              f"{2 * r1 / max(f1, 1):.1f} records/fsync)")
        print(f"prepare+commit, 32 threads: {r32:9,.0f} txn/s  ({f32:7,.0f} fsyncs/s, "
              f"{2 * r32 / max(f32, 1):.1f} records/fsync)   ratio {r32 / r1:.1f}x")
        el, n = restart(base + "/r", 100_000)
        print(f"restart with 100,000 prepared locks in the log: {el * 1e3:.0f} ms ({n:,} requests restored)")
    finally:
        if a.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
