"""Client lock caching (issue 15): each of N clients repeatedly locks rows of
its own hot table, with caching off and on, interleaved in one run.

    python benchmarks/bench_cache.py [--clients 8] [--seconds 3] [--rounds 2]
                                     [--rows 100] [--rows-per-txn 4] [--shards 1]

Each client is a process (a sync Client); a transaction is begin + lock of
``--rows-per-txn`` random rows (X) of the client's own table + commit. Per
mode it reports transactions/s, requests the clients sent per transaction
(the engines' sequence counters: every LOCK, RELEASE, HELLO, CACHE_GIVEUP,
heartbeat) and the shards' CPU per transaction (/proc, lockmgr.bench.servers).
Rounds alternate off, on, off, on ... so both see the same machine load.
"""

import argparse
import multiprocessing as mp
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lockmgr import LocalCluster, Mode  # noqa: E402
from lockmgr.bench.servers import cpu_seconds  # noqa: E402


def _client(endpoints, depth, cache, cid, rows, per_txn, seconds, go, out):
    from lockmgr import connect
    c = connect(endpoints, partition_depth=depth, cache_locks=cache)
    rng = random.Random(cid)
    table = f"hot{cid}"

    def txn():
        t = c.begin()
        for k in rng.sample(range(rows), per_txn):
            t.lock(("db", table, k), Mode.X)
        t.commit()

    end = time.monotonic() + 0.3            # warm-up (not counted)
    while time.monotonic() < end:
        txn()
    go.wait()
    eng = c._eng
    sent0 = sum(eng._seq)
    n = 0
    t0 = time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        txn()
        n += 1
    wall = time.monotonic() - t0
    out.put((n, sum(eng._seq) - sent0, wall))
    c.close()


def run(cl, cache, args):
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    out = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(cl.endpoints, cl.partition_depth, cache, cid, args.rows,
                                                args.rows_per_txn, args.seconds, go, out))
             for cid in range(args.clients)]
    for p in procs:
        p.start()
    time.sleep(1.5 + 0.1 * args.clients)    # spawn, import, connect, warm up
    cpu0 = cpu_seconds(cl.pids)
    go.set()
    res = [out.get(timeout=60 + args.seconds) for _ in procs]
    cpu = cpu_seconds(cl.pids) - cpu0
    for p in procs:
        p.join(30)
    txns = sum(r[0] for r in res)
    msgs = sum(r[1] for r in res)
    wall = max(r[2] for r in res)
    return txns / wall, msgs / max(txns, 1), cpu / max(txns, 1) * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows", type=int, default=100, help="rows in each client's hot table")
    ap.add_argument("--rows-per-txn", type=int, default=4)
    ap.add_argument("--shards", type=int, default=1)
    args = ap.parse_args()
    figures = {False: [], True: []}
    with LocalCluster(args.shards, partition_depth=2) as cl:
        for r in range(args.rounds):
            for cache in (False, True):
                tps, mpt, cpt = run(cl, cache, args)
                figures[cache].append((tps, mpt, cpt))
                print(f"round {r + 1} caching {'on ' if cache else 'off'}: {tps:9,.0f} txn/s  "
                      f"{mpt:6.3f} requests/txn  shard CPU {cpt:7.1f} us/txn", flush=True)
    avg = {k: [sum(x[i] for x in v) / len(v) for i in range(3)] for k, v in figures.items()}
    off, on = avg[False], avg[True]
    print(f"mean off: {off[0]:,.0f} txn/s, {off[1]:.3f} requests/txn, {off[2]:.1f} us shard CPU/txn")
    print(f"mean on:  {on[0]:,.0f} txn/s, {on[1]:.3f} requests/txn, {on[2]:.1f} us shard CPU/txn")
    ratio = off[1] / on[1] if on[1] > 0 else float("inf")
    fewer = f"{ratio:.1f}x fewer" if ratio < 1000 else "over 1000x fewer (warm cache: heartbeats only)"
    print(f"caching on/off: throughput {on[0] / off[0]:.1f}x; requests per txn: {fewer}; "
          f"shard CPU per txn {off[2] / max(on[2], 1e-9):.1f}x less")


if __name__ == "__main__":
    main()
