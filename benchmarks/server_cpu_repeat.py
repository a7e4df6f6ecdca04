"""Does a server's CPU reading hold from run to run? Consecutive runs of
`lockmgr bench`'s runner (the uniform workload, 8 client processes) against
one server, each printing its throughput and server CPU per transaction.

    python benchmarks/server_cpu_repeat.py [--system postgres] [--runs 6] [--seconds 2]

A reading that is short in one run and long in the next means the reading
misses time that lands later (benchmarks/RESULTS.md, round 7: PostgreSQL's
reaped backends).
"""

import argparse
import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lockmgr.bench.runner import Spec, run  # noqa: E402
from lockmgr.bench.servers import PostgresServer, RedisServer  # noqa: E402
from lockmgr.bench.systems import LockmgrService, PostgresAdvisory, RedisLocks  # noqa: E402
from lockmgr.service.cluster import LocalCluster  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--system", default="postgres", choices=("postgres", "redis", "lockmgr"))
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args(argv)
    if not 1 <= args.runs <= 100:
        ap.error(f"--runs must be in 1..100; got {args.runs}")
    if not 0.2 <= args.seconds <= 600:
        ap.error(f"--seconds must be in 0.2..600; got {args.seconds}")
    with contextlib.ExitStack() as st:
        if args.system == "postgres":
            srv = st.enter_context(PostgresServer(max_connections=max(100, 2 * args.clients + 10)))
            system = PostgresAdvisory(srv.port, pids=srv.pids(), label="", timeout=1.0)
        elif args.system == "redis":
            srv = st.enter_context(RedisServer())
            system = RedisLocks(srv.port, pids=srv.pids(), label="", timeout=1.0)
        else:
            c = st.enter_context(LocalCluster(1))
            system = LockmgrService(c.endpoints, partition_depth=c.partition_depth, pids=c.pids, timeout=1.0)
        for i in range(args.runs):
            r = run(system, Spec(workload="uniform", clients=args.clients, model="processes", duration=args.seconds))
            print(f"run {i + 1}: {r['ops_per_s']:,.0f} txn/s, server CPU {r['server_cpu_us_per_op']:.1f} µs per txn",
                  flush=True)


if __name__ == "__main__":
    main()
