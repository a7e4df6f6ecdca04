"""Cross-shard deadlock detection benchmarks (docs/probes.md).

    PYTHONPATH=. python benchmarks/bench_probes.py latency [--reps 20]
    PYTHONPATH=. python benchmarks/bench_probes.py throughput [--seconds 3 --rounds 6]

latency: a ring of k transactions over s shards (T_i holds a row on shard
i mod s and then waits for T_{i+1}'s row), in two shapes: the closing wait
right after the k-1 others parked (all waits within a few ms), and the closing
wait once the others have registered (each older than probe_delay: waits piling
up over time, the common shape); the last wait closes the cycle and
its transaction is the youngest, so it is the victim: we time that lock call
from the moment it is issued to its DeadlockDetected. All k transactions share
one Client (one connection per shard); the survivors commit only after the
victim's exception is caught, so their commits do not compete with the
victim's thread for the GIL inside the measured interval. Messages per deadlock:
shard-to-shard messages sent (all shards) / deadlocks.
throughput: a deadlock-free contended workload (each transaction X-locks two
of a few hot rows on different shards, in one global order) with detection
on (probe_delay 10 ms) and off, alternated; transactions per second.
"""

import argparse
import os
import statistics
import sys
import threading
import time

from lockmgr import DeadlockDetected, LocalCluster, Mode
from lockmgr.paths import encode
from lockmgr.service.routing import route


def rows_by_shard(n, per=1, tag="r"):
    out = {s: [] for s in range(n)}
    i = 0
    while any(len(v) < per for v in out.values()):
        p = ("db", f"{tag}{i}")
        (s,) = route(encode(p), len(p), int(Mode.X), n, 2)   # the service's own routing
        if len(out[s]) < per:
            out[s].append(p + (1,))
        i += 1
    return out


def msgs(client):
    return sum(s.get("probe_msgs_sent", 0) for s in client.stats())


def registered(client):
    return sum(s.get("probe_directory_now", 0) for s in client.stats())


def bench_latency(reps, settled):
    """``settled``: the closing wait comes once the k-1 other waits are registered
    (older than probe_delay: the usual shape of a deadlock, waits piling up over
    time); otherwise right after they are parked (all k waits within a few ms)."""
    print("the closing wait comes " + ("after the other k-1 waits have registered (each older than probe_delay)"
                                       if settled else "as soon as the other k-1 waits are parked"))
    print(f"{'txns':>4} {'shards':>6} {'p50 ms':>8} {'p90 ms':>8} {'min ms':>8} "
          f"{'p50 - delay':>11} {'msgs/deadlock':>13}")
    for nshards in (2, 3):
        with LocalCluster(nshards, probe_delay=0.010) as c:
            client = c.connect()
            for k in (2, 3, 8):
                lat = []
                m0 = msgs(client)
                per = (k + nshards - 1) // nshards
                for rep in range(reps):
                    rb = rows_by_shard(nshards, per, tag=f"L{k}_{rep}_")
                    rows = [rb[i % nshards][i // nshards] for i in range(k)]
                    ts = [client.begin() for _ in range(k)]
                    for t, r in zip(ts, rows):
                        t.lock(r)
                    ths = []
                    caught = threading.Event()

                    def survivor(i):
                        ts[i].lock(rows[i + 1])
                        # commit only once the victim's exception is in: the survivors'
                        # commits (a cascade of grants) must not compete for this process's
                        # GIL with the victim's thread inside the measured interval
                        caught.wait(10)
                        ts[i].commit()
                    for i in range(k - 1):
                        th = threading.Thread(target=survivor, args=(i,))
                        th.start()
                        ths.append(th)
                    # wait until the k-1 waits are parked
                    while len(client.wait_for_graph()) < k - 1:
                        time.sleep(0.001)
                    if settled:
                        r0 = time.monotonic()
                        while registered(client) < k - 1 and time.monotonic() < r0 + 5:
                            time.sleep(0.001)
                    t0 = time.perf_counter()
                    try:
                        ts[-1].lock(rows[0])
                        raise AssertionError("no deadlock")
                    except DeadlockDetected:
                        lat.append((time.perf_counter() - t0) * 1000)
                    caught.set()
                    for th in ths:
                        th.join()
                mpd = (msgs(client) - m0) / reps
                lat.sort()
                p50 = statistics.median(lat)
                p90 = lat[int(len(lat) * 0.9) - 1]
                print(f"{k:>4} {nshards:>6} {p50:>8.2f} {p90:>8.2f} {lat[0]:>8.2f} {p50 - 10:>11.2f} {mpd:>13.1f}",
                      flush=True)
            client.close()


def run_tp(c, seconds, threads=8):
    client = c.connect()
    rb = rows_by_shard(c.nshards, 2, tag="H")
    hot = sorted([r for v in rb.values() for r in v])
    done = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(k):
        import random
        rnd = random.Random(k)
        n = 0
        while time.monotonic() < stop:
            a, b = sorted(rnd.sample(hot, 2))
            with client.transaction() as t:
                t.lock(a)
                t.lock(b)
                time.sleep(0.0005)
            n += 1
        with lock:
            done[0] += n

    ths = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    cpu0 = shard_cpu(c)
    t0 = time.perf_counter()
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    el = time.perf_counter() - t0
    cpu = shard_cpu(c) - cpu0
    st = client.stats()
    client.close()
    return (done[0] / el, sum(s.get("probes_sent", 0) for s in st), sum(s.get("waits", 0) for s in st),
            cpu / max(1, done[0]) * 1e6)


def shard_cpu(c):
    """CPU seconds (user + system) used so far by the cluster's shard processes."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in c.pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])      # utime, stime
    return total / tick


def bench_throughput(seconds, rounds):
    """Rounds of (on, off) or (off, on), alternating which goes first; the figure is
    the median over rounds of on/off within a round (the two runs of a round are
    back to back, so slow drifts of the shared machine's load cancel)."""
    res = {"on": [], "off": []}
    cpu = {"on": [], "off": []}
    ratios = []
    for r in range(rounds):
        got = {}
        for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
            with LocalCluster(3, probe_delay=0.010 if mode == "on" else None) as c:
                tps, probes, waits, us = run_tp(c, seconds)
            res[mode].append(tps)
            cpu[mode].append(us)
            got[mode] = tps
            print(f"round {r} detection {mode:>3}: {tps:9.0f} txn/s  (waits {waits}, probes started {probes}; "
                  f"shard CPU {us:.0f} us/txn)", flush=True)
        ratios.append(got["on"] / got["off"])
    on, off = statistics.mean(res["on"]), statistics.mean(res["off"])
    print(f"mean: on {on:.0f} txn/s, off {off:.0f} txn/s, on/off = {on / off:.3f}")
    ratios.sort()
    print(f"on/off per round: {' '.join(f'{x:.3f}' for x in ratios)}; median {statistics.median(ratios):.3f}")
    con, coff = statistics.median(cpu["on"]), statistics.median(cpu["off"])
    print(f"shard CPU per txn (median): on {con:.0f} us, off {coff:.0f} us, on/off = {con / coff:.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["latency", "throughput"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args(argv)
    if a.what == "latency":
        bench_latency(a.reps, settled=False)
        bench_latency(a.reps, settled=True)
    else:
        bench_throughput(a.seconds, a.rounds)


if __name__ == "__main__":
    sys.exit(main())
