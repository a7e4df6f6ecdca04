"""Full garbage collections in one process whose clients (threads or asyncio
tasks) share one lockmgr Client, and what they cost the clients: `lockmgr
bench`'s runner (the uniform workload, a 1-shard LocalCluster) with a gc
callback that times every collection of the oldest generation.

    python benchmarks/gc_pauses.py [--model asyncio] [--clients 64] [--seconds 3]

A client that keeps objects alive (or makes reference cycles) per call makes
the collector walk them: every client of the process waits meanwhile
(benchmarks/RESULTS.md, round 7).
"""

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lockmgr.bench.runner import Spec, run  # noqa: E402
from lockmgr.bench.systems import LockmgrService  # noqa: E402
from lockmgr.service.cluster import LocalCluster  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="asyncio", choices=("asyncio", "threads"))
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    if not 1 <= args.clients <= 1024:
        ap.error(f"--clients must be in 1..1024; got {args.clients}")
    if not 0.2 <= args.seconds <= 600:
        ap.error(f"--seconds must be in 0.2..600; got {args.seconds}")
    full = []
    start = {}

    def cb(phase, info):
        if info["generation"] != 2:
            return
        if phase == "start":
            start["t"] = time.perf_counter()
        else:
            full.append((time.perf_counter() - start["t"], len(gc.get_objects())))
    with LocalCluster(1) as c:
        system = LockmgrService(c.endpoints, partition_depth=c.partition_depth, pids=c.pids, timeout=1.0)
        gc.collect()
        gc.callbacks.append(cb)
        try:
            r = run(system, Spec(workload="uniform", clients=args.clients, model=args.model,
                                 duration=args.seconds))
        finally:
            gc.callbacks.remove(cb)
    lat = r["latency_ms"]
    print(f"{args.clients} {args.model} clients, {args.seconds:g} s: {r['ops']:,} transactions; "
          f"latency p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} max {lat['max']:.1f} ms")
    print(f"full collections: {len(full)}" + (": " + ", ".join(f"{t * 1e3:.1f} ms ({n:,} objects)"
                                                            for t, n in full) if full else ""))


if __name__ == "__main__":
    main()
