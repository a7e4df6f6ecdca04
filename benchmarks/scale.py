"""Memory per held lock and per-operation cost versus table size.

Each measurement runs in a fresh subprocess so RSS is not polluted.

    python benchmarks/scale.py memory [--n 1000000] [--backend c]
    python benchmarks/scale.py scale  [--big 10000000] [--small 1000]
    python benchmarks/scale.py deadlock [--rounds 200]
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_memory(n, backend):
    from lockmgr import LockManager, Mode
    m = LockManager(_backend=backend, escalation_threshold=10**9)
    t = m.begin()
    t.lock(-1, Mode.X)  # warm up allocators
    before = rss_bytes()
    lock = t.lock
    for i in range(n):
        lock(i, Mode.X)
    after = rss_bytes()
    t0 = time.perf_counter()
    t.commit()
    release = time.perf_counter() - t0
    return {"n": n, "bytes_per_lock": (after - before) / n, "release_all_s": release}


def child_scale(held, ops, backend):
    """ns per (lock+unlock of a new key) while `held` other locks are held."""
    from lockmgr import LockManager, Mode
    m = LockManager(_backend=backend, escalation_threshold=10**9)
    holder = m.begin()
    lock = holder.lock
    for i in range(held):
        lock(i, Mode.X)
    t = m.begin()
    lock, unlock = t.lock, t.unlock
    base = 1 << 40
    best = None
    for _ in range(5):
        t0 = time.perf_counter()
        for i in range(ops):
            k = base + i
            lock(k, Mode.X)
            unlock(k)
        d = (time.perf_counter() - t0) / ops * 1e9
        best = d if best is None else min(best, d)
        base += ops
    return {"held": held, "ns_per_pair": best}


def run_child(kind, *args):
    code = f"import json,sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import scale; " \
           f"print(json.dumps(scale.child_{kind}(*{args!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def deadlock_latency(rounds, backend):
    """Time from the wait that closes a 2-transaction cycle to the victim's exception.

    The older transaction A waits for B; B (younger) closes the cycle and is
    the victim in its own thread; we also measure the case where the victim is
    the other (already waiting) thread, woken by the detector.
    """
    from lockmgr import DeadlockDetected, LockManager
    m = LockManager(_backend=backend)
    own, other = [], []
    for i in range(rounds):
        a, b = m.begin(), m.begin()
        a.lock(("a", i))
        b.lock(("b", i))
        started = threading.Event()
        res = {}

        def wait_a():
            started.set()
            try:
                a.lock(("b", i))
            except DeadlockDetected:
                res["t"] = time.perf_counter()

        th = threading.Thread(target=wait_a)
        th.start()
        started.wait()
        while a.id not in m.wait_for_graph():
            time.sleep(0.0002)
        t0 = time.perf_counter()
        try:
            b.lock(("a", i))
        except DeadlockDetected:
            own.append(time.perf_counter() - t0)
        th.join()
        a.commit()
        # the victim is the waiting thread: B older waits, A younger closes
        c, d = m.begin(), m.begin()
        c.lock(("c", i))
        d.lock(("d", i))

        # D is younger: D waits first, C closes the cycle, D is the victim in its own thread
        res.clear()

        def wait_d():
            try:
                d.lock(("c", i))
            except DeadlockDetected:
                res["t"] = time.perf_counter()

        th = threading.Thread(target=wait_d)
        th.start()
        while d.id not in m.wait_for_graph():
            time.sleep(0.0002)
        t0 = time.perf_counter()
        c.lock(("d", i))
        th.join()
        other.append(res["t"] - t0)
        c.commit()
    def q(xs, p):
        return sorted(xs)[int(p * (len(xs) - 1))] * 1e6
    return {"victim_closes_p50_us": q(own, 0.5), "victim_closes_p99_us": q(own, 0.99),
            "victim_waiting_p50_us": q(other, 0.5), "victim_waiting_p99_us": q(other, 0.99),
            "rounds": rounds}


def main():
    from lockmgr._core import available_backends
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["memory", "scale", "deadlock", "all"])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--big", type=int, default=10_000_000)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--ops", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--backend", default=None)
    a = ap.parse_args()
    backends = [a.backend] if a.backend else available_backends()
    if a.what in ("memory", "all"):
        for b in backends:
            n = a.n if b == "c" else min(a.n, 200_000)
            r = run_child("memory", n, b)
            print(f"memory   backend={b:<6} held={r['n']:>10,}  bytes/lock={r['bytes_per_lock']:7.1f}  "
                  f"release_all={r['release_all_s'] * 1e3:8.1f} ms")
    if a.what in ("scale", "all"):
        b = backends[0]
        small = run_child("scale", a.small, a.ops, b)
        big = run_child("scale", a.big, a.ops, b)
        print(f"scale    backend={b:<6} held={a.small:>10,}: {small['ns_per_pair']:7.0f} ns/pair   "
              f"held={a.big:>10,}: {big['ns_per_pair']:7.0f} ns/pair   "
              f"ratio={big['ns_per_pair'] / small['ns_per_pair']:.2f}")
    if a.what in ("deadlock", "all"):
        for b in backends:
            r = deadlock_latency(a.rounds, b)
            print(f"deadlock backend={b:<6} victim closes the cycle: p50 {r['victim_closes_p50_us']:.0f} us "
                  f"p99 {r['victim_closes_p99_us']:.0f} us; victim already waiting (woken): "
                  f"p50 {r['victim_waiting_p50_us']:.0f} us p99 {r['victim_waiting_p99_us']:.0f} us")


if __name__ == "__main__":
    main()
